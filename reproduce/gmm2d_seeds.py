"""The 2-D mixture over seeds: `lunet train --dataset gmm2d --seed S` for each seed, as a user runs it.

    python reproduce/gmm2d_seeds.py                      # seeds 0-9, one run at a time
    python reproduce/gmm2d_seeds.py --seeds 0 1 --jobs 2 # two runs side by side (wall times then overlap)

Each run is the whole command in its own process (start-up, training, test NLL,
pictures), timed from outside. Prints the table of docs/gmm2d.md and writes
docs/results/gmm2d-seeds.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_seed(seed: int, runs: Path, extra: list[str]) -> dict:
    out = runs / f"gmm2d-seed-{seed}"
    command = [sys.executable, "-m", "lunet.cli", "train", "--dataset", "gmm2d", "--seed", str(seed),
               "--out", str(out), "--overwrite", "--no-progress", *extra]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    summary = json.loads((out / "summary.json").read_text())
    return {"seed": seed, "kl_nats": summary["kl_nats"], "test_nll_nats": summary["test_nll_nats"],
            "wall_seconds": wall, "train_seconds": summary["train_seconds"],
            "start_val_nll_nats": summary["start_val_nll_nats"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (default 1: honest wall times)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs")
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "gmm2d-seeds.json")
    args, extra = parser.parse_known_args()
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda s: run_seed(s, args.runs, extra), args.seeds))
    kls = [r["kl_nats"] for r in rows]
    print("| seed | " + " | ".join(str(r["seed"]) for r in rows) + " |")
    print("| --- |" + " --- |" * len(rows))
    print("| KL, nats | " + " | ".join(f"{k:.3f}" for k in kls) + " |")
    print("| wall time, s | " + " | ".join(f"{r['wall_seconds']:.0f}" for r in rows) + " |")
    print(f"median KL {statistics.median(kls):.3f} nats, maximum {max(kls):.3f} nats; "
          f"wall time {min(r['wall_seconds'] for r in rows):.0f}-{max(r['wall_seconds'] for r in rows):.0f} s "
          f"({args.jobs} run(s) at a time)")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"command": "lunet train --dataset gmm2d --seed S " + " ".join(extra),
                                     "jobs": args.jobs, "runs": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
