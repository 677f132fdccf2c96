"""How long the command line takes to answer --help and --version, beside importing torch.

    python benchmarks/cli_startup.py [--rounds 5]

Each figure is the median wall time of a fresh interpreter running the command.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "lunet --help": [sys.executable, "-m", "lunet.cli", "--help"],
    "lunet train --help": [sys.executable, "-m", "lunet.cli", "train", "--help"],
    "lunet --version": [sys.executable, "-m", "lunet.cli", "--version"],
    "python -c 'import torch' (for scale)": [sys.executable, "-c", "import torch"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):  # interleaved, so that drift affects every command alike
        for name, command in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            times[name].append(time.perf_counter() - start)
    print("| command | median wall time, s |")
    print("| --- | --- |")
    for name, values in times.items():
        print(f"| `{name}` | {statistics.median(values):.3f} |")


if __name__ == "__main__":
    main()
