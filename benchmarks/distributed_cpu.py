"""One process against two on this machine's CPUs: MNIST runs trained both ways, side by side.

    python benchmarks/distributed_cpu.py [--data-dir ../shared/data] [--limit 20000] [--epochs 5] [--json F]

The one process gets every core as threads; the two processes (torchrun, gloo) get half each.
Two kinds of run, each trained both ways with the image defaults (global batch 256):
an unconditional model the processes share (the first --limit training images), and a
per-class run whose ten models are dealt out over the processes (--limit / 10 images per class).
Printed: wall time of the whole command, training seconds per epoch (per class: summed over the
classes), final validation bits/dim (per class: the mean over the classes).
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


def train(out: Path, processes: int, args: argparse.Namespace, per_class: bool) -> dict:
    cores = os.cpu_count() or 1
    limit = args.limit // 10 if per_class else args.limit
    command = ["train", "--dataset", "mnist", "--data-dir", args.data_dir, "--out", str(out), "--limit", str(limit),
               "--epochs", str(args.epochs), "--no-progress", *(["--per-class"] if per_class else [])]
    if processes == 1:
        argv = [sys.executable, "-m", "lunet.cli", *command]
    else:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
                "-m", "lunet.cli", *command]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // processes))}
    start = time.perf_counter()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    folders = sorted(out.glob("class-*")) if per_class else [out]
    last = [[json.loads(line) for line in (f / "metrics.jsonl").read_text().splitlines()][-1] for f in folders]
    return {
        "run": "per_class" if per_class else "unconditional",
        "processes": processes,
        "threads_per_process": int(env["OMP_NUM_THREADS"]),
        "wall_seconds": wall,
        "train_seconds_per_epoch": sum(r["train_seconds"] / r["epoch"] for r in last),
        "final_val_bits_per_dim": sum(r["val_bits_per_dim"] for r in last) / len(last),
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
        for per_class in (False, True):
            for processes in (1, 2):
                results.append(train(Path(tmp) / f"p{processes}-{per_class}", processes, args, per_class))
    print(f"MNIST, {args.limit:,} training images ({args.limit // 10:,} per class for per-class runs), "
          f"{args.epochs} epochs, batch 256, {os.cpu_count()} CPU cores")
    print("run            processes  threads each  wall s  train s/epoch  final val bits/dim")
    for r in results:
        print(f"{r['run']:<13}  {r['processes']:>9}  {r['threads_per_process']:>12}  {r['wall_seconds']:>6.1f}  "
              f"{r['train_seconds_per_epoch']:>13.2f}  {r['final_val_bits_per_dim']:>18.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"limit": args.limit, "epochs": args.epochs, "cpu_cores": os.cpu_count(),
                                               "runs": results}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
