"""One process against two on this machine's CPUs: an MNIST run trained both ways, side by side.

    python benchmarks/distributed_cpu.py [--data-dir ../shared/data] [--limit 20000] [--epochs 5] [--json F]

The one process gets every core as threads; the two processes (torchrun, gloo) get half each.
Both train the same recipe (`lunet train --dataset mnist`, the image defaults, global batch 256);
printed: wall time of the whole command, training time per epoch, final validation bits/dim.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def train(out: Path, processes: int, args: argparse.Namespace) -> dict:
    cores = os.cpu_count() or 1
    command = ["train", "--dataset", "mnist", "--data-dir", args.data_dir, "--out", str(out), "--limit", str(args.limit),
               "--epochs", str(args.epochs), "--no-progress"]
    if processes == 1:
        argv = [sys.executable, "-m", "lunet.cli", *command]
    else:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                "-m", "lunet.cli", *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // processes))}
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "processes": processes,
        "threads_per_process": int(env["OMP_NUM_THREADS"]),
        "wall_seconds": wall,
        "train_seconds_per_epoch": rows[-1]["train_seconds"] / rows[-1]["epoch"],
        "final_val_bits_per_dim": rows[-1]["val_bits_per_dim"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--limit", type=int, default=20000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for processes in (1, 2):
            results.append(train(Path(tmp) / f"p{processes}", processes, args))
    print(f"MNIST, first {args.limit:,} training images, {args.epochs} epochs, batch 256, {os.cpu_count()} CPU cores")
    print("processes  threads each  wall s  train s/epoch  final val bits/dim")
    for r in results:
        print(f"{r['processes']:>9}  {r['threads_per_process']:>12}  {r['wall_seconds']:>6.1f}  "
              f"{r['train_seconds_per_epoch']:>13.2f}  {r['final_val_bits_per_dim']:>18.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"limit": args.limit, "epochs": args.epochs, "cpu_cores": os.cpu_count(),
                                               "runs": results}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
