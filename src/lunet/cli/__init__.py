"""The ``lunet`` command line: ``lunet train | evaluate | sample | interpolate | agreement | ood | export | bench``.

``lunet train`` has one parser per kind of run (:mod:`lunet.cli.train`); the
commands on a trained run are in :mod:`lunet.cli.runs`. Here: the parser of the
commands, and how a failure becomes one line. The library names settings as a
Python caller gives them (``lr``); here they become the options (``--lr``).
Nothing imported here imports torch: ``lunet --help`` and ``--version`` answer
at once, and each command imports what it needs.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import sys
from typing import Callable, Optional, Sequence

from lunet import __version__
from lunet.cli import bench, runs, train
from lunet.cli.options import flag
from lunet.experiments.config.errors import NamesSettings
from lunet.experiments.files.lock import RunFolderBusy
from lunet.experiments.store.folder import RunFolder

__all__ = ["build_parser", "flag", "main", "parse"]

# what the command line needs beyond the library's torch and numpy: `pip install 'lunet[experiments]'`
EXPERIMENT_PACKAGES = ("matplotlib", "tqdm")


def build_parser() -> argparse.ArgumentParser:
    """The ``lunet`` parser; ``lunet train``'s own options are parsed by :func:`lunet.cli.train.parse`."""
    parser = argparse.ArgumentParser(
        prog="lunet", description="LU-Net: invertible networks and normalizing flows from LU factorisation"
    )
    parser.add_argument("--version", action="version", version=f"lunet {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="train a flow by maximum likelihood", add_help=False)
    runs.add_parsers(sub)
    bench.add_parser(sub)
    return parser


def parse(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command and its options; ``SystemExit`` after argparse has printed a problem or the help,
    ``ValueError`` for an option of ``lunet train`` that does not apply to the kind of run."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "train":
        args = train.parse(rest)
        args.run = RunFolder(args.out)
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    elif getattr(args, "run_dir", None):
        runs.open_run(args)
    return args


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a job scheduler, a container that stops), raised where the command is so
    that it stops as on Ctrl-C: a file being written is left as it was, the last checkpoint kept."""


def _terminate(signum: int, frame: object) -> None:
    raise Terminated


def _stop_on_sigterm() -> Callable[[], object]:
    """Make SIGTERM raise :class:`Terminated`; returns what puts the previous handler back."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # only the main thread may set a handler; elsewhere SIGTERM keeps its own
        return lambda: None
    return lambda: signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _interrupted(args: argparse.Namespace, what: str = "interrupted") -> str:
    """What to tell a user who stopped a command (``what`` happened): for training, where the last checkpoint is."""
    if args.command != "train":
        return what
    return f"{what}; {_where_kept(args)}"


def _where_kept(args: argparse.Namespace) -> str:
    """Where a stopped training's last checkpoint is, and how to go on."""
    if os.environ.get("RANK", "0") != "0" and not getattr(args, "per_class", False):
        return "process 0 of the run keeps its checkpoint; continue with --resume and the run's own options"
    run = args.run
    kept = run.checkpoints()
    if not kept:
        return "no checkpoint had been written yet, so nothing was kept"
    if run.starts.checkpoint in kept:  # a 2-D run resumes its starts; its own file holds the chosen model only
        where = run.starts.checkpoint
    else:
        where = kept[0] if len(kept) == 1 else f"{run.path}/class-*/{run.checkpoint.name}"
    return f"the last checkpoint is kept in {where}; continue with --resume and the run's own options"


LOST_PEER_SIGNS = ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "Broken pipe")


def _is_lost_peer(exc: Exception) -> bool:
    """Whether ``exc`` is a collective operation failing because another process of the run is gone."""
    import torch.distributed as dist

    from lunet.experiments.training import distributed

    if not distributed.launched():
        return False
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in LOST_PEER_SIGNS)
def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``lunet ...``; every failure prints one line on stderr and returns 2 (130 on Ctrl-C, 143 on SIGTERM).

    ``LUNET_DEBUG=1`` shows the traceback of an unexpected error.
    """
    try:
        args = parse(argv)
    except SystemExit as exc:  # argparse has printed its usage line and the problem (or the help)
        return exc.code if isinstance(exc.code, int) else 2
    except ValueError as exc:  # an option that does not apply to the kind of run
        print(f"lunet train: error: {exc}", file=sys.stderr)
        return 2
    missing = [name for name in EXPERIMENT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        print(f"lunet {args.command}: error: the command line needs {' and '.join(missing)}, which the library "
              f"alone does not: pip install 'lunet[experiments]'", file=sys.stderr)
        return 2
    restore_sigterm = _stop_on_sigterm()
    try:
        return args.func(args)
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"lunet {args.command}: {_interrupted(args, 'stopped by SIGTERM' if terminated else 'interrupted')}",
              file=sys.stderr)
        return 128 + signal.SIGTERM if terminated else 130
    except NamesSettings as exc:  # the library names settings as Python does; here they are options
        print(f"lunet {args.command}: error: {exc.render(flag)}", file=sys.stderr)
        return 2
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, RunFolderBusy) as exc:
        print(f"lunet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"lunet {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except Exception as exc:  # a failure nobody foresaw still gets one line, not a traceback
        if args.command == "train" and _is_lost_peer(exc):
            print(f"lunet train (process {os.environ.get('RANK', '?')} of {os.environ.get('WORLD_SIZE', '?')}): error: "
                  f"another process of the run stopped or cannot be reached ({str(exc).splitlines()[0][:160]}); "
                  f"{_where_kept(args)}", file=sys.stderr)
            return 2
        if os.environ.get("LUNET_DEBUG"):
            raise
        print(f"lunet {args.command}: error: {type(exc).__name__}: {exc} (set LUNET_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 2
    finally:
        restore_sigterm()
