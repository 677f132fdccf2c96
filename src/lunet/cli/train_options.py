"""The options of ``lunet train``: each one's kinds of run, argparse arguments, help and default
per kind (:class:`Option`), the settings of :class:`TrainConfig` among them. Imports no torch."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any, Callable, Optional, Sequence

from lunet.cli.options import (
    DATA_DIR_HELP,
    FRACTION,
    LAM,
    NO_VERIFY_HELP,
    NON_NEGATIVE_FLOAT,
    NON_NEGATIVE_INT,
    PATH,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    SLOPE,
    flag,
)
from lunet.experiments.config.presets import (
    CONTEXT_KINDS,
    DEEP_VECTOR_ROWS,
    DEFAULT_LAM,
    DEQUANTIZE_CHOICES,
    GMM2D,
    IMAGES,
    KINDS,
    RECIPES,
    VECTORS,
    GMM2DSettings,
    paper_lunet_spec,
    vector_lunet_spec,
    vector_num_blocks,
)
from lunet.experiments.config.training import VECTOR_EVAL_STEPS, VECTOR_STEPS, default_train_config
from lunet.limits import ALPHA_MIN

__all__ = ["default_text", "KIND_NAMES", "Option", "CONFIG_OPTIONS", "OPTIONS"]

# how messages and help texts name each kind
KIND_NAMES = {GMM2D: "--dataset gmm2d", IMAGES: "image data sets", VECTORS: "--data"}
_HELP_NAMES = {GMM2D: "gmm2d", IMAGES: "images", VECTORS: "--data"}
_ALL = frozenset(KINDS)


def _show(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def default_text(values: dict[str, object], kinds: Sequence[str]) -> str:
    """A help text's default for the ``kinds`` a parser serves, from each kind's ``values``."""
    shown: dict[str, list[str]] = {}
    for kind in kinds:
        if kind in values:
            shown.setdefault(_show(values[kind]), []).append(_HELP_NAMES[kind])
    if len(shown) == 1:
        return f"(default {next(iter(shown))})"
    return "(default " + ", ".join(f"{value} for {' and '.join(names)}" for value, names in shown.items()) + ")"


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of ``lunet train``: the kinds of run it applies to, its argparse arguments, and
    (for a help text with defaults) each kind's default, shown where ``help`` holds ``{default}``."""

    names: tuple[str, ...]
    kinds: frozenset
    group: str
    kwargs: dict[str, Any]
    defaults: Optional[Callable[[], dict[str, object]]] = None
    lunet_model: bool = False  # an option of the LU-Net model, which a RealNVP run does not have

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest", self.names[0][2:].replace("-", "_"))


# the defaults of own data that depend on its number of rows, as the help states them
_VECTOR_DEFAULTS = {"epochs": f"about {VECTOR_STEPS:,} steps' worth",
                    "eval_every": f"about every {VECTOR_EVAL_STEPS} steps"}


def _config_defaults(field: str) -> Callable[[], dict[str, object]]:
    return lambda: {kind: _VECTOR_DEFAULTS[field] if kind == VECTORS and field in _VECTOR_DEFAULTS
                    else getattr(default_train_config(kind), field) for kind in KINDS}


def _vector_spec_default(key: str) -> object:
    if key == "num_blocks":
        return (f"{vector_num_blocks(0)} ({vector_num_blocks(DEEP_VECTOR_ROWS)} from {DEEP_VECTOR_ROWS} rows without "
                "--context)")
    spec = vector_lunet_spec(1)
    if key in spec:
        return spec[key]
    # a leaky-softplus setting, which own data's default spline does not have
    return f"{_show(vector_lunet_spec(1, activation='leaky_softplus')[key])} with --activation leaky_softplus"


def _spec_defaults(key: str, gmm2d: str) -> Callable[[], dict[str, object]]:
    return lambda: {GMM2D: getattr(GMM2DSettings(), gmm2d), IMAGES: paper_lunet_spec().get(key, False),
                    VECTORS: _vector_spec_default(key)}


# The settings of TrainConfig and their options: the learning rate and the rest go from here into
# TrainConfig (train_config), and from there into the training.
CONFIG_OPTIONS: dict[str, dict[str, Any]] = {
    "epochs": dict(type=POSITIVE_INT, help="epochs to train {default}"),
    "batch_size": dict(type=POSITIVE_INT, help="training batch size {default}"),
    "lr": dict(type=POSITIVE_FLOAT, help="peak Adam learning rate {default}"),
    "weight_decay": dict(type=NON_NEGATIVE_FLOAT, help="Adam weight decay {default}"),
    "schedule": dict(choices=["cosine", "constant"], help="learning-rate schedule {default}"),
    "warmup_steps": dict(type=NON_NEGATIVE_INT, help="linear warm-up steps {default}"),
    "grad_clip": dict(type=POSITIVE_FLOAT, help="clip the gradient norm to this value {default}"),
    "ema": dict(type=FRACTION, metavar="DECAY",
                help="validate, keep and evaluate an exponential moving average of the weights with this decay "
                     "per step, e.g. 0.999 {default}"),
    "seed": dict(type=SEED, help="seed for initialisation, shuffling and noise {default}"),
    "device": dict(help="cpu, cuda or cuda:N {default}"),
    "dtype": dict(choices=["float32", "float64"], help="training precision {default}"),
    "eval_every": dict(type=POSITIVE_INT, help="epochs between validation, log line and checkpoint {default}"),
    "patience": dict(type=POSITIVE_INT, help="stop once this many validations in a row have not improved on the "
                                             "best {default}"),
    "time_budget": dict(type=POSITIVE_FLOAT, metavar="SECONDS",
                        help="train for this many seconds of training steps (validation not counted): the cosine "
                             "schedule reaches zero there and the run stops, --epochs becoming a cap that is lifted "
                             "unless given; a resumed run counts the seconds already trained {default}"),
    "compile": dict(action=argparse.BooleanOptionalAction,
                    help="compile the training loss with torch.compile: slower start; faster steps where that pays "
                         "(not for the MNIST model on a CPU: docs/benchmark.md) {default}"),
    "cuda_graph": dict(action=argparse.BooleanOptionalAction,
                       help="on a GPU, replay each full batch's training step as one captured CUDA graph "
                            "(eager if the capture fails) {default}"),
}

OPTIONS = (
    Option(("--out",), _ALL, "",
           dict(type=PATH, required=True, help="run directory for checkpoint, logs and pictures")),
    Option(("--overwrite",), _ALL, "",
           dict(action="store_true", help="start afresh, replacing a run already in --out")),
    Option(("--model",), _ALL, "model", dict(default="lunet", choices=["lunet", "realnvp"],
                                              help="flow family (images only)")),
    Option(("--recipe",), frozenset({IMAGES}), "model",
           dict(choices=list(RECIPES), help="named settings, which the options given change: "
                + "; ".join(f"{r.name}: {r.summary}" for r in RECIPES.values()) + " (default paper)"),
           lunet_model=True),
    Option(("--blocks",), _ALL, "model", dict(type=POSITIVE_INT, dest="num_blocks", metavar="BLOCKS",
                                                help="number of LU blocks {default}"),
           _spec_defaults("num_blocks", "num_blocks"), lunet_model=True),
    Option(("--alpha",), _ALL, "model",
           dict(type=SLOPE, help=f"leaky-softplus slope a in [{ALPHA_MIN:g}, 1) {{default}}"),
           _spec_defaults("alpha", "alpha"), lunet_model=True),
    Option(("--learn-alpha",), _ALL, "model", dict(action=argparse.BooleanOptionalAction,
                                                     help="learn the slope a of every activation {default}"),
           _spec_defaults("learn_alpha", "learn_alpha"), lunet_model=True),
    Option(("--starts",), frozenset({GMM2D}), "model",
           dict(type=POSITIVE_INT, help=f"gmm2d: initialisations trained side by side, the best by validation NLL "
                                        f"kept (default {GMM2DSettings().starts})")),
    Option(("--activation",), frozenset({IMAGES, VECTORS}), "model",
           dict(choices=["leaky_softplus", "spline"],
                help="the elementwise map after every LU block but the last: the paper's leaky softplus, or a "
                     "monotone spline per feature (8 bins on [-5, 5]; no slope) {default}"),
           lambda: {IMAGES: "leaky_softplus", VECTORS: "spline"}, lunet_model=True),
    Option(("--bins",), frozenset({IMAGES, VECTORS}), "model",
           dict(type=POSITIVE_INT, help="bins of each spline, with --activation spline (default 8)"), lunet_model=True),
    Option(("--spline-bound",), frozenset({IMAGES, VECTORS}), "model",
           dict(type=POSITIVE_FLOAT, dest="bound", metavar="B",
                help="each spline spans [-B, B], the identity outside, with --activation spline (default 5)"),
           lunet_model=True),
    Option(("--input-spline",), frozenset({IMAGES, VECTORS}), "model",
           dict(action="store_const", const=True,
                help="a monotone spline per feature before the first block, of the same size as the activation's "
                     "splines (--bins, --spline-bound)"), lunet_model=True),
    Option(("--diag",), _ALL, "model", dict(choices=["raw", "exp"], help="parametrisation of diag(U) {default}"),
           _spec_defaults("diag", "diag"), lunet_model=True),
    Option(("--class",), frozenset({IMAGES}), "images", dict(dest="class_label", type=NON_NEGATIVE_INT,
                                                             help="model one class only (0..9)")),
    Option(("--per-class",), frozenset({IMAGES}), "images",
           dict(action="store_true", help="one model per class (the paper's setting)")),
    Option(("--conditional",), frozenset({IMAGES}), "images",
           dict(action="store_true", help="one conditional LU-Net of p(x | class) for every class: the LU layers "
                                          "shared, the class's shift and log-scale after each (leaky softplus; "
                                          "with --activation spline, splines whose knots the class sets)")),
    Option(("--data-init",), frozenset({IMAGES, VECTORS}), "images",
           dict(choices=["gaussian", "standardize", "none"],
                help="LU-Net start: the data's full-covariance Gaussian fit, per-feature standardising, or none "
                     "(default gaussian for images; for --data gaussian with at least twice as many training rows "
                     "as columns, else standardize)"), lunet_model=True),
    Option(("--lam",), frozenset({IMAGES}), "images",
           dict(type=LAM, help=f"logit-transform λ in (0, 0.5) (default {DEFAULT_LAM:g})")),
    Option(("--limit",), frozenset({IMAGES, VECTORS}), "images",
           dict(type=POSITIVE_INT, help="train on the first N training images only (per class with --per-class), "
                                        "validate on the first N/10: for quick trials")),
    Option(("--val-fraction",), frozenset({VECTORS}), "own data (--data)",
           dict(type=FRACTION, help="share of the rows held out for validation, drawn at random once (default 0.1)")),
    Option(("--drop-constant",), frozenset({VECTORS}), "own data (--data)",
           dict(action="store_true", help="drop the columns that hold one value in every training row (named and "
                                          "recorded; samples give them their value back)")),
    Option(("--dequantize",), frozenset({VECTORS}), "own data (--data)",
           dict(choices=list(DEQUANTIZE_CHOICES),
                help="auto: columns of whole numbers (spanning no more integers than there are rows) are modelled "
                     "as x + U[0, 1) and sampled as whole numbers; none: every column as it is (default auto)")),
    Option(("--context",), frozenset({VECTORS}), "own data (--data)",
           dict(type=PATH, metavar="FILE",
                help="model p(x | c): a file (.npy, .csv or .pt) of one context row per row of --data, class labels "
                     "or vectors; one conditional LU-Net (its activation the leaky softplus) for every context")),
    Option(("--context-kind",), frozenset({VECTORS}), "own data (--data)",
           dict(choices=list(CONTEXT_KINDS),
                help="how --context is read: labels (one column of whole numbers from 0, embedded), vectors "
                     "(standardised numbers), or auto: labels for one column of whole numbers from 0 to below 256, "
                     "else vectors (default auto)")),
    Option(("--data-dir",), frozenset({IMAGES}), "", dict(type=PATH, help=DATA_DIR_HELP)),
    Option(("--no-verify",), frozenset({IMAGES}), "", dict(action="store_true", help=NO_VERIFY_HELP)),
    *(Option((flag(name),), _ALL, "optimisation", dict(kwargs), _config_defaults(name))
      for name, kwargs in CONFIG_OPTIONS.items()),
    Option(("--resume",), _ALL, "optimisation",
           dict(action="store_true", help="continue the run in --out from its checkpoint")),
    Option(("--no-progress",), _ALL, "optimisation",
           dict(action="store_true", help="no progress bar or per-epoch lines")),
)
