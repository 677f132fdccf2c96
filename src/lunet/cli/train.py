"""``lunet train``: one parser per kind of run, chosen by ``--data`` and ``--dataset``.

A run on the 2-D mixture (``--dataset gmm2d``, the default), on an image data set
(``--dataset mnist | fashion-mnist``) or on own vectors (``--data FILE``) each
has the options that apply to it and no others; an option of another kind is
refused by its name, saying what it applies to. ``lunet train --help`` shows
every option with its default per kind. Imports no torch until a run starts.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
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
    epochs_text,
    flag,
    refuse_given,
)
from lunet.experiments.config.presets import (
    CONTEXT_KINDS,
    DEFAULT_LAM,
    DEQUANTIZE_CHOICES,
    GMM2D,
    IMAGE_DATASETS,
    IMAGES,
    KINDS,
    RECIPES,
    VECTORS,
    GMM2DSettings,
    conditional_image_spec,
    paper_lunet_spec,
    vector_lunet_spec,
)
from lunet.experiments.config.training import (
    VECTOR_EVAL_STEPS,
    VECTOR_STEPS,
    TrainConfig,
    budget_changes,
    default_train_config,
)
from lunet.limits import ALPHA_MIN

__all__ = ["KIND_NAMES", "Option", "CONFIG_OPTIONS", "OPTIONS", "parser_for", "parse",
           "given_config", "train_config", "model_overrides", "cmd_train"]

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


def _default(values: dict[str, object], kinds: Sequence[str]) -> str:
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
    Option(("--diag",), _ALL, "model", dict(choices=["raw", "exp"], help="parametrisation of diag(U) {default}"),
           _spec_defaults("diag", "diag"), lunet_model=True),
    Option(("--class",), frozenset({IMAGES}), "images", dict(dest="class_label", type=NON_NEGATIVE_INT,
                                                             help="model one class only (0..9)")),
    Option(("--per-class",), frozenset({IMAGES}), "images",
           dict(action="store_true", help="one model per class (the paper's setting)")),
    Option(("--conditional",), frozenset({IMAGES}), "images",
           dict(action="store_true", help="one conditional LU-Net of p(x | class) for every class: the LU layers "
                                          "shared, the class's shift and log-scale after each (leaky softplus)")),
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


def _where(kinds: frozenset) -> str:
    return " and ".join(KIND_NAMES[k] for k in (IMAGES, GMM2D, VECTORS) if k in kinds) + " only"


def parser_for(kinds: Sequence[str]) -> argparse.ArgumentParser:
    """The parser of ``lunet train`` for runs of ``kinds``: one kind, or all of them for the help."""
    one = len(kinds) == 1
    p = argparse.ArgumentParser(
        prog="lunet train",
        description="train a flow by maximum likelihood" + (f" ({KIND_NAMES[kinds[0]]})" if one else ""),
    )
    if not one or kinds[0] != VECTORS:
        datasets = ["gmm2d", *IMAGE_DATASETS] if not one else (["gmm2d"] if kinds[0] == GMM2D else list(IMAGE_DATASETS))
        images_only = one and kinds[0] == IMAGES
        p.add_argument("--dataset", choices=datasets, required=images_only,
                       help="data set" if images_only else "data set (default: gmm2d, needs no files)")
    if not one or kinds[0] == VECTORS:
        p.add_argument("--data", type=PATH, metavar="FILE", required=one,
                       help="train on your own feature vectors instead: a .npy, .csv or .pt file of shape (N, D)")
    groups: dict[str, Any] = {"": p}
    for option in OPTIONS:
        if not option.kinds.intersection(kinds):
            continue
        if option.group not in groups:
            groups[option.group] = p.add_argument_group(option.group)
        kwargs = dict(option.kwargs)
        if option.defaults is not None:
            served = [k for k in kinds if k in option.kinds]
            kwargs["help"] = kwargs["help"].format(default=_default(option.defaults(), served))
        if option.names == ("--model",) and one and kinds[0] != IMAGES:
            kwargs.update(choices=["lunet"], help="flow family")
        groups[option.group].add_argument(*option.names, **kwargs)
    p.set_defaults(command="train", kind=kinds[0] if one else None, func=cmd_train)
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """``lunet train ARGV``: the options of the kind of run ``--data``/``--dataset`` choose;
    ``ValueError`` for an option of another kind, naming what it applies to."""
    overview = parser_for(KINDS)
    pre = argparse.ArgumentParser(prog="lunet train", add_help=False, usage=overview.format_usage()[len("usage: "):])
    pre.add_argument("--dataset", choices=["gmm2d", *IMAGE_DATASETS])
    pre.add_argument("--data", type=PATH)
    pre.add_argument("-h", "--help", action="store_true")
    chosen, _ = pre.parse_known_args(argv)
    if chosen.help and chosen.data is None and chosen.dataset is None:
        overview.parse_args(["--help"])
    if chosen.data is not None and chosen.dataset is not None:
        raise ValueError("--data and --dataset exclude each other: train on your own file or on a named data set")
    kind = VECTORS if chosen.data is not None else GMM2D if chosen.dataset in (None, "gmm2d") else IMAGES
    parser = parser_for([kind])
    args, rest = parser.parse_known_args(argv)
    others: dict[frozenset, list[str]] = {}
    for token in rest:
        option = next((o for o in OPTIONS if token.split("=")[0] in o.names
                       or token.startswith("--no-") and "--" + token[5:] in o.names), None)
        if option is not None:
            others.setdefault(option.kinds, []).append(token.split("=")[0])
        elif token.startswith("-"):
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if others:
        kinds, given = next(iter(others.items()))
        verb = "applies" if len(given) == 1 else "apply"
        raise ValueError(f"{', '.join(given)} {verb} to {_where(kinds)}, not to {KIND_NAMES[kind]}")
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if kind == IMAGES and args.model == "realnvp":
        given = [o.names[0] for o in OPTIONS if o.lunet_model and getattr(args, o.dest) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --model lunet only, "
                             f"not to realnvp")
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    return args


def given_config(args: argparse.Namespace) -> dict[str, Any]:
    """The optimisation options given on the command line, by their :class:`TrainConfig` names."""
    return budget_changes({name: getattr(args, name) for name in CONFIG_OPTIONS if getattr(args, name) is not None})


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's kind's optimisation defaults, with the options given (own data: the defaults for
    its rows are chosen once they are read, :func:`_train_vectors`)."""
    config = default_train_config(args.dataset if args.kind == IMAGES else args.kind)
    return dataclasses.replace(config, **{**_recipe(args).train, **given_config(args)})


def _recipe(args: argparse.Namespace):
    return RECIPES[getattr(args, "recipe", None) or "paper"]


def model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The LU-Net settings given on the command line, by their names in a model spec."""
    given = {name: getattr(args, name) for name in ("num_blocks", "alpha", "diag", "learn_alpha", "activation")
             if getattr(args, name, None) is not None}
    given = {**_recipe(args).model, **given}
    if given.get("activation") == "leaky_softplus":
        del given["activation"]  # the default: a spec that does not name it, as the paper's
    elif given.get("activation") == "spline":
        given.setdefault("learn_alpha", False)  # a spline has no slope to learn
    return given


def cmd_train(args: argparse.Namespace) -> int:
    from lunet.experiments.training import distributed

    if args.kind == GMM2D:
        if distributed.launched():
            raise ValueError("--dataset gmm2d trains its starts side by side in one process; run it without torchrun")
        return _train_gmm2d(args)
    config = train_config(args)
    group, device = distributed.start(config.device)
    try:
        config = dataclasses.replace(config, device=device)
        code = _train_vectors(args, config, group) if args.kind == VECTORS else _train_images(args, config, group)
        if not getattr(args, "per_class", False):
            # every process past its last exchange before any tears its connections down
            # (a per-class run's processes exchange nothing after the start, and finish at different times)
            group.barrier()
        return code
    finally:
        distributed.stop()


def _train_gmm2d(args: argparse.Namespace) -> int:
    from lunet.experiments.runs import gmm2d
    from lunet.experiments.training.log import format_seconds

    settings = dataclasses.replace(GMM2DSettings(), **model_overrides(args),
                                   **({"starts": args.starts} if args.starts is not None else {}))
    summary = gmm2d.run(args.run, settings, train_config(args), resume=args.resume, progress=not args.no_progress,
                        overwrite=args.overwrite)
    print(
        f"gmm2d: test NLL {summary['test_nll_nats']:.4f} nats, mixture entropy "
        f"{summary['entropy_nats']:.4f} nats, KL {summary['kl_nats']:.4f} nats "
        f"({epochs_text(summary['epochs'])}, {format_seconds(summary['train_seconds'])} training)"
    )
    print(f"wrote {args.out}/density.png, {args.out}/samples.png, {args.out}/summary.json")
    return 0


def _train_vectors(args: argparse.Namespace, config: TrainConfig, group: Any) -> int:
    from lunet.experiments.data.rows import load_vectors, read_header
    from lunet.experiments.runs.vector_report import describe_samples
    from lunet.experiments.runs.vectors import train_vectors
    from lunet.experiments.training.log import format_seconds

    data = load_vectors(args.data)
    context = None
    if args.context is not None:
        refuse_given(args, ("activation", "learn_alpha"), "runs without --context: a run of p(x | c) has the leaky "
                                                          "softplus with a fixed slope as its activation")
        context = load_vectors(args.context, min_rows=1)
    elif args.context_kind is not None:
        raise ValueError("--context-kind says how --context is read: give --context FILE too")
    if args.limit is not None:
        data = data[: args.limit]
        context = None if context is None else context[: args.limit]
    overrides = model_overrides(args)
    if context is None:
        overrides.setdefault("activation", args.activation or "spline")  # the spline unless leaky_softplus is asked
    _, summary = train_vectors(
        data, args.run, {**given_config(args), "device": config.device},
        model_spec=overrides,
        val_fraction=args.val_fraction, data_init=args.data_init, resume=args.resume,
        overwrite=args.overwrite, progress=not args.no_progress, data_file=str(Path(args.data).resolve()), group=group,
        drop_constant=args.drop_constant, dequantize=args.dequantize or "auto", names=read_header(args.data),
        context=context, context_kind=args.context_kind or "auto",
        context_file=None if context is None else str(Path(args.context).resolve()),
        context_names=None if context is None else read_header(args.context),
    )
    if group.is_main:
        stopped = (f", stopped early (the best at epoch {summary['best_epoch']})" if summary["stopped_early"]
                   else "")
        print(f"{args.data}: {summary['num_train']:,} training and {summary['num_val']:,} validation rows of width "
              f"{summary['features']}; best validation {summary['val_nll_nats_per_dim']:.4f} nats/dim after "
              f"{epochs_text(summary['epochs'])}{stopped} ({format_seconds(summary['train_seconds'])} training)")
        for line in summary["columns"] + ([summary["context"]] if summary["context"] else []):
            print(line)
        print(summary["comparison"])
        print(describe_samples(summary["samples"]) + " (at T = 1; the data beside them in samples.png)")
        if context is None:
            print(f"run in {args.out}; next: lunet evaluate {args.out} --data TEST_FILE, "
                  f"lunet sample {args.out} --num 1000 --out samples.npy")
        else:
            print(f"run in {args.out}; next: lunet evaluate {args.out} --data TEST_FILE --context TEST_CONTEXTS, "
                  f"lunet sample {args.out} --context CONTEXTS --num 10 --out samples.npy (10 per context row)")
    return 0


def _train_images(args: argparse.Namespace, config: TrainConfig, group: Any) -> int:
    from lunet.experiments.runs import images
    from lunet.experiments.training.log import format_seconds

    if args.conditional:
        refuse_given(args, ("per_class", "class_label", "learn_alpha", "activation", "recipe"),
                     "runs without --conditional: a conditional run is one LU-Net with the leaky softplus of a fixed "
                     "slope for every class")
        if args.model == "realnvp":
            raise ValueError("--conditional trains a conditional LU-Net; --model realnvp has no conditional form here")
        spec = conditional_image_spec(**model_overrides(args))
    elif args.model == "realnvp":
        spec = {"name": "realnvp"}
    else:
        spec = paper_lunet_spec(**model_overrides(args))
        if not spec.get("learn_alpha", True):
            del spec["learn_alpha"]  # fixed slopes are the paper's model, whose spec does not name them
    if args.per_class and args.class_label is not None:
        raise ValueError("--per-class and --class exclude each other")
    kind = ("per_class" if args.per_class else "conditional" if args.conditional
            else "class" if args.class_label is not None else "unconditional")
    settings = images.ImageRunSettings(
        dataset=args.dataset, kind=kind, class_label=args.class_label, model=spec,
        lam=args.lam if args.lam is not None else DEFAULT_LAM,
        data_init=(args.data_init or _recipe(args).run.get("data_init", "gaussian")) if args.model == "lunet"
        else "none",
        recipe=_recipe(args).name,
    )
    results = images.train_image_run(
        args.run, settings, config, data_dir=args.data_dir, verify=not args.no_verify,
        resume=args.resume, progress=not args.no_progress, limit=args.limit, overwrite=args.overwrite, group=group,
    )
    if not group.is_main and kind != "per_class":
        return 0
    for name, r in results.items():  # with several processes: a shared model's on process 0, each one's classes
        label = "all classes" if name == "all" else f"class {name}"
        print(
            f"{args.dataset} {label}: best validation {r['val_bits_per_dim']:.4f} bits/dim "
            f"after {epochs_text(r['epochs'])} ({format_seconds(r['train_seconds'])} training)"
        )
    if group.is_main:
        print(f"run in {args.out}; next: lunet evaluate {args.out}")
    return 0
