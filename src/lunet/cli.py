"""The ``lunet`` command line: ``lunet train | evaluate | sample | bench``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Optional, Sequence

from lunet.train import TrainConfig, TrainingDiverged


def _add_train_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimisation (defaults depend on --dataset)")
    g.add_argument("--epochs", type=int, help="epochs to train")
    g.add_argument("--batch-size", type=int, help="training batch size")
    g.add_argument("--lr", type=float, help="peak Adam learning rate")
    g.add_argument("--weight-decay", type=float, help="Adam weight decay")
    g.add_argument("--schedule", choices=["cosine", "constant"], help="learning-rate schedule")
    g.add_argument("--warmup-steps", type=int, help="linear warm-up steps")
    g.add_argument("--grad-clip", type=float, help="clip the gradient norm to this value")
    g.add_argument("--seed", type=int, help="seed for initialisation, shuffling and noise")
    g.add_argument("--device", help="cpu or cuda")
    g.add_argument("--dtype", choices=["float32", "float64"], help="training precision")
    g.add_argument("--checkpoint-every", type=int, help="epochs between checkpoints")
    g.add_argument("--log-every", type=int, help="epochs between printed lines")
    g.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    g.add_argument("--no-progress", action="store_true", help="no progress bar or per-epoch lines")


def _train_config(args: argparse.Namespace, defaults: TrainConfig) -> TrainConfig:
    values = dataclasses.asdict(defaults)
    for name in values:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    return TrainConfig(**values)


def cmd_train(args: argparse.Namespace) -> int:
    if args.dataset == "gmm2d":
        from lunet import gmm2d

        settings = gmm2d.GMM2DSettings(
            num_blocks=args.blocks or gmm2d.GMM2DSettings.num_blocks,
            alpha=args.alpha if args.alpha is not None else gmm2d.GMM2DSettings.alpha,
            diag=args.diag or gmm2d.GMM2DSettings.diag,
        )
        config = _train_config(args, gmm2d.default_train_config())
        summary = gmm2d.run(args.out, settings, config, resume=args.resume, progress=not args.no_progress)
        print(
            f"gmm2d: test NLL {summary['test_nll_nats']:.4f} nats, mixture entropy "
            f"{summary['entropy_nats']:.4f} nats, KL {summary['kl_nats']:.4f} nats "
            f"({summary['epochs']} epochs, {summary['train_seconds']:.1f}s training)"
        )
        print(f"wrote {args.out}/density.png, {args.out}/samples.png, {args.out}/summary.json")
        return 0
    raise SystemExit(f"unknown dataset {args.dataset!r}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lunet", description="LU-Net: invertible networks and normalizing flows from LU factorisation"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a flow by maximum likelihood")
    p.add_argument("--dataset", default="gmm2d", choices=["gmm2d"], help="data set (default: gmm2d, needs no files)")
    p.add_argument("--out", required=True, help="run directory for checkpoint, logs and pictures")
    m = p.add_argument_group("model")
    m.add_argument("--blocks", type=int, help="number of LU blocks")
    m.add_argument("--alpha", type=float, help="leaky-softplus slope a in (0, 1)")
    m.add_argument("--diag", choices=["raw", "exp"], help="parametrisation of diag(U)")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, TrainingDiverged) as exc:
        print(f"lunet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
