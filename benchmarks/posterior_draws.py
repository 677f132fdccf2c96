"""10,000 draws of a conditional spline LU-Net under one context, as posterior sampling in
simulation-based inference makes them: one or more source trees side by side.

    python benchmarks/posterior_draws.py [SRC ...] [--rounds 2]

Each tree (default: this checkout's src) runs in a child process, the trees alternated over
rounds, one torch thread: ``ConditionalLUNet(D, D, 8, hidden=64, activation="spline")`` with its
context network away from its zero start, ``sample(10_000, c)`` for D = 2 and 10, the median of
7 calls in milliseconds. Pin it to a quiet core (taskset)."""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, statistics, sys, time, torch
torch.set_num_threads(1)
from lunet import ConditionalLUNet
torch.manual_seed(0)
out = {}
for d in (2, 10):
    flow = ConditionalLUNet(d, d, 8, hidden=64, activation="spline")
    with torch.no_grad():
        flow.conditioner[-1].weight.normal_(0, 0.3)
        flow.conditioner[-1].bias.normal_(0, 0.3)
    c = torch.randn(d)
    flow.sample(10_000, c)
    times = []
    for _ in range(7):
        start = time.perf_counter()
        flow.sample(10_000, c)
        times.append(time.perf_counter() - start)
    out[d] = statistics.median(times) * 1e3
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", default=[str(Path(__file__).resolve().parents[1] / "src")])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    times: dict[str, dict[str, list[float]]] = {tree: {} for tree in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            run = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True,
                                 env={"PYTHONPATH": tree, "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
            for d, ms in json.loads(run.stdout).items():
                times[tree].setdefault(d, []).append(ms)
    for tree, by_width in times.items():
        cells = ", ".join(f"D = {d}: {statistics.median(v):.2f} ms" for d, v in by_width.items())
        print(f"{tree}: 10,000 draws, {cells}")


if __name__ == "__main__":
    main()
