"""``lunet train``: one parser per kind of run, chosen by ``--data`` and ``--dataset``.

A run on the 2-D mixture (``--dataset gmm2d``, the default), on an image data set
(``--dataset mnist | fashion-mnist``) or on own vectors (``--data FILE``) each
has the options that apply to it and no others; an option of another kind is
refused by its name, saying what it applies to. ``lunet train --help`` shows
every option with its default per kind (the options: :mod:`lunet.cli.train_options`).
Imports no torch until a run starts.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, Sequence

from lunet.cli.options import PATH, epochs_text, flag, refuse_given
from lunet.cli.train_options import CONFIG_OPTIONS, KIND_NAMES, OPTIONS, default_text
from lunet.experiments.config.presets import (
    DEFAULT_LAM,
    GMM2D,
    IMAGE_DATASETS,
    IMAGES,
    KINDS,
    RECIPES,
    VECTORS,
    GMM2DSettings,
    conditional_image_spec,
    paper_lunet_spec,
)
from lunet.experiments.config.training import TrainConfig, budget_changes, default_train_config

__all__ = ["parser_for", "parse", "given_config", "train_config", "model_overrides", "cmd_train"]


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
            kwargs["help"] = kwargs["help"].format(default=default_text(option.defaults(), served))
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
    given = {name: getattr(args, name)
             for name in ("num_blocks", "alpha", "diag", "learn_alpha", "activation", "bins", "bound", "input_spline")
             if getattr(args, name, None) is not None}
    given = {**_recipe(args).model, **given}
    shape = [flag(name) for name in ("bins", "bound") if name in given]
    # own data without a context default to the spline (a context run has refused these options already)
    spline = given.get("activation", "spline" if args.kind == VECTORS else None) == "spline"
    if shape and not (spline or given.get("input_spline")):
        raise ValueError(f"{' and '.join(shape)} shape{'s' if len(shape) == 1 else ''} the splines; give "
                         "--activation spline (or --recipe best) or --input-spline too")
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
    summary = gmm2d.train_gmm2d_run(args.run, settings, train_config(args), resume=args.resume,
                                    overwrite=args.overwrite, progress=not args.no_progress)
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
        refuse_given(args, ("activation", "learn_alpha", "bins", "bound", "input_spline"),
                     "runs without --context: a run of p(x | c) has the leaky softplus with a fixed slope as its "
                     "activation")
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
        refuse_given(args, ("per_class", "class_label", "learn_alpha", "recipe", "input_spline"),
                     "runs without --conditional: a conditional run is one LU-Net for every class, its activation "
                     "the leaky softplus of a fixed slope or (--activation spline) splines whose knots the class sets")
        if args.model == "realnvp":
            raise ValueError("--conditional trains a conditional LU-Net; --model realnvp has no conditional form here")
        overrides = model_overrides(args)
        overrides.pop("learn_alpha", None)  # a conditional flow's slope is fixed, and a spline has none
        spec = conditional_image_spec(**overrides)
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
