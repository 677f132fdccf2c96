"""The commands on a trained run: ``lunet evaluate | sample | interpolate | agreement | ood | export``.

Each reads the run's record to learn its kind (:mod:`lunet.experiments.store.record`) and
leaves the work to the experiment side; ``evaluate`` and ``sample`` hand it to the handler of
that kind (:func:`by_kind`). Here are the options, the checks of the outputs before any work,
and what is printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from lunet.cli.options import (
    IMAGE_PATH,
    IMAGE_SUFFIXES,
    PATH,
    POSITIVE_FLOAT,
    POSITIVE_INT,
    SEED,
    add_data_options,
    add_device_option,
    bounded,
    number,
    refuse_given,
    suffix_problem,
    write_json,
)
from lunet.experiments.config.presets import IMAGES, MAX_SAMPLE_VALUES, VECTORS
from lunet.experiments.store.folder import RunFolder, check_output

__all__ = ["open_run", "check_outputs", "by_kind", "cmd_evaluate", "cmd_sample", "cmd_interpolate", "cmd_agreement",
           "cmd_ood", "cmd_export", "add_parsers"]


def open_run(args: argparse.Namespace) -> None:
    """The run folder of a command on a run (``args.run``), and its data from where its training
    found them unless ``--data-dir`` says."""
    args.run = RunFolder(args.run_dir)
    if getattr(args, "data_dir", "") is None:
        from lunet.experiments.config.presets import IMAGES
        from lunet.experiments.store.record import recorded_data

        try:
            found = recorded_data(args.run, IMAGES)
        except ValueError:  # run.json is no regular file: the command names it
            found = None
        args.data_dir = found if found is not None and Path(found).is_dir() else None
        args.data_dir_from_run = args.data_dir is not None


def check_outputs(args: argparse.Namespace) -> None:
    """Fail before the work, not after it, when an output file (``--out``, ``--json``, ``--plot``,
    ``--per-row``) cannot be written, or would replace one of the run's own files, a file the command
    reads, a data set's file or a file in any run folder (:func:`~lunet.experiments.store.folder.check_output`)."""
    # (dest, option): evaluate's --per-row is a file, sample's an image count
    named = (("out", "--out"), ("json", "--json"), ("plot", "--plot"), ("row_scores", "--per-row"))
    given = [(option, getattr(args, dest, None)) for dest, option in named]
    outputs = [(name, path) for name, path in given if path]
    if not outputs:
        return
    from lunet.experiments.data.mnist import data_files

    run = getattr(args, "run", None)
    inputs = [(getattr(args, "data", None), "the --data file this command reads"),
              (getattr(args, "context", None), "the --context file this command reads")]
    data_dirs = [getattr(args, "data_dir", None)]
    if run is not None:
        from lunet.experiments.config.presets import IMAGES, VECTORS
        from lunet.experiments.store.record import recorded_data

        inputs.append((recorded_data(run, VECTORS), "the run's training data"))
        inputs.append((recorded_data(run, VECTORS, "context_file"), "the run's training contexts"))
        found = recorded_data(run, IMAGES)
        if found is not None:  # the data set's folder, and the folder beside it where ood looks for the other
            data_dirs += [found, str(Path(found).parent)]
    for data_dir in dict.fromkeys(data_dirs):
        inputs += data_files(data_dir)
    for name, path in outputs:
        check_output(path, name, run, [(p, what) for p, what in inputs if p])


def by_kind(handlers: dict[str, Callable[[argparse.Namespace], int]]) -> Callable[[argparse.Namespace], int]:
    """A command on a run that hands ``args`` to the handler of the kind its run record holds
    (``handlers``: kind of run -> handler), after the check of its outputs."""
    def command(args: argparse.Namespace) -> int:
        check_outputs(args)
        from lunet.experiments.store.record import read_run

        return handlers[read_run(args.run, tuple(handlers)).kind](args)

    return command


def _evaluate_images(args: argparse.Namespace) -> int:
    refuse_given(args, ("data", "context"), "runs on own data (trained with --data)")
    if args.row_scores is not None:
        raise ValueError("--per-row applies to runs on own data (trained with --data)")
    from lunet.experiments.evaluation.evaluate import evaluate_run

    result = evaluate_run(args.run, draws=args.draws, data_dir=args.data_dir, verify=not args.no_verify,
                          limit=args.limit, device=args.device)
    print(
        f"{result['dataset']} ({result['kind']}): "
        f"{result['bits_per_dim']:.4f} ± {result['bits_per_dim_std_over_draws']:.4f} "
        f"bits/dim on {result['num_test_images']} test images "
        f"({args.draws} dequantisation draws, λ = {result['lam']:g})"
    )
    print("  paper convention (logit-space bits/dim − 0.5, not comparable to the above): "
          f"{result['paper_bits_per_pixel']:.4f}")
    for c, r in result.get("per_class", {}).items():
        print(f"  class {c}: {r['bits_per_dim']:.4f} bits/dim, paper convention {r['paper_bits_per_pixel']:.4f}")
    if "bayes_classifier_accuracy" in result:
        print(f"  Bayes classifier argmax_c log p(x|c): {100 * result['bayes_classifier_accuracy']:.2f}% test accuracy")
        print(f"  marginalised over the classes, log p(x) = logsumexp_c log p(x|c) - log 10: "
              f"{result['bits_per_dim_marginal']:.4f} bits/dim (one dequantisation draw)")
    write_json(args.json, result)
    return 0


def _evaluate_vectors(args: argparse.Namespace) -> int:
    from lunet.experiments.data.rows import VECTOR_SUFFIXES, load_vectors, save_vectors
    from lunet.experiments.runs.vector_run import evaluate_vectors

    refuse_given(args, ("limit", "data_dir", "no_verify"), "image runs, not to a run on own data")
    if args.data is None:
        raise ValueError(f"{args.run_dir} is a run on own data: name the test file with --data FILE")
    if args.row_scores is not None:
        problem = suffix_problem(args.row_scores, VECTOR_SUFFIXES)
        if problem:
            raise ValueError(f"--per-row {problem}")
    context = None if args.context is None else load_vectors(args.context, min_rows=1)
    result = evaluate_vectors(args.run, load_vectors(args.data, min_rows=1), device=args.device, name=args.data,
                              keep_rows=args.row_scores is not None, context=context, context_name=args.context)
    given = "" if context is None else f" given {args.context}"
    print(f"{args.data}{given}: test NLL {result['nll_nats_per_dim']:.4f} nats/dim "
          f"({result['nll_nats_per_vector']:.4f} nats per vector of width {result['features']}) on "
          f"{result['num_vectors']:,} "
          f"vector{'' if result['num_vectors'] == 1 else 's'}")
    if "comparison" in result:
        print(f"  {result['comparison']}")
    rows = result.pop("log_prob", None)
    if rows is not None:
        what = "log p(x)" if context is None else "log p(x | c)"
        print(f"wrote {save_vectors(rows.unsqueeze(1), args.row_scores, header=['log_prob_nats'])} ({what} of each "
              f"row in nats, in the file's order)")
    files = {"data_file": str(Path(args.data).resolve())}
    if context is not None:
        files["context_file"] = str(Path(args.context).resolve())
    write_json(args.json, {**files, **result})
    return 0


def _sample_images(args: argparse.Namespace) -> int:
    refuse_given(args, ("context",), "runs on own data (trained with --data and --context)")
    problem = suffix_problem(args.out, IMAGE_SUFFIXES)
    if problem:
        raise ValueError(f"--out for an image run {problem}")
    if args.num is not None and args.num > 10_000:
        raise ValueError(f"--num for an image run is at most 10,000 (one picture), got {args.num:,}")
    from lunet.experiments.plots import save_image_grid
    from lunet.experiments.runs.images import sample_grid

    settings, imgs, labels = sample_grid(args.run, args.num, args.per_row, args.temperature, args.prior, args.seed,
                                         data_dir=args.data_dir, verify=not args.no_verify, device=args.device)
    title = (f"{settings.dataset} {settings.kind.replace('_', '-')} samples, "
             f"prior {args.prior}, T = {args.temperature:g}")
    save_image_grid(imgs, args.out, nrow=args.per_row, row_labels=labels, title=title)
    print(f"wrote {args.out}")
    return 0


def _sample_vectors(args: argparse.Namespace) -> int:
    from lunet.experiments.data.rows import VECTOR_SUFFIXES, load_vectors, save_vectors
    from lunet.experiments.runs.vector_report import describe_samples
    from lunet.experiments.runs.vector_run import check_sample_count, load_vector_run, read_run_file

    refuse_given(args, ("data_dir", "no_verify"), "image runs, not to a run on own data")
    if args.prior != "standard" or args.per_row != 10:
        raise ValueError("--prior and --per-row apply to image runs, not to a run on own data")
    problem = suffix_problem(args.out, VECTOR_SUFFIXES)
    if problem:
        raise ValueError(f"--out for a run on own data {problem}")
    settings = read_run_file(args.run)
    context = None
    if args.context is not None:
        context = load_vectors(args.context, min_rows=1)
    elif settings.context is not None:
        raise ValueError(f"{args.run_dir} models p(x | c): give the contexts to sample under with --context FILE "
                         f"(--num samples under each of its rows)")
    num = args.num or (1000 if context is None else 1)
    check_sample_count(num, settings.features, 1 if context is None else context.shape[0])  # before the checkpoint
    loaded = load_vector_run(args.run, device=args.device)
    samples = loaded.sample(num, args.temperature, args.seed, context, args.context)
    under = "" if context is None else f", {num:,} under each of the {context.shape[0]:,} rows of {args.context}"
    print(f"wrote {save_vectors(samples, args.out, header=loaded.columns.names)} ({samples.shape[0]:,} samples of "
          f"width {samples.shape[1]}{under})")
    report = loaded.sample_report(samples)
    if report is not None:
        print(f"  {describe_samples(report)}")
    return 0


# the kinds of run each command takes, by the kind their record holds
cmd_evaluate = by_kind({IMAGES: _evaluate_images, VECTORS: _evaluate_vectors})
cmd_sample = by_kind({IMAGES: _sample_images, VECTORS: _sample_vectors})


def cmd_interpolate(args: argparse.Namespace) -> int:
    check_outputs(args)
    from lunet.experiments.plots import save_image_grid
    from lunet.experiments.runs.images import interpolate

    try:
        pairs = [(int(a), int(b)) for a, b in (p.split(",") for p in args.pairs)]
    except ValueError:
        raise ValueError(f"--pairs takes index pairs written A,B, got {args.pairs}") from None
    frames = interpolate(args.run, pairs, args.steps, data_dir=args.data_dir, verify=not args.no_verify,
                         device=args.device)
    save_image_grid(frames, args.out, nrow=args.steps, title="latent interpolation between test images")
    print(f"wrote {args.out}")
    return 0


def cmd_agreement(args: argparse.Namespace) -> int:
    check_outputs(args)
    from lunet.experiments.evaluation.evaluate import class_agreement, train_classifier
    from lunet.experiments.runs.images import load_run_models, read_run_file

    settings = read_run_file(args.run)
    if settings.kind == "unconditional":
        raise ValueError(
            "class agreement needs a per-class or single-class run (trained with --per-class or --class K)"
        )
    if len(set(args.temperatures)) != len(args.temperatures):
        raise ValueError(f"--temperatures lists a value twice: {args.temperatures}")
    load_run_models(args.run, device=args.device)  # a bad checkpoint or device fails now, not after the judge
    clf, acc = train_classifier(settings.dataset, data_dir=args.data_dir, verify=not args.no_verify)
    print(f"judge: MLP trained on the real {settings.dataset} training set, {100 * acc:.2f}% test accuracy")
    result = class_agreement(args.run, clf, temperatures=tuple(args.temperatures), num_samples=args.num,
                             data_dir=args.data_dir, verify=not args.no_verify, device=args.device)
    for key, r in result.items():
        print(f"  {key}: {100 * r['mean']:.1f}% of samples assigned to their class "
              + " ".join(f"{c}:{100 * v:.0f}" for c, v in r["per_class"].items()))
    write_json(args.json, {"judge_test_accuracy": acc, "agreement": result})
    return 0


def cmd_ood(args: argparse.Namespace) -> int:
    check_outputs(args)
    from lunet.experiments.evaluation.ood import ood_run

    # The recorded folder holds the run's own data set; the other one is looked for beside it.
    against_dir = str(Path(args.data_dir).parent) if getattr(args, "data_dir_from_run", False) else args.data_dir
    report, scores = ood_run(args.run, args.against, data_dir=args.data_dir, against_data_dir=against_dir,
                             verify=not args.no_verify, limit=args.limit, device=args.device)
    print(f"{report['dataset']} ({report['kind']}) test set ({report['num_in']:,} images, in-distribution) against "
          f"{args.against} test set ({report['num_out']:,}, out-of-distribution); "
          "higher score = more out-of-distribution")
    width = max(len(label) for label in report["scores"].values())
    print(f"  {'model':<26}{'score':<{width + 2}}{'AUROC':>7}{'AUPR':>7}{'FPR@95':>8}")
    for model in report["models"].values():
        for name, m in model["metrics"].items():
            print(f"  {model['label']:<26}{report['scores'][name]:<{width + 2}}"
                  f"{m['auroc']:>7.3f}{m['aupr']:>7.3f}{m['fpr_at_95_tpr']:>8.3f}")
    print("  (AUROC 0.5: no better than chance; below 0.5: the score ranks the other data set as more typical)")
    write_json(args.json, report)
    if args.plot:
        from lunet.experiments.plots import plot_score_histograms

        print(f"wrote {plot_score_histograms(scores, report, args.plot)}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    check_outputs(args)
    from lunet.experiments.runs.export import export_run

    path = export_run(args.run, args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); load it with "
          f"lunet.experiments.store.checkpoint.load_model({str(path)!r})")
    return 0


def add_parsers(sub: Any) -> None:
    """The parsers of the commands on a run, under the ``lunet`` parser's sub-parsers ``sub``."""
    p = sub.add_parser("evaluate", help="test-set bits/dim of an image run; test NLL of a run on own data")
    p.add_argument("run_dir", type=PATH)
    p.add_argument("--data", type=PATH, metavar="FILE", help="a run on own data: the test file (.npy, .csv or .pt)")
    p.add_argument("--context", type=PATH, metavar="FILE",
                   help="a run of p(x | c) on own data: the test rows' contexts, one row per row of --data")
    p.add_argument("--json", type=PATH, help="also write the figures to this JSON file")
    p.add_argument("--per-row", type=PATH, metavar="FILE", dest="row_scores",
                   help="a run on own data: also write each row's log p(x) in nats to FILE (.npy, .csv or .pt), "
                        "for anomaly scores")
    p.add_argument("--draws", type=POSITIVE_INT, default=3, help="dequantisation draws (default 3)")
    p.add_argument("--limit", type=POSITIVE_INT, help="evaluate on the first N test images only, for quick trials")
    add_data_options(p)
    add_device_option(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("sample", help="a PNG grid of samples (one row per class for per-class runs); "
                                      "for a run on own data, a file of samples")
    p.add_argument("run_dir", type=PATH)
    p.add_argument("--out", type=PATH, required=True,
                   help="picture to write (.png, .pdf or .svg); for a run on own data, .npy, .csv or .pt")
    p.add_argument("--temperature", type=POSITIVE_FLOAT, default=1.0, help="latent standard deviation scale")
    p.add_argument("--prior", choices=["standard", "fitted"], default="standard",
                   help="standard: N(0, T^2 I), the model's own prior; fitted: a Gaussian fitted to training latents")
    p.add_argument("--num", type=bounded(10_000_000),
                   help="samples of an unconditional or single-class run (default 100, at most 10,000), "
                        f"or of a run on own data (default 1,000; rows × width at most {MAX_SAMPLE_VALUES:,}); "
                        "with --context, samples under each context row (default 1)")
    p.add_argument("--context", type=PATH, metavar="FILE",
                   help="a run of p(x | c) on own data: the contexts to sample under (.npy, .csv or .pt), one per "
                        "row; the output holds --num rows for each, context by context")
    p.add_argument("--per-row", type=bounded(1_000), default=10, help="images per row (per class)")
    p.add_argument("--seed", type=SEED, default=0)
    add_data_options(p)
    add_device_option(p)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("interpolate", help="latent interpolation between test images")
    p.add_argument("run_dir", type=PATH)
    p.add_argument("--out", type=IMAGE_PATH, required=True, help="picture to write (.png, .pdf or .svg)")
    p.add_argument("--pairs", nargs="+", default=["0,1", "2,3", "4,5"], help="test-image index pairs A,B")
    p.add_argument("--steps", type=number(int, lambda v: 2 <= v <= 1000, "an integer in 2..1,000"), default=10,
                   help="images per interpolation, both ends included (default 10)")
    add_data_options(p)
    add_device_option(p)
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser("agreement", help="do samples show their class? (a classifier trained on real data judges)")
    p.add_argument("run_dir", type=PATH)
    p.add_argument("--temperatures", type=POSITIVE_FLOAT, nargs="+", default=[1.0, 0.7],
                   help="latent temperatures to judge (default 1.0 0.7)")
    p.add_argument("--num", type=bounded(100_000), default=200, help="samples per class")
    p.add_argument("--json", type=PATH, help="also write the figures to this JSON file")
    add_data_options(p)
    add_device_option(p)
    p.set_defaults(func=cmd_agreement)

    p = sub.add_parser("ood", help="out-of-distribution detection: the run's test set against another data set's")
    p.add_argument("run_dir", type=PATH)
    p.add_argument("--against", required=True, choices=["mnist", "fashion-mnist"],
                   help="the data set whose test images are out-of-distribution")
    p.add_argument("--json", type=PATH, help="also write the figures to this JSON file")
    p.add_argument("--plot", type=IMAGE_PATH,
                   help="histograms of every score, in and out of distribution (.png, .pdf, .svg)")
    p.add_argument("--limit", type=POSITIVE_INT,
                   help="score the first N test images of each set only, for quick trials")
    add_data_options(p)
    add_device_option(p)
    p.set_defaults(func=cmd_ood)

    p = sub.add_parser("export", help="the run's best weights in one small file, for use in Python")
    p.add_argument("run_dir", type=PATH)
    p.add_argument("--out", type=PATH, required=True, help="file to write (e.g. model.pt)")
    p.set_defaults(func=cmd_export)
