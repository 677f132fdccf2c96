"""Named settings: the model specs of each kind of run, the 2-D experiment's settings, the recipes
of ``lunet train --recipe`` and the constants the experiment side shares.

Nothing here imports torch, so that ``lunet --help`` can show the defaults at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from lunet.limits import check_positive_int

__all__ = ["GMM2D", "IMAGES", "VECTORS", "KINDS", "IMAGE_DATASETS", "DEFAULT_LAM", "MAX_SAMPLE_VALUES", "NUM_CLASSES",
           "paper_lunet_spec", "conditional_image_spec", "DEEP_VECTOR_ROWS", "vector_num_blocks",
           "vector_lunet_spec", "conditional_vector_spec", "CONTEXT_KINDS", "MAX_AUTO_CLASSES",
           "MAX_LABEL_EMBEDDING", "DEQUANTIZE_CHOICES", "GMM2DSettings", "Recipe", "RECIPES"]

# The kinds of run, as run.json records them: the 2-D mixture, an image data set, own vectors (--data)
GMM2D, IMAGES, VECTORS = "gmm2d", "images", "vectors"
KINDS = (GMM2D, IMAGES, VECTORS)

# The image data sets lunet reads (IDX files, lunet.experiments.data.mnist)
IMAGE_DATASETS = ("mnist", "fashion-mnist")

# The logit transform's λ: pixels y in [0, 1) are mapped to logit(λ + (1 - 2λ) y).
DEFAULT_LAM = 1e-6

# The most numbers (rows × width) one call of `lunet sample` draws from a run on own data: 0.8 GB
# as float64, and as much again for the latents (a cap on rows alone would allow 24 GB at width 300)
MAX_SAMPLE_VALUES = 100_000_000

# MNIST and Fashion-MNIST have ten classes; a per-class run trains one model each, in class-K/
NUM_CLASSES = 10


def paper_lunet_spec(num_blocks: int = 4, **kwargs: Any) -> dict[str, Any]:
    """Model spec of the paper's MNIST LU-Net (4 blocks of width 784) or a variant."""
    spec = {"name": "lunet", "features": 784, "num_blocks": num_blocks, "alpha": 0.1, "diag": "exp", "init_scale": 0.1}
    spec.update(kwargs)
    return spec


def conditional_image_spec(num_blocks: int = 4, **kwargs: Any) -> dict[str, Any]:
    """Model spec of one :class:`~lunet.ConditionalLUNet` of ``p(x | class)`` for MNIST-sized images
    (``lunet train --dataset mnist --conditional``): the paper's LU layers and leaky softplus
    (:func:`paper_lunet_spec`), the ten classes embedded in ten dimensions, a context network of
    two hidden layers of 64; ``activation="spline"``: splines whose knots the class sets instead."""
    base = paper_lunet_spec(num_blocks, **kwargs)
    spec: dict[str, Any] = {"name": "conditional_lunet", "context_features": 10, "hidden": 64, "num_classes": 10}
    spec.update({k: v for k, v in base.items() if k != "name"})
    return spec


# Own data of at least this many rows train 8 blocks rather than 4: more depth wins on every table of the
# benchmark above it and loses on every one below (docs/own-data.md)
DEEP_VECTOR_ROWS = 400


def vector_num_blocks(rows: int) -> int:
    """The default depth of an LU-Net for ``rows`` rows of own data (before the validation split):
    4 blocks, 8 from :data:`DEEP_VECTOR_ROWS` rows."""
    return 8 if rows >= DEEP_VECTOR_ROWS else 4


def vector_lunet_spec(features: int, num_blocks: Optional[int] = None, activation: str = "spline", rows: int = 0,
                      **kwargs: Any) -> dict[str, Any]:
    """Model spec of an LU-Net for own feature vectors of width ``features`` (``lunet train --data``):
    blocks with a monotone spline per feature, whose identity tails keep samples near the data
    (docs/own-data.md), as many as :func:`vector_num_blocks` gives for ``rows`` rows unless
    ``num_blocks`` says; ``activation="leaky_softplus"`` gives learned leaky-softplus slopes instead."""
    num_blocks = vector_num_blocks(rows) if num_blocks is None else num_blocks
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

# Own data with a condition: how the context file is read (lunet.experiments.data.contexts): "auto" takes
# one column of whole numbers from 0 to below MAX_AUTO_CLASSES for class labels, anything else for vectors
CONTEXT_KINDS = ("auto", "labels", "vectors")
MAX_AUTO_CLASSES = 256

# the width of the learned embedding of class labels: the number of classes, at most this
MAX_LABEL_EMBEDDING = 16

# Own data: how columns of whole numbers are treated (lunet.experiments.data.columns)
DEQUANTIZE_CHOICES = ("auto", "none")


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
