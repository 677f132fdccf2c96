"""LU-Net beside zuko's MAF, RealNVP and NSF: one protocol, equal wall-clock budgets, one process.

    python reproduce/peers.py --quick --data-dir ../shared/data          # a few minutes: the pipeline end to end
    python reproduce/peers.py --data-dir ../shared/data \\
        --out docs/results/peers-cpu.json --figures docs/figures           # the full run: hours (docs/peers.md)
    python reproduce/peers.py --schedule cosine ...                        # the scheduled form: a run per budget

zuko and scikit-learn come with `pip install .[peers]`. The full run refuses to start without
them; the quick form leaves out what is missing and says so. The results file is rewritten after
each (data set, model); `--resume` keeps what a killed run had measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Optional

from lunet.experiments.benchmarks.peers import (
    DATASETS,
    DEFAULT_BUDGETS,
    QUICK_BUDGETS,
    QUICK_DATASETS,
    SCHEDULES,
    Protocol,
    combine_results,
    draw_figures,
    markdown_tables,
    missing_extras,
    run_peers,
)
from lunet.experiments.benchmarks.peers.models import MODELS, PEERS_EXTRA
from lunet.experiments.files.atomic import write_text_atomic
from lunet.experiments.files.safe import read_text
from lunet.experiments.store.folder import check_output

ROOT = Path(__file__).resolve().parents[1]
# the quick form: one call per timing, a short sampling cap
QUICK_PROTOCOL = {"speed_repeats": 1, "sample_cap_s": 5.0}


def _names(text: str, known: tuple[str, ...] | list[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def _seconds(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"budgets must be seconds separated by commas, got {text!r}") from None
    if not values or min(values) <= 0:
        raise SystemExit(f"budgets must be positive seconds, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"subsets, budgets {QUICK_BUDGETS['images']} s (images) and {QUICK_BUDGETS['vectors']} s "
                             f"(vectors), data sets {','.join(QUICK_DATASETS)}, the installed models")
    parser.add_argument("--datasets", help=f"comma-separated, of {','.join(DATASETS)} (default: all; quick: "
                                           f"{','.join(QUICK_DATASETS)})")
    parser.add_argument("--models", help=f"comma-separated, of {','.join(MODELS)} (default: all)")
    parser.add_argument("--budgets", help=f"training seconds on images (default {DEFAULT_BUDGETS['images']})")
    parser.add_argument("--vector-budgets",
                        help="training seconds on the 2-D mixture and the vectors "
                             f"(default {DEFAULT_BUDGETS['vectors']})")
    parser.add_argument("--data-dir", help="where MNIST and Fashion-MNIST lie (as for `lunet train`)")
    parser.add_argument("--out", type=Path, help="results JSON (default runs/peers[-quick]/results.json)")
    parser.add_argument("--figures", type=Path, help="folder of the pictures (default: beside --out)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation, batch order and noise (default 0)")
    parser.add_argument("--warmup-steps", type=int, default=0,
                        help="the learning rate rises linearly over this many steps, for every model (default 0)")
    parser.add_argument("--schedule", choices=list(SCHEDULES), default="constant",
                        help="constant: one run per model at one rate, marked at each budget; cosine: one run per "
                             "model and budget, the rate falling to zero at the budget (default constant)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--sample-cap", type=float, help="seconds a sampling measurement may take, projected "
                                                         "(default 120; quick 5)")
    parser.add_argument("--resume", action="store_true", help="keep the (data set, model) pairs --out already holds")
    parser.add_argument("--combine", nargs="+", type=Path, metavar="RESULTS",
                        help="measure nothing: join results files of runs under one protocol on one machine into "
                             "--out, and draw their pictures and tables")
    args = parser.parse_args(argv)
    if args.combine:
        return _combine(args.combine, args.out, args.figures)

    datasets = _names(args.datasets, DATASETS, "data sets") if args.datasets else list(
        QUICK_DATASETS if args.quick else DATASETS)
    models = _names(args.models, list(MODELS), "models") if args.models else list(MODELS)
    budgets = dict(QUICK_BUDGETS if args.quick else DEFAULT_BUDGETS)
    if args.budgets:
        budgets["images"] = _seconds(args.budgets)
    if args.vector_budgets:
        budgets["vectors"] = _seconds(args.vector_budgets)
    missing = missing_extras(models, datasets)
    if missing:
        if not args.quick:
            raise SystemExit(f"{', '.join(missing)} need(s) the peers extra: {PEERS_EXTRA}")
        print(f"quick form without {', '.join(missing)}: not installed ({PEERS_EXTRA})")
        models = [m for m in models if m not in missing]
        datasets = [d for d in datasets if d not in missing]
    overrides = dict(QUICK_PROTOCOL) if args.quick else {}
    if args.sample_cap is not None:
        overrides["sample_cap_s"] = args.sample_cap
    protocol = dataclasses.replace(Protocol(seed=args.seed, device=args.device, warmup_steps=args.warmup_steps,
                                            schedule=args.schedule), **overrides)
    name = ("peers-quick" if args.quick else "peers") + ("-scheduled" if args.schedule == "cosine" else "")
    out = args.out or ROOT / "runs" / name / "results.json"
    figures = args.figures or out.parent
    start = time.perf_counter()
    try:
        doc = run_peers(datasets, models, budgets, protocol, out=out, figures=figures, data_dir=args.data_dir,
                        quick=args.quick, resume=args.resume,
                        command="python reproduce/peers.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    except (ValueError, OSError) as exc:  # an output refused, data not found: one line, as lunet's commands say it
        return _failed(exc)
    print()
    print(markdown_tables(doc))
    print(f"\nwall time {time.perf_counter() - start:.0f} s; wrote {out} and the pictures in {figures}")
    return 0


def _failed(exc: BaseException) -> int:
    """One line on stderr for a failure, the exit status 2."""
    print(f"reproduce/peers.py: error: {exc}", file=sys.stderr)
    return 2


def _combine(files: list[Path], out: Optional[Path], figures: Optional[Path]) -> int:
    if out is None:
        raise SystemExit("--combine needs --out, the combined results file")
    try:
        check_output(out, "--out", inputs=[(f, "a results file given to --combine") for f in files])
        docs = [json.loads(read_text(f)) for f in files]
        doc = combine_results(docs, [str(f) for f in files])
    except (OSError, ValueError) as exc:
        raise SystemExit(f"--combine: {exc}") from None
    figures = figures or out.parent
    try:
        for dname, d in doc["datasets"].items():  # every picture checked before any is written
            for picture in ("curves", "samples") if d.get("kind") == "images" else ("curves",):
                check_output(figures / f"peers-{dname}-{picture}.png", "--figures")
        write_text_atomic(out, json.dumps(doc, indent=1) + "\n")
        for dname, d in doc["datasets"].items():
            side = math.isqrt(d["features"]) if d.get("kind") == "images" else 0
            draw_figures(doc, dname, figures, (side, side) if side * side == d.get("features") else None)
    except (OSError, ValueError) as exc:
        return _failed(exc)
    print(markdown_tables(doc))
    print(f"\nwrote {out} and the pictures in {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
