"""The learning rate of a training run: its schedule, its state in a checkpoint, its resumption,
and its form for steps captured as a CUDA graph.

The rate of step ``k`` is ``peak · factor(k)``: a linear warm-up over the first
``warmup_steps``, then constant or a cosine to zero at the run's last step, or,
for a run with a wall-clock budget, at the budget's last second of training.
Only the step count (and the training seconds, which the run keeps) is state: a
resumed run recomputes its rates from its own peak and length, so that a new
peak (after a divergence) or a longer run (``epochs``, ``time_budget``) rescales
the rest of the schedule.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from lunet.experiments.config.training import TrainConfig

__all__ = ["rate_factor", "rate_tensors", "rate_numbers", "LearningRateSchedule"]


def rate_factor(step: int, kind: str, warmup_steps: int, total_steps: int, progress: Optional[float] = None) -> float:
    """The share of the peak rate at ``step`` (0-based) of a run of ``total_steps``; ``progress``,
    when given, is the share of the run done in its own measure (training seconds over a budget),
    which the cosine follows after the warm-up instead of the steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    if progress is None:
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def rate_tensors(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Give each of ``optimizer``'s parameter groups its rate as a tensor on ``device``.

    A captured step reads the rate from that tensor, which the schedule updates
    in place; a Python float would be frozen into the graph. The CUDA kernel of
    fused Adam reads a float32 rate; elsewhere the rate stays float64, the
    precision of a Python float.
    """
    dtype = torch.float32 if device.type == "cuda" else torch.float64
    for group in optimizer.param_groups:
        if not isinstance(group["lr"], torch.Tensor):
            group["lr"] = torch.tensor(float(group["lr"]), dtype=dtype, device=device)


def rate_numbers(state: dict[str, Any]) -> dict[str, Any]:
    """An optimiser's ``state_dict()`` with its rates as plain numbers (in place; returned)."""
    for group in state["param_groups"]:
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
    return state


class LearningRateSchedule:
    """The rates of ``optimizer``'s parameter groups over a run of ``total_steps`` steps, or over
    ``config.time_budget`` seconds of training.

    Built at step 0, with the first step's rate set; :meth:`step` moves to the
    next, given the training seconds so far when the run has a budget. The rates are
    written into the optimiser as it holds them: a number, or in place into the tensor
    a captured step reads (:func:`rate_tensors`).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int) -> None:
        self.optimizer = optimizer
        self.peak = config.lr
        self.kind = config.schedule
        self.warmup_steps = config.warmup_steps
        self.total_steps = total_steps
        self.budget = config.time_budget
        self.steps = 0  # steps taken
        self.seconds = 0.0  # training seconds so far (read with a budget only)
        self._apply()

    @property
    def rate(self) -> float:
        """The rate of the next step."""
        progress = None if self.budget is None else self.seconds / self.budget
        return self.peak * rate_factor(self.steps, self.kind, self.warmup_steps, self.total_steps, progress)

    def step(self, seconds: Optional[float] = None) -> None:
        """After an optimisation step: set the next step's rate (``seconds``: the run's training
        seconds so far, which a budget's schedule follows)."""
        self.steps += 1
        if seconds is not None:
            self.seconds = seconds
        self._apply()

    def _apply(self) -> None:
        rate = self.rate
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.peak  # read by torch's schedulers, should anyone add one
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(rate)
            else:
                group["lr"] = rate

    def state_dict(self) -> dict[str, Any]:
        """The schedule's place: the steps taken. The peak and the length are the run's own
        (a resumed run may lower the peak after a divergence), so they are not stored."""
        return {"steps": self.steps}

    def load_state_dict(self, state: dict[str, Any], seconds: float = 0.0) -> None:
        """Continue at the step ``state`` reached and the training ``seconds`` already spent, on this
        schedule's own peak and length."""
        self.steps = int(state["steps"])
        self.seconds = seconds
        self._apply()
