"""Settings of the experiments and their defaults per data set.

Nothing here imports torch, so that ``lunet --help`` can show the defaults at once.
"""

from __future__ import annotations

import math
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

from lunet.limits import check_positive_int

if TYPE_CHECKING:
    import torch

# The logit transform's λ: pixels y in [0, 1) are mapped to logit(λ + (1 - 2λ) y).
DEFAULT_LAM = 1e-6
# The most numbers (rows × width) one call of `lunet sample` draws from a run on own data: 0.8 GB
# as float64, and as much again for the latents (a cap on rows alone would allow 24 GB at width 300)
MAX_SAMPLE_VALUES = 100_000_000


# Settings given as switches: a Python caller passes ``name=True``
SWITCHES = ("resume", "overwrite", "drop_constant")


def python_name(setting: str) -> str:
    """How a Python caller gives ``setting``: a keyword argument or a field of :class:`TrainConfig`."""
    return f"{setting}=True" if setting in SWITCHES else setting


class NamesSettings(Exception):
    """An error whose message names settings (``lr``, ``resume``) in the words of whoever gave them.

    ``template`` holds a ``{setting}`` field for each setting it names and a field for each of
    ``values`` (put in as they are). ``str()`` names the settings as a Python caller gives them
    (:func:`python_name`); the command line names them as its flags with :meth:`render`.
    """

    def __init__(self, template: str, **values: object) -> None:
        self.template = template
        self.values = values
        self.settings = tuple(dict.fromkeys(
            field for _, field, _, _ in string.Formatter().parse(template) if field and field not in values))
        super().__init__(self.render(python_name))

    def render(self, name: Callable[[str], str]) -> str:
        """The message with each setting named by ``name(setting)``."""
        return self.template.format(**self.values, **{s: name(s) for s in self.settings})

    def __reduce__(self) -> tuple:
        # rebuilt from its parts, so that another process (torch.distributed) renders it as this one would
        return _rebuild, (type(self), self.template, self.values)


def _rebuild(cls: type, template: str, values: dict) -> "NamesSettings":
    return cls(template, **values)


class SettingError(NamesSettings, ValueError):
    """A setting that cannot be used as given; the message says which and what to give instead."""


class RunExists(NamesSettings, FileExistsError):
    """A new run would replace one already in its folder."""


class NothingToResume(NamesSettings, FileNotFoundError):
    """A resume asked for where no checkpoint is."""


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
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ValueError(
                f"grad_clip must be positive and finite (or left out for no clipping), got {self.grad_clip}"
            )

    @property
    def torch_dtype(self) -> "torch.dtype":
        import torch

        return getattr(torch, self.dtype)


def paper_lunet_spec(num_blocks: int = 4, **kwargs: Any) -> dict[str, Any]:
    """Model spec of the paper's MNIST LU-Net (4 blocks of width 784) or a variant."""
    spec = {"name": "lunet", "features": 784, "num_blocks": num_blocks, "alpha": 0.1, "diag": "exp", "init_scale": 0.1}
    spec.update(kwargs)
    return spec


def conditional_image_spec(num_blocks: int = 4, **kwargs: Any) -> dict[str, Any]:
    """Model spec of one :class:`~lunet.ConditionalLUNet` of ``p(x | class)`` for MNIST-sized images
    (``lunet train --dataset mnist --conditional``): the paper's LU layers and leaky softplus
    (:func:`paper_lunet_spec`), the ten classes embedded in ten dimensions, a context network of
    two hidden layers of 64."""
    base = paper_lunet_spec(num_blocks, **kwargs)
    spec: dict[str, Any] = {"name": "conditional_lunet", "context_features": 10, "hidden": 64, "num_classes": 10}
    spec.update({k: v for k, v in base.items() if k != "name"})
    return spec


def vector_lunet_spec(features: int, num_blocks: int = 4, activation: str = "spline", **kwargs: Any) -> dict[str, Any]:
    """Model spec of an LU-Net for own feature vectors of width ``features`` (``lunet train --data``):
    4 blocks with a monotone spline per feature, whose identity tails keep samples near the data
    (docs/own-data.md); ``activation="leaky_softplus"`` gives learned leaky-softplus slopes instead."""
    spec: dict[str, Any] = {"name": "lunet", "features": features, "num_blocks": num_blocks, "diag": "exp",
                            "init_scale": 1.0}
    if activation == "spline":
        spec["activation"] = "spline"
    else:
        spec.update(alpha=0.1, learn_alpha=True)
    spec.update(kwargs)
    return spec


def conditional_vector_spec(features: int, context_features: int, num_classes: Optional[int] = None,
                            num_blocks: int = 4, **kwargs: Any) -> dict[str, Any]:
    """Model spec of a :class:`~lunet.ConditionalLUNet` of ``p(x | c)`` for own vectors of width
    ``features`` (``lunet train --data X --context C``): the depth, diagonal and start scale of
    :func:`vector_lunet_spec`, the leaky softplus (fixed slope) after every block but the last, and
    a context network of two hidden layers of 64. ``context_features``: the context's width, or for
    ``num_classes`` labels the width of their learned embedding."""
    base = vector_lunet_spec(features, num_blocks, activation="leaky_softplus")
    spec: dict[str, Any] = {"name": "conditional_lunet", "features": features, "context_features": context_features,
                            "num_blocks": num_blocks, "hidden": 64, "num_classes": num_classes,
                            "alpha": base["alpha"], "diag": base["diag"], "init_scale": base["init_scale"]}
    spec.update(kwargs)
    return spec


# Own data with a condition: how the context file is read (lunet.experiments.contexts): "auto" takes
# one column of whole numbers from 0 to below MAX_AUTO_CLASSES for class labels, anything else for vectors
CONTEXT_KINDS = ("auto", "labels", "vectors")
MAX_AUTO_CLASSES = 256
# the width of the learned embedding of class labels: the number of classes, at most this
MAX_LABEL_EMBEDDING = 16
# Own data: how columns of whole numbers are treated (lunet.experiments.columns)
DEQUANTIZE_CHOICES = ("auto", "none")
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


@dataclass
class GMM2DSettings:
    """Model and data settings of the 2-D experiment (defaults chosen by measurement, docs/gmm2d.md)."""

    num_blocks: int = 16
    alpha: float = 0.1
    learn_alpha: bool = True
    diag: str = "exp"
    init_scale: float = 1.0
    data_seed: int = 0
    # initialisations trained side by side; the best by validation NLL is the run's model
    starts: int = 16

    def __post_init__(self) -> None:
        check_positive_int(self.starts, "starts")


@dataclass(frozen=True)
class Recipe:
    """A named set of settings for an image run: the LU-Net spec entries (``model``), the
    :class:`TrainConfig` fields (``train``) and the run settings (``run``: ``data_init``) it
    changes from the defaults. Options given with it win."""

    name: str
    summary: str
    model: dict
    train: dict
    run: dict


# ``lunet train --recipe NAME`` (docs/results.md measures both)
RECIPES = {
    "paper": Recipe("paper", "the paper's LU-Net (4 blocks of 784, leaky softplus) and lunet's 60-epoch schedule",
                    {}, {}, {}),
    "best": Recipe("best", "the paper's widths and depth with a monotone spline per feature as activation, "
                           "a standardised start, 40 epochs",
                   {"activation": "spline"}, {"epochs": 40}, {"data_init": "standardize"}),
}


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
