"""The ``lunet`` command line: ``lunet train | evaluate | sample | interpolate | agreement | ood | export | bench``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Optional, Sequence

from lunet import __version__
from lunet.experiments.rundir import RunFolder, RunFolderBusy, check_output, write_text_atomic
from lunet.experiments.settings import (
    DEFAULT_LAM,
    MAX_SAMPLE_VALUES,
    GMM2DSettings,
    TrainConfig,
    default_train_config,
    paper_lunet_spec,
    vector_lunet_spec,
)
from lunet.numbers import SLOPE_MIN

# Nothing above imports torch: `lunet --help` and `--version` answer at once, and each
# command imports what it needs.


def _number(kind: type, test, what: str):
    """An argparse type: ``kind(text)`` that must pass ``test``, else an error saying it must be ``what``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


POSITIVE_INT = _number(int, lambda v: v >= 1, "a positive integer")


def _bounded(top: int):
    return _number(int, lambda v: 1 <= v <= top, f"an integer in 1..{top:,}")


def PATH(text: str) -> str:  # noqa: N802 (an argparse type, named like the others)
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


IMAGE_SUFFIXES = (".png", ".pdf", ".svg")


def _suffix_problem(path: str, suffixes: Sequence[str]) -> Optional[str]:
    """What is wrong with ``path`` as a file that must end in one of ``suffixes`` (None: nothing)."""
    if Path(path).suffix.lower() not in suffixes:
        return f"must name a {', '.join(suffixes)} file, got {path!r}"
    return None


def IMAGE_PATH(text: str) -> str:  # noqa: N802
    problem = _suffix_problem(PATH(text), IMAGE_SUFFIXES)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text
NON_NEGATIVE_INT = _number(int, lambda v: v >= 0, "a non-negative integer")
SEED = _number(int, lambda v: 0 <= v < 2**63, "an integer in [0, 2^63)")
POSITIVE_FLOAT = _number(float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")
NON_NEGATIVE_FLOAT = _number(float, lambda v: math.isfinite(v) and v >= 0, "a non-negative finite number")
OPTION_NAMES = {"class_label": "--class"}
SLOPE = _number(float, lambda v: SLOPE_MIN <= v < 1, f"a number in [{SLOPE_MIN:g}, 1)")
LAM = _number(float, lambda v: 0 < v < 0.5, "a number strictly between 0 and 0.5")


def _per_dataset(gmm2d: object, images: object, vectors: object) -> str:
    """A help text's default, per kind of data: the 2-D mixture, the image data sets, own data (--data)."""
    show = lambda v: (  # noqa: E731
        "none" if v is None else ("on" if v else "off") if isinstance(v, bool) else f"{v:g}" if isinstance(v, float) else str(v)
    )
    kinds: dict[str, list[str]] = {}
    for name, value in (("gmm2d", gmm2d), ("images", images), ("--data", vectors)):
        kinds.setdefault(show(value), []).append(name)
    if len(kinds) == 1:
        return f"(default {show(gmm2d)})"
    return "(default " + ", ".join(f"{value} for {' and '.join(names)}" for value, names in kinds.items()) + ")"


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation")
    small, images, vectors = default_train_config("gmm2d"), default_train_config("mnist"), default_train_config("vectors")

    def default(name: str) -> str:
        return _per_dataset(getattr(small, name), getattr(images, name), getattr(vectors, name))

    g.add_argument("--epochs", type=POSITIVE_INT, help=f"epochs to train {default('epochs')}")
    g.add_argument("--batch-size", type=POSITIVE_INT, help=f"training batch size {default('batch_size')}")
    g.add_argument("--lr", type=POSITIVE_FLOAT, help=f"peak Adam learning rate {default('lr')}")
    g.add_argument("--weight-decay", type=NON_NEGATIVE_FLOAT, help=f"Adam weight decay {default('weight_decay')}")
    g.add_argument("--schedule", choices=["cosine", "constant"], help=f"learning-rate schedule {default('schedule')}")
    g.add_argument("--warmup-steps", type=NON_NEGATIVE_INT, help=f"linear warm-up steps {default('warmup_steps')}")
    g.add_argument("--grad-clip", type=POSITIVE_FLOAT, help=f"clip the gradient norm to this value {default('grad_clip')}")
    g.add_argument("--seed", type=SEED, help=f"seed for initialisation, shuffling and noise {default('seed')}")
    g.add_argument("--device", help=f"cpu, cuda or cuda:N {default('device')}")
    g.add_argument("--dtype", choices=["float32", "float64"], help=f"training precision {default('dtype')}")
    g.add_argument("--eval-every", type=POSITIVE_INT,
                   help=f"epochs between validation, log line and checkpoint {default('eval_every')}")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help=f"compile the training loss with torch.compile: slower start; faster steps where that pays "
                        f"(not for the MNIST model on a CPU: docs/benchmark.md) {default('compile')}")
    g.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction,
                   help=f"on a GPU, replay each full batch's training step as one captured CUDA graph "
                        f"(eager if the capture fails) {default('cuda_graph')}")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")


def _train_config(args: argparse.Namespace, defaults: TrainConfig) -> TrainConfig:
    values = dataclasses.asdict(defaults)
    for name in values:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    return TrainConfig(**values)


def _add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=PATH, help="folder with the IDX files (else, for a run, where its training found "
                                                 "them; then $LUNET_DATA_DIR, the user cache, system folders)")
    p.add_argument("--no-verify", action="store_true", help="skip the MD5 check of the data files")


def _refuse_given(args: argparse.Namespace, names: Sequence[str], where: str) -> None:
    """``ValueError`` naming each option of ``names`` that was given, with what it applies to."""
    given = [OPTION_NAMES.get(n, "--" + n.replace("_", "-")) for n in names
             if getattr(args, n) not in (None, False) and not (n == "model" and args.model == "lunet")]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise ValueError(f"{', '.join(given)} {verb} to {where}")


def _epochs(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def cmd_train(args: argparse.Namespace) -> int:
    from lunet.experiments import distributed

    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other")
    if args.data is not None and args.dataset is not None:
        raise ValueError("--data and --dataset exclude each other: train on your own file or on a named data set")
    args.dataset = args.dataset or ("vectors" if args.data is not None else "gmm2d")
    if args.data is None:
        _refuse_given(args, ("val_fraction",), "--data only")
    if args.dataset == "gmm2d":
        if distributed.launched():
            raise ValueError("--dataset gmm2d trains its starts side by side in one process; run it without torchrun")
        return _train_gmm2d(args)
    config = _train_config(args, default_train_config(args.dataset))
    group, device = distributed.start(config.device)
    try:
        config = dataclasses.replace(config, device=device)
        code = _train_vectors(args, config, group) if args.data is not None else _train_images(args, config, group)
        if not args.per_class:
            # every process past its last exchange before any tears its connections down
            # (a per-class run's processes exchange nothing after the start, and finish at different times)
            group.barrier()
        return code
    finally:
        distributed.stop()


def _train_gmm2d(args: argparse.Namespace) -> int:
    from lunet.experiments import gmm2d
    from lunet.experiments.train import format_seconds

    _refuse_given(args, ("model", "class_label", "per_class", "limit", "lam", "data_init",
                         "data_dir", "no_verify"), "image data sets only, not to --dataset gmm2d")
    defaults = GMM2DSettings()
    settings = GMM2DSettings(
        starts=args.starts if args.starts is not None else defaults.starts,
        learn_alpha=args.learn_alpha if args.learn_alpha is not None else defaults.learn_alpha,
        num_blocks=args.blocks if args.blocks is not None else defaults.num_blocks,
        alpha=args.alpha if args.alpha is not None else defaults.alpha,
        diag=args.diag or defaults.diag,
    )
    config = _train_config(args, default_train_config("gmm2d"))
    summary = gmm2d.run(args.out, settings, config, resume=args.resume, progress=not args.no_progress,
                        overwrite=args.overwrite)
    print(
        f"gmm2d: test NLL {summary['test_nll_nats']:.4f} nats, mixture entropy "
        f"{summary['entropy_nats']:.4f} nats, KL {summary['kl_nats']:.4f} nats "
        f"({_epochs(summary['epochs'])}, {format_seconds(summary['train_seconds'])} training)"
    )
    print(f"wrote {args.out}/density.png, {args.out}/samples.png, {args.out}/summary.json")
    return 0


def _train_vectors(args: argparse.Namespace, config: TrainConfig, group) -> int:
    from lunet.experiments.train import format_seconds
    from lunet.experiments.vector_runs import train_vectors
    from lunet.experiments.vectors import load_vectors

    _refuse_given(args, ("model", "class_label", "per_class", "lam", "data_dir", "no_verify", "starts"),
                  "the image data sets only, not to --data")
    data = load_vectors(args.data)
    if args.limit is not None:
        data = data[: args.limit]
    overrides = {k: v for k, v in (("alpha", args.alpha), ("diag", args.diag), ("learn_alpha", args.learn_alpha))
                 if v is not None}
    spec = vector_lunet_spec(data.shape[1], **({"num_blocks": args.blocks} if args.blocks else {}), **overrides)
    _, summary = train_vectors(
        data, args.out, config, model_spec=spec, val_fraction=args.val_fraction,
        data_init=args.data_init or "standardize", resume=args.resume, overwrite=args.overwrite,
        progress=not args.no_progress, data_file=str(Path(args.data).resolve()), group=group,
    )
    if group.is_main:
        print(f"{args.data}: {summary['num_train']:,} training and {summary['num_val']:,} validation rows of width "
              f"{summary['dim']}; best validation {summary['val_nll_nats_per_dim']:.4f} nats/dim after "
              f"{_epochs(summary['epochs'])} ({format_seconds(summary['train_seconds'])} training)")
        print(f"run in {args.out}; next: lunet evaluate {args.out} --data TEST_FILE, "
              f"lunet sample {args.out} --num 1000 --out samples.npy")
    return 0


def _train_images(args: argparse.Namespace, config: TrainConfig, group) -> int:
    from lunet.experiments import images
    from lunet.experiments.train import format_seconds

    _refuse_given(args, ("starts",), "--dataset gmm2d only")
    if args.model == "realnvp":
        _refuse_given(args, ("blocks", "alpha", "diag", "learn_alpha", "data_init"), "--model lunet only, not to realnvp")
        spec = {"name": "realnvp"}
    else:
        extra = {}
        if args.alpha is not None:
            extra["alpha"] = args.alpha
        if args.diag:
            extra["diag"] = args.diag
        if args.learn_alpha:
            extra["learn_alpha"] = True
        if args.blocks is not None:
            extra["num_blocks"] = args.blocks
        spec = paper_lunet_spec(**extra)
    if args.per_class and args.class_label is not None:
        raise ValueError("--per-class and --class exclude each other")
    kind = "per_class" if args.per_class else ("class" if args.class_label is not None else "unconditional")
    settings = images.ImageRunSettings(
        dataset=args.dataset, kind=kind, class_label=args.class_label, model=spec,
        lam=args.lam if args.lam is not None else DEFAULT_LAM,
        data_init=(args.data_init or "gaussian") if args.model == "lunet" else "none",
    )
    results = images.train_image_run(
        args.out, settings, config, data_dir=args.data_dir, verify=not args.no_verify,
        resume=args.resume, progress=not args.no_progress, limit=args.limit, overwrite=args.overwrite, group=group,
    )
    if not group.is_main and kind != "per_class":
        return 0
    for name, r in results.items():  # with several processes: a shared model's on process 0, each one's classes
        label = "all classes" if name == "all" else f"class {name}"
        print(
            f"{args.dataset} {label}: best validation {r['val_bits_per_dim']:.4f} bits/dim "
            f"after {_epochs(r['epochs'])} ({format_seconds(r['train_seconds'])} training)"
        )
    if group.is_main:
        print(f"run in {args.out}; next: lunet evaluate {args.out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    _check_outputs(args)
    from lunet.experiments.vector_runs import is_vector_run

    if is_vector_run(args.run_dir):
        return _evaluate_vectors(args)
    from lunet.experiments.images import read_run_file

    read_run_file(args.run_dir)  # a damaged run.json is named as such, not answered as an image run's
    _refuse_given(args, ("data",), "runs on own data (trained with --data)")
    from lunet.experiments.evaluate import evaluate_run

    result = evaluate_run(args.run_dir, draws=args.draws, data_dir=args.data_dir, verify=not args.no_verify,
                          limit=args.limit, device=args.device)
    print(
        f"{result['dataset']} ({result['kind']}): {result['bits_per_dim']:.4f} ± {result['bits_per_dim_std_over_draws']:.4f} "
        f"bits/dim on {result['num_test_images']} test images ({args.draws} dequantisation draws, λ = {result['lam']:g})"
    )
    print(f"  paper convention (logit-space bits/dim − 0.5, not comparable to the above): {result['paper_bits_per_pixel']:.4f}")
    for c, r in result.get("per_class", {}).items():
        print(f"  class {c}: {r['bits_per_dim']:.4f} bits/dim, paper convention {r['paper_bits_per_pixel']:.4f}")
    if "bayes_classifier_accuracy" in result:
        print(f"  Bayes classifier argmax_c log p(x|c): {100 * result['bayes_classifier_accuracy']:.2f}% test accuracy")
    _write_json(args.json, result)
    return 0


def _evaluate_vectors(args: argparse.Namespace) -> int:
    from lunet.experiments.vector_runs import evaluate_vectors
    from lunet.experiments.vectors import load_vectors

    _refuse_given(args, ("limit", "data_dir", "no_verify"), "image runs, not to a run on own data")
    if args.data is None:
        raise ValueError(f"{args.run_dir} is a run on own data: name the test file with --data FILE")
    result = evaluate_vectors(args.run_dir, load_vectors(args.data, min_rows=1), device=args.device, name=args.data)
    print(f"{args.data}: test NLL {result['nll_nats_per_dim']:.4f} nats/dim ({result['nll_nats_per_vector']:.4f} nats "
          f"per vector of width {result['dim']}) on {result['num_vectors']:,} "
          f"vector{'' if result['num_vectors'] == 1 else 's'}")
    _write_json(args.json, {"data_file": str(Path(args.data).resolve()), **result})
    return 0


def _sample_vectors(args: argparse.Namespace) -> int:
    from lunet.experiments.vector_runs import read_run_file, sample_vectors
    from lunet.experiments.vectors import VECTOR_SUFFIXES, save_vectors

    _refuse_given(args, ("data_dir", "no_verify"), "image runs, not to a run on own data")
    if args.prior != "standard" or args.per_row != 10:
        raise ValueError("--prior and --per-row apply to image runs, not to a run on own data")
    problem = _suffix_problem(args.out, VECTOR_SUFFIXES)
    if problem:
        raise ValueError(f"--out for a run on own data {problem}")
    num, dim = args.num or 1000, read_run_file(args.run_dir).dim
    if num * dim > MAX_SAMPLE_VALUES:
        raise ValueError(f"--num {num:,} samples of width {dim} are {num * dim:,} numbers, more than the "
                         f"{MAX_SAMPLE_VALUES:,} one call draws; give --num at most {MAX_SAMPLE_VALUES // dim:,} "
                         f"(and another --seed for more)")
    samples = sample_vectors(args.run_dir, num, args.temperature, args.seed, device=args.device)
    print(f"wrote {save_vectors(samples, args.out)} ({samples.shape[0]:,} samples of width {samples.shape[1]})")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    _check_outputs(args)
    from lunet.experiments.vector_runs import is_vector_run

    if is_vector_run(args.run_dir):
        return _sample_vectors(args)
    from lunet.experiments.images import read_run_file

    read_run_file(args.run_dir)  # a damaged run.json is named as such, not answered as an image run's
    problem = _suffix_problem(args.out, IMAGE_SUFFIXES)
    if problem:
        raise ValueError(f"--out for an image run {problem}")
    if args.num is not None and args.num > 10_000:
        raise ValueError(f"--num for an image run is at most 10,000 (one picture), got {args.num:,}")
    import torch

    from lunet.experiments.data import CLASS_NAMES
    from lunet.flow import for_inference
    from lunet.experiments.images import fitted_class_priors, load_run_models, sample_images
    from lunet.experiments.plots import save_image_grid
    from lunet.experiments.preprocess import ImagePreprocessor

    settings, models, _ = load_run_models(args.run_dir, device=args.device)
    if len(models) > 1 and args.num is not None:
        raise ValueError("--num is for unconditional and single-class runs; a per-class run draws --per-row images per class")
    num = args.num if args.num is not None else 100
    models = [for_inference(m) for m in models]
    pre = ImagePreprocessor(settings.lam)
    priors = [None] * len(models)
    if args.prior == "fitted":
        priors = fitted_class_priors(settings, models, pre, data_dir=args.data_dir, verify=not args.no_verify)
    rows, labels = [], []
    for c, model, prior in zip(settings.classes, models, priors):
        gen = torch.Generator().manual_seed(args.seed + (c or 0))
        n = args.per_row if len(models) > 1 else num
        rows.append(sample_images(model, pre, n, args.temperature, prior, gen))
        labels.append("all" if c is None else CLASS_NAMES[settings.dataset][c])
    imgs = torch.cat(rows).reshape(-1, 28, 28)
    title = f"{settings.dataset} {settings.kind.replace('_', '-')} samples, prior {args.prior}, T = {args.temperature:g}"
    save_image_grid(imgs, args.out, nrow=args.per_row, row_labels=labels if len(models) > 1 else None, title=title)
    print(f"wrote {args.out}")
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    _check_outputs(args)
    import torch

    from lunet.experiments.data import load_dataset
    from lunet.experiments.images import load_run_models
    from lunet.experiments.plots import save_image_grid
    from lunet.experiments.preprocess import ImagePreprocessor

    settings, models, _ = load_run_models(args.run_dir, device=args.device)
    if len(models) != 1:
        raise ValueError("interpolate needs an unconditional or single-class run")
    model = models[0]
    pre = ImagePreprocessor(settings.lam)
    test_x, _ = load_dataset(settings.dataset, "test", data_dir=args.data_dir, verify=not args.no_verify)
    try:
        pairs = [(int(a), int(b)) for a, b in (p.split(",") for p in args.pairs)]
    except ValueError:
        raise ValueError(f"--pairs takes index pairs written A,B, got {args.pairs}") from None
    bad = [i for pair in pairs for i in pair if not 0 <= i < test_x.shape[0]]
    if bad:
        raise ValueError(f"--pairs indices must lie in 0..{test_x.shape[0] - 1}, got {bad}")
    gen = torch.Generator().manual_seed(0)
    ref = next(model.parameters())
    frames = []
    with torch.no_grad():
        for a, b in pairs:
            logits, _ = pre.to_model_space(test_x[[a, b]], gen, dtype=ref.dtype)
            z = model(logits.to(ref.device))[0]
            w = torch.linspace(0, 1, args.steps, dtype=ref.dtype, device=ref.device).unsqueeze(1)
            frames.append(pre.to_images(model.inverse((1 - w) * z[0] + w * z[1])[0].cpu()))
    save_image_grid(torch.cat(frames).reshape(-1, 28, 28), args.out, nrow=args.steps, title="latent interpolation between test images")
    print(f"wrote {args.out}")
    return 0


def cmd_agreement(args: argparse.Namespace) -> int:
    _check_outputs(args)
    from lunet.experiments.evaluate import class_agreement, train_classifier
    from lunet.experiments.images import load_run_models, read_run_file

    settings = read_run_file(args.run_dir)
    if settings.kind == "unconditional":
        raise ValueError("class agreement needs a per-class or single-class run (trained with --per-class or --class K)")
    if len(set(args.temperatures)) != len(args.temperatures):
        raise ValueError(f"--temperatures lists a value twice: {args.temperatures}")
    load_run_models(args.run_dir, device=args.device)  # a bad checkpoint or device fails now, not after the judge
    clf, acc = train_classifier(settings.dataset, data_dir=args.data_dir, verify=not args.no_verify)
    print(f"judge: MLP trained on the real {settings.dataset} training set, {100 * acc:.2f}% test accuracy")
    result = class_agreement(args.run_dir, clf, temperatures=tuple(args.temperatures), num_samples=args.num,
                             data_dir=args.data_dir, verify=not args.no_verify, device=args.device)
    for key, r in result.items():
        print(f"  {key}: {100 * r['mean']:.1f}% of samples assigned to their class "
              + " ".join(f"{c}:{100 * v:.0f}" for c, v in r["per_class"].items()))
    _write_json(args.json, {"judge_test_accuracy": acc, "agreement": result})
    return 0


def cmd_ood(args: argparse.Namespace) -> int:
    _check_outputs(args)
    from lunet.experiments.ood import ood_run

    # The recorded folder holds the run's own data set; the other one is looked for beside it.
    against_dir = str(Path(args.data_dir).parent) if getattr(args, "data_dir_from_run", False) else args.data_dir
    report, scores = ood_run(args.run_dir, args.against, data_dir=args.data_dir, against_data_dir=against_dir,
                             verify=not args.no_verify, limit=args.limit, device=args.device)
    print(f"{report['dataset']} ({report['kind']}) test set ({report['num_in']:,} images, in-distribution) against "
          f"{args.against} test set ({report['num_out']:,}, out-of-distribution); higher score = more out-of-distribution")
    width = max(len(label) for label in report["scores"].values())
    print(f"  {'model':<26}{'score':<{width + 2}}{'AUROC':>7}{'AUPR':>7}{'FPR@95':>8}")
    for model in report["models"].values():
        for name, m in model["metrics"].items():
            print(f"  {model['label']:<26}{report['scores'][name]:<{width + 2}}"
                  f"{m['auroc']:>7.3f}{m['aupr']:>7.3f}{m['fpr_at_95_tpr']:>8.3f}")
    print("  (AUROC 0.5: no better than chance; below 0.5: the score ranks the other data set as more typical)")
    _write_json(args.json, report)
    if args.plot:
        from lunet.experiments.plots import plot_score_histograms

        print(f"wrote {plot_score_histograms(scores, report, args.plot)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    _check_outputs(args)
    from lunet.experiments.export import export_run

    path = export_run(args.run_dir, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); load it with "
          f"lunet.experiments.checkpoint.load_model({str(path)!r})")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    _check_outputs(args)
    from lunet.experiments.bench import markdown_table, micro_table, run_bench, run_micro

    if args.micro:
        result = run_micro(device=args.device)
        print(f"device: {result['device']} ({result['threads']} threads)")
        print(micro_table(result))
    else:
        result = run_bench(device=args.device, quick=args.quick, models=tuple(args.models))
        print(f"device: {result['device']}, torch {result['torch']}, {'quick' if args.quick else 'full'} mode")
        print(markdown_table(result))
    _write_json(args.json, result)
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """Fail before the work, not after it, when an output file (``--out``, ``--json``, ``--plot``) cannot
    be written, or would replace one of the run's own files or a file the command reads."""
    outputs = [(name, getattr(args, name, None)) for name in ("out", "json", "plot")]
    outputs = [(name, path) for name, path in outputs if path]
    if not outputs:
        return
    run = RunFolder(args.run_dir) if getattr(args, "run_dir", None) else None
    inputs = [(getattr(args, "data", None), "the --data file this command reads"),
              (run and run.recorded_data_file(), "the run's training data")]
    for name, path in outputs:
        check_output(path, f"--{name}", run, [(p, what) for p, what in inputs if p])


def _default_to_recorded_data_dir(args: argparse.Namespace) -> None:
    """For a command on a run, take the data from where its training found them unless ``--data-dir`` says."""
    if getattr(args, "run_dir", None) and getattr(args, "data_dir", "") is None:
        from lunet.experiments.images import recorded_data_dir

        args.data_dir = recorded_data_dir(args.run_dir)
        args.data_dir_from_run = args.data_dir is not None


def _write_json(path: Optional[str], obj: dict) -> None:
    """Write ``obj`` to ``path`` (when given) as indented JSON and say so."""
    if not path:
        return
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lunet", description="LU-Net: invertible networks and normalizing flows from LU factorisation"
    )
    parser.add_argument("--version", action="version", version=f"lunet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a flow by maximum likelihood")
    p.add_argument("--dataset", choices=["gmm2d", "mnist", "fashion-mnist"],
                   help="data set (default: gmm2d, needs no files)")
    p.add_argument("--data", type=PATH, metavar="FILE",
                   help="train on your own feature vectors instead: a .npy, .csv or .pt file of shape (N, D)")
    p.add_argument("--out", type=PATH, required=True, help="run directory for checkpoint, logs and pictures")
    p.add_argument("--overwrite", action="store_true", help="start afresh, replacing a run already in --out")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="lunet", choices=["lunet", "realnvp"], help="flow family (images only)")
    small, image, own = GMM2DSettings(), paper_lunet_spec(), vector_lunet_spec(1)
    m.add_argument("--blocks", type=POSITIVE_INT,
                   help=f"number of LU blocks {_per_dataset(small.num_blocks, image['num_blocks'], own['num_blocks'])}")
    m.add_argument("--alpha", type=SLOPE, help=f"leaky-softplus slope a in [{SLOPE_MIN:g}, 1) "
                                                f"{_per_dataset(small.alpha, image['alpha'], own['alpha'])}")
    learned = _per_dataset(small.learn_alpha, image.get("learn_alpha", False), own["learn_alpha"])
    m.add_argument("--learn-alpha", action=argparse.BooleanOptionalAction,
                   help=f"learn the slope a of every activation {learned}")
    m.add_argument("--starts", type=POSITIVE_INT,
                   help=f"gmm2d: initialisations trained side by side, the best by validation NLL kept "
                        f"(default {small.starts})")
    m.add_argument("--diag", choices=["raw", "exp"],
                   help=f"parametrisation of diag(U) {_per_dataset(small.diag, image['diag'], own['diag'])}")
    c = p.add_argument_group("images")
    c.add_argument("--class", dest="class_label", type=NON_NEGATIVE_INT, help="model one class only (0..9)")
    c.add_argument("--per-class", action="store_true", help="one model per class (the paper's setting)")
    c.add_argument("--data-init", choices=["gaussian", "standardize", "none"],
                   help="LU-Net start: the data's full-covariance Gaussian fit, per-feature standardising, or none "
                        "(default gaussian for images, standardize for --data)")
    c.add_argument("--lam", type=LAM, help=f"logit-transform λ in (0, 0.5) (default {DEFAULT_LAM:g})")
    c.add_argument("--limit", type=POSITIVE_INT,
                   help="train on the first N training images only (per class with --per-class), "
                        "validate on the first N/10: for quick trials")
    o = p.add_argument_group("own data (--data)")
    o.add_argument("--val-fraction", type=_number(float, lambda v: 0 < v < 1, "a number strictly between 0 and 1"),
                   help="share of the rows held out for validation, drawn at random once (default 0.1)")
    _add_data_options(p)
    _add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="test-set bits/dim of an image run; test NLL of a run on own data")
    p.add_argument("run_dir", type=PATH)
    p.add_argument("--data", type=PATH, metavar="FILE", help="a run on own data: the test file (.npy, .csv or .pt)")
    p.add_argument("--json", type=PATH, help="also write the figures to this JSON file")
    p.add_argument("--draws", type=POSITIVE_INT, default=3, help="dequantisation draws (default 3)")
    p.add_argument("--limit", type=POSITIVE_INT, help="evaluate on the first N test images only, for quick trials")
    _add_data_options(p)
    _add_device_option(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sample", help="a PNG grid of samples (one row per class for per-class runs); "
                                      "for a run on own data, a file of samples")
    p.add_argument("run_dir", type=PATH)
    p.add_argument("--out", type=PATH, required=True,
                   help="picture to write (.png, .pdf or .svg); for a run on own data, .npy, .csv or .pt")
    p.add_argument("--temperature", type=POSITIVE_FLOAT, default=1.0, help="latent standard deviation scale")
    p.add_argument("--prior", choices=["standard", "fitted"], default="standard",
                   help="standard: N(0, T^2 I), the model's own prior; fitted: a Gaussian fitted to training latents")
    p.add_argument("--num", type=_bounded(10_000_000),
                   help="samples of an unconditional or single-class run (default 100, at most 10,000), "
                        f"or of a run on own data (default 1,000; rows × width at most {MAX_SAMPLE_VALUES:,})")
    p.add_argument("--per-row", type=_bounded(1_000), default=10, help="images per row (per class)")
    p.add_argument("--seed", type=SEED, default=0)
    _add_data_options(p)
    _add_device_option(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("interpolate", help="latent interpolation between test images")
    p.add_argument("run_dir", type=PATH)
    p.add_argument("--out", type=IMAGE_PATH, required=True, help="picture to write (.png, .pdf or .svg)")
    p.add_argument("--pairs", nargs="+", default=["0,1", "2,3", "4,5"], help="test-image index pairs A,B")
    p.add_argument("--steps", type=_number(int, lambda v: 2 <= v <= 1000, "an integer in 2..1,000"), default=10,
                   help="images per interpolation, both ends included (default 10)")
    _add_data_options(p)
    _add_device_option(p)
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("agreement", help="do samples show their class? (a classifier trained on real data judges)")
    p.add_argument("run_dir", type=PATH)
    p.add_argument("--temperatures", type=POSITIVE_FLOAT, nargs="+", default=[1.0, 0.7],
                   help="latent temperatures to judge (default 1.0 0.7)")
    p.add_argument("--num", type=_bounded(100_000), default=200, help="samples per class")
    p.add_argument("--json", type=PATH, help="also write the figures to this JSON file")
    _add_data_options(p)
    _add_device_option(p)
    p.set_defaults(func=cmd_agreement)

    p = sub.add_parser("ood", help="out-of-distribution detection: the run's test set against another data set's")
    p.add_argument("run_dir", type=PATH)
    p.add_argument("--against", required=True, choices=["mnist", "fashion-mnist"],
                   help="the data set whose test images are out-of-distribution")
    p.add_argument("--json", type=PATH, help="also write the figures to this JSON file")
    p.add_argument("--plot", type=IMAGE_PATH, help="histograms of every score, in and out of distribution (.png, .pdf, .svg)")
    p.add_argument("--limit", type=POSITIVE_INT, help="score the first N test images of each set only, for quick trials")
    _add_data_options(p)
    _add_device_option(p)
    p.set_defaults(func=cmd_ood)

    p = sub.add_parser("export", help="the run's best weights in one small file, for use in Python")
    p.add_argument("run_dir", type=PATH)
    p.add_argument("--out", type=PATH, required=True, help="file to write (e.g. model.pt)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("bench", help="LU-Net and RealNVP side by side (the paper's Table 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quick", action="store_true", help="project the epoch from the step time; small RealNVP batches on CPU")
    p.add_argument("--micro", action="store_true", help="LU-Net against the dense-GEMM limit (speed targets)")
    p.add_argument("--models", nargs="+", default=["lunet", "realnvp"], choices=["lunet", "realnvp"])
    p.add_argument("--json", type=PATH, help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler, a container that stops), raised where the command is so
    that it stops as on Ctrl-C: a file being written is left as it was, the last checkpoint kept."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _stop_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM raise :class:`Terminated`; returns what puts the previous handler back."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # only the main thread may set a handler; elsewhere SIGTERM keeps its own
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _interrupted(args: argparse.Namespace, what: str = "interrupted") -> str:
    """What to tell a user who stopped a command (``what`` happened): for training, where the last checkpoint is."""
    if args.command != "train":
        return what
    return f"{what}; {_kept(args)}"


def _kept(args: argparse.Namespace) -> str:
    """Where a stopped training's last checkpoint is, and how to go on."""
    if os.environ.get("RANK", "0") != "0" and not getattr(args, "per_class", False):
        return "process 0 of the run keeps its checkpoint; continue with --resume and the run's own options"
    run = RunFolder(args.out)
    kept = run.checkpoints()
    if not kept:
        return "no checkpoint had been written yet, so nothing was kept"
    if run.starts.checkpoint in kept:  # a 2-D run resumes its starts; its own file holds the chosen model only
        where = run.starts.checkpoint
    else:
        where = kept[0] if len(kept) == 1 else f"{run.path}/class-*/{run.checkpoint.name}"
    return f"the last checkpoint is kept in {where}; continue with --resume and the run's own options"


LOST_PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "Broken pipe")


def _is_lost_peer(exc: Exception) -> bool:
    """Whether ``exc`` is a collective operation failing because another process of the run is gone."""
    import torch.distributed as dist

    from lunet.experiments import distributed

    if not distributed.launched():
        return False
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in LOST_PEER_SIGNS)


def _is_training_divergence(exc: Exception) -> bool:
    # imported here: the training module imports torch, which the other commands may not need
    from lunet.experiments.train import TrainingDiverged

    return isinstance(exc, TrainingDiverged)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``lunet ...``; every failure prints one line on stderr and returns 2 (130 on Ctrl-C, 143 on SIGTERM).

    ``LUNET_DEBUG=1`` shows the traceback of an unexpected error.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its usage line and the problem (or the help)
        return exc.code if isinstance(exc.code, int) else 2
    restore_sigterm = _stop_on_sigterm()
    try:
        _default_to_recorded_data_dir(args)
        return args.func(args)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"lunet {args.command}: {_interrupted(args, 'stopped by SIGTERM' if terminated else 'interrupted')}",
              file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RunFolderBusy) as exc:
        print(f"lunet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"lunet {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Exception as exc:  # a failure nobody foresaw still gets one line, not a traceback
        if _is_training_divergence(exc):
            print(f"lunet {args.command}: error: {exc}", file=sys.stderr)
            return 2
        if args.command == "train" and _is_lost_peer(exc):
            print(f"lunet train (process {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE', '?')}): error: "
                  f"another process of the run stopped or cannot be reached ({str(exc).splitlines()[0][:160]}); "
                  f"{_kept(args)}", file=sys.stderr)
            return 2
        if os.environ.get("LUNET_DEBUG"):
            raise
        print(f"lunet {args.command}: error: {type(exc).__name__}: {exc} (set LUNET_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 2
    finally:
        restore_sigterm()


if __name__ == "__main__":
    sys.exit(main())
