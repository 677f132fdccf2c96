"""Variants of the spline LU-Net on one task of the SBI benchmark, under docs/sbi.md's protocol.

    python reproduce/sbi_variants.py --task slcp --budget 10000 --variant bins=16 --variant num_blocks=12

Each ``--variant`` is a set of ``lunet_nn`` arguments (``key=value`` pairs separated by commas; the
spline activation unless it says ``activation=leaky_softplus``), trained by sbi's NPE on the
benchmark's simulations and scored by C2ST against the benchmark's reference posteriors of the ten
observations, which are drawn once and kept in ``--cache`` (the SLCP chains take minutes).
"""

from __future__ import annotations

import argparse
import ast
import statistics
import time
from pathlib import Path

import torch

from lunet.experiments.sbi.bench import TASK_NAMES, Protocol, evaluate, references, train_estimator
from lunet.experiments.sbi.tasks import get_task
from lunet.sbi import lunet_nn


def _variant(text: str) -> dict[str, object]:
    pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"--variant takes key=value pairs separated by commas, got {text!r}")
    return {key.strip(): (ast.literal_eval(value) if value[:1].isdigit() else value) for key, value in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", choices=TASK_NAMES, required=True)
    parser.add_argument("--budget", type=int, required=True, help="simulations")
    parser.add_argument("--variant", action="append", required=True, help="lunet_nn arguments, e.g. bins=16")
    parser.add_argument("--cache", type=Path, help="reference draws kept here (default runs/sbi-refs-TASK.pt)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    task, protocol = get_task(args.task), Protocol()
    theta_o, x_o = task.observations(protocol.observations)
    cache = args.cache or Path("runs") / f"sbi-refs-{args.task}.pt"
    if cache.exists():
        refs = torch.load(cache, weights_only=True)
    else:
        refs = references(task, protocol, x_o)
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(refs, cache)
    for text in args.variant:
        kwargs = _variant(text)
        start = time.perf_counter()
        posterior, record = train_estimator(task, args.budget, lunet_nn(**kwargs), protocol)
        row = evaluate(task, posterior, protocol, theta_o, x_o, refs)
        timed = [s for s in row["sample_s"] if s is not None]
        print(f"[{args.task}] {args.budget} {text}: C2ST {row['c2st_mean']:.3f}, trained {record['train_s']:.1f} s "
              f"({record['epochs']} epochs, {record['parameters']:,} parameters), 10k draws "
              f"{statistics.mean(timed) * 1e3:.1f} ms ({time.perf_counter() - start:.0f} s in all)", flush=True)


if __name__ == "__main__":
    main()
