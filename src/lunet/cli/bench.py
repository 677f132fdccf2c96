"""``lunet bench``: LU-Net and RealNVP side by side (the paper's Table 1), or the micro benchmark."""

from __future__ import annotations

import argparse
from typing import Any

from lunet.cli.options import PATH, write_json
from lunet.cli.runs import check_outputs

__all__ = ["cmd_bench", "add_parser"]


def cmd_bench(args: argparse.Namespace) -> int:
    check_outputs(args)
    from lunet.experiments.benchmarks.bench import markdown_table, run_bench
    from lunet.experiments.benchmarks.micro import micro_table, run_micro

    if args.micro:
        result = run_micro(device=args.device)
        print(f"device: {result['device']} ({result['threads']} threads)")
        print(micro_table(result))
    else:
        result = run_bench(device=args.device, quick=args.quick, models=tuple(args.models))
        print(f"device: {result['device']}, torch {result['torch']}, {'quick' if args.quick else 'full'} mode")
        print(markdown_table(result))
    write_json(args.json, result)
    return 0


def add_parser(sub: Any) -> None:
    """The parser of ``lunet bench`` under the ``lunet`` parser's sub-parsers ``sub``."""
    p = sub.add_parser("bench", help="LU-Net and RealNVP side by side (the paper's Table 1)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--quick", action="store_true",
                   help="project the epoch from the step time; small RealNVP batches on CPU")
    p.add_argument("--micro", action="store_true", help="LU-Net against the dense-GEMM limit (speed targets)")
    p.add_argument("--models", nargs="+", default=["lunet", "realnvp"], choices=["lunet", "realnvp"])
    p.add_argument("--json", type=PATH, help="also write the figures to this JSON file")
    p.set_defaults(func=cmd_bench)
