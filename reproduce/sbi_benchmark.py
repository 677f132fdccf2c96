"""LU-Net beside sbi's flows on four tasks of the SBI benchmark: one protocol, sbi's own training loop.

    python reproduce/sbi_benchmark.py --quick --out runs/sbi-quick.json             # about a minute: the pipeline
    python reproduce/sbi_benchmark.py --budgets 1000,10000 --out docs/results/sbi-cpu.json   # docs/sbi.md's tables
    python reproduce/sbi_benchmark.py --budgets 100000 --out docs/results/sbi-cpu.json --resume  # adds 10^5

sbi, zuko, nflows and scikit-learn come with `pip install .[sbi]`. The results file is rewritten
after each (budget, task, estimator); `--resume` keeps what it holds and runs the rest. Runs on one
thread (`--threads`), as the timings in docs/sbi.md were taken.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lunet.experiments.sbi.bench import ESTIMATORS, TASK_NAMES, Protocol, run_benchmark

# the quick form: every task and estimator, tiny budgets, two observations, short reference chains
QUICK = {"observations": 2, "posterior_samples": 1000, "max_epochs": 30, "mcmc_steps": (300, 200),
         "figure_samples": 100}


def _list(text: str, known: tuple[str, ...], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise SystemExit(f"unknown {what}: {', '.join(unknown) or text!r}; known: {', '.join(known)}")
    return names


def _budgets(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"budgets must be whole numbers of simulations separated by commas, got {text!r}") from None
    if not values or min(values) < 50:
        raise SystemExit(f"budgets must be at least 50 simulations, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="the results JSON")
    parser.add_argument("--budgets", default="1000,10000", help="simulation budgets, comma-separated")
    parser.add_argument("--tasks", default=",".join(TASK_NAMES), help="tasks, comma-separated")
    parser.add_argument("--estimators", default=",".join(ESTIMATORS), help="estimators, comma-separated")
    parser.add_argument("--resume", action="store_true", help="keep the runs the results file holds")
    parser.add_argument("--quick", action="store_true", help="the pipeline end to end in about a minute")
    parser.add_argument("--blocks", type=int, default=8, help="LU-Net's blocks")
    parser.add_argument("--hidden", type=int, default=64, help="width of LU-Net's two context layers")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: print the tables of --out and draw its figures into --figures")
    parser.add_argument("--figures", type=Path, default=None, help="folder of the posterior figures (--report)")
    args = parser.parse_args(argv)
    if args.report:
        import json

        from lunet.experiments.sbi.report import draw_posteriors, markdown_tables

        results = json.loads(args.out.read_text())
        print(markdown_tables(results))
        if args.figures is not None:
            args.figures.mkdir(parents=True, exist_ok=True)
            for path in draw_posteriors(results, args.figures):
                print(f"wrote {path}")
        return 0
    try:
        import sbi  # noqa: F401
        import sklearn  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"reproduce/sbi_benchmark.py needs the sbi extra: pip install '.[sbi]' ({exc})") from None
    import torch

    torch.set_num_threads(args.threads)
    budgets = _budgets("200" if args.quick and args.budgets == "1000,10000" else args.budgets)
    settings = dict(QUICK) if args.quick else {}
    protocol = Protocol(lunet_blocks=args.blocks, lunet_hidden=args.hidden, **settings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        run_benchmark(_list(args.tasks, TASK_NAMES, "tasks"), budgets, _list(args.estimators, ESTIMATORS, "estimators"),
                      protocol, args.out, resume=args.resume, log=lambda line: print(line, flush=True))
    except ValueError as exc:
        raise SystemExit(f"reproduce/sbi_benchmark.py: error: {exc}") from None
    print(f"done in {time.perf_counter() - start:.0f} s: {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
