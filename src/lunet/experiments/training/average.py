"""An exponential moving average of a model's weights (Polyak averaging), as ``--ema DECAY`` keeps it.

After update ``t`` (counted from 1) each averaged parameter is
``a <- a + w_t (p - a)`` with ``w_t = 1 - min(decay, t / (t + 9))``: the early averages follow the
weights closely instead of holding on to the untrained start. Validation, the best weights and
``lunet evaluate`` read the average; the optimiser trains the weights themselves.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["WeightAverage"]


class WeightAverage:
    """The running average of ``model``'s parameters with ``decay`` per optimisation step, ``0 < decay < 1``."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weights' average needs a decay strictly between 0 and 1, got {decay!r}")
        self.model = model
        self.decay = decay
        self.updates = 0
        self._named = [(name, p) for name, p in model.named_parameters() if p.is_floating_point()]
        self.averages = [p.detach().clone() for _, p in self._named]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the model's weights after an optimisation step."""
        self.updates += 1
        weight = 1.0 - min(self.decay, self.updates / (self.updates + 9.0))
        for average, (_, p) in zip(self.averages, self._named):
            average.lerp_(p.detach(), weight)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the model holds the averaged weights; after it, its own again (bit for bit).
        The parameters keep their storage, so a captured CUDA graph still sees them."""
        with torch.no_grad():
            kept = [p.detach().clone() for _, p in self._named]
            for average, (_, p) in zip(self.averages, self._named):
                p.copy_(average)
        try:
            yield
        finally:
            with torch.no_grad():
                for own, (_, p) in zip(kept, self._named):
                    p.copy_(own)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's state dict with the averaged parameters, on the CPU: a checkpoint's set of weights."""
        with self.applied():
            return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def check(self, state: dict[str, torch.Tensor]) -> None:
        """``ValueError`` naming the parameter unless ``state`` holds each averaged parameter in its shape."""
        for name, p in self._named:
            stored = state.get(name)
            if not isinstance(stored, torch.Tensor) or stored.shape != p.shape:
                found = "missing" if not isinstance(stored, torch.Tensor) else f"of shape {tuple(stored.shape)}"
                raise ValueError(f"the weights' average is {found} for {name}, of shape {tuple(p.shape)}")

    def load_state_dict(self, state: dict[str, torch.Tensor], updates: int) -> None:
        """Continue from ``state`` (as :meth:`state_dict` gave it; see :meth:`check`) after ``updates`` updates."""
        self.check(state)
        with torch.no_grad():
            for average, (name, _) in zip(self.averages, self._named):
                average.copy_(state[name])
        self.updates = updates
