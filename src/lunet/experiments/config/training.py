"""Optimisation settings: :class:`TrainConfig` and the defaults of each kind of run.

Nothing here imports torch, so that ``lunet --help`` can show the defaults at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from lunet.limits import check_positive_int

if TYPE_CHECKING:
    import torch

__all__ = ["TrainConfig", "BUDGET_EPOCHS", "VECTOR_STEPS", "VECTOR_EVAL_STEPS", "VECTOR_PATIENCE", "budget_changes",
           "vector_train_config", "default_train_config"]


@dataclass
class TrainConfig:
    """Optimisation settings; every field is a CLI option of ``lunet train``."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"  # "cosine" (to zero over the run, after warm-up) or "constant"
    warmup_steps: int = 0
    grad_clip: Optional[float] = None
    # validate, keep and evaluate an exponential moving average of the weights with this decay per
    # step (lunet.experiments.training.average); None: the weights themselves
    ema: Optional[float] = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    eval_every: int = 1  # epochs between validation, log line and checkpoint (the last epoch always)
    # stop once this many validations in a row have not improved on the best (None: train every epoch)
    patience: Optional[int] = None
    # seconds of training steps (validation and checkpoints not counted): the run stops there, or after
    # ``epochs`` if that comes first, and a cosine schedule reaches zero there (None: count epochs only)
    time_budget: Optional[float] = None
    compile: bool = False  # the training loss through torch.compile (falls back to eager if that fails)
    cuda_graph: bool = True  # on a GPU, full batches replay as one CUDA graph (falls back to eager if capture fails)

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        for name in ("epochs", "batch_size", "eval_every"):
            check_positive_int(getattr(self, name), name)
        if self.patience is not None:
            check_positive_int(self.patience, "patience")
        if self.time_budget is not None and (
                isinstance(self.time_budget, bool) or not isinstance(self.time_budget, (int, float))
                or not (math.isfinite(self.time_budget) and self.time_budget > 0)):
            raise ValueError(f"time_budget must be positive, finite seconds, got {self.time_budget!r}")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2^63), got {self.seed!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be positive and finite, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be non-negative and finite, got {self.weight_decay}")
        if self.ema is not None and (isinstance(self.ema, bool) or not isinstance(self.ema, (int, float))
                                     or not 0.0 < self.ema < 1.0):
            raise ValueError(f"ema must be a decay strictly between 0 and 1 (or left out for none), got {self.ema!r}")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(
                f"grad_clip must be positive and finite (or left out for no clipping), got {self.grad_clip}"
            )

    @property
    def torch_dtype(self) -> "torch.dtype":
        import torch

        return getattr(torch, self.dtype)

# Own data: optimiser steps a run takes (about; whole epochs), steps between validations, and
# validations without improvement before it stops, whatever the number of rows
# the epochs of a run with a time budget and no --epochs: a cap no budget reaches
BUDGET_EPOCHS = 1_000_000
VECTOR_STEPS = 3000
VECTOR_EVAL_STEPS = 50
VECTOR_PATIENCE = 10


def budget_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """Settings ``changes`` to a run's defaults, with ``epochs`` lifted to :data:`BUDGET_EPOCHS` when
    they give a ``time_budget`` and no ``epochs``: the budget, not the defaults' epochs, ends such a run."""
    if changes.get("time_budget") is not None and "epochs" not in changes:
        return {**changes, "epochs": BUDGET_EPOCHS}
    return changes


def vector_train_config(num_rows: int, **changes: Any) -> TrainConfig:
    """The optimisation defaults of a run on ``num_rows`` training rows of own data, with ``changes``:
    Adam at 1e-3 on batches of 256 (or all rows), a cosine schedule over about
    :data:`VECTOR_STEPS` steps, validation every :data:`VECTOR_EVAL_STEPS` steps or every epoch,
    and a stop after :data:`VECTOR_PATIENCE` validations without improvement. A ``time_budget``
    among the changes ends the run instead (:func:`budget_changes`)."""
    changes = budget_changes(changes)
    batch_size = changes.get("batch_size", 256)
    steps_per_epoch = math.ceil(check_positive_int(num_rows, "num_rows") / batch_size)
    defaults = {
        "epochs": max(1, round(VECTOR_STEPS / steps_per_epoch)),
        "batch_size": batch_size,
        "lr": 1e-3,
        "schedule": "cosine",
        "eval_every": max(1, round(VECTOR_EVAL_STEPS / steps_per_epoch)),
        "patience": VECTOR_PATIENCE,
    }
    return TrainConfig(**{**defaults, **changes})


def default_train_config(dataset: str) -> TrainConfig:
    """The optimisation defaults of ``lunet train --dataset dataset``.

    The 2-D mixture: full-ish batches with a high, cosine-decayed learning rate (see
    docs/gmm2d.md). Images: Adam at 1e-3, cosine schedule over 60 epochs, batch 256,
    gradient norm clipped at 10 (docs/results.md: how these were chosen; a looser clip
    let a 60-epoch run blow up). Own data (``"vectors"``): :func:`vector_train_config`, whose
    epochs depend on the rows; shown here for 25,600 rows (docs/own-data.md)."""
    if dataset == "gmm2d":
        return TrainConfig(epochs=500, batch_size=1024, lr=3e-2, schedule="cosine", seed=0, eval_every=100)
    if dataset == "vectors":
        return vector_train_config(25_600)
    return TrainConfig(epochs=60, batch_size=256, lr=1e-3, schedule="cosine", warmup_steps=200, grad_clip=10.0)
