"""What the commands share: argparse types that check numbers and paths, the options of every
command on data or a device, and the naming of settings as options. Imports no torch."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from lunet.experiments.files.atomic import write_text_atomic
from lunet.limits import ALPHA_MIN

__all__ = ["OPTION_NAMES", "IMAGE_SUFFIXES", "flag", "number", "bounded", "POSITIVE_INT", "NON_NEGATIVE_INT", "SEED",
           "POSITIVE_FLOAT", "NON_NEGATIVE_FLOAT", "SLOPE", "LAM", "FRACTION", "PATH", "suffix_problem",
           "IMAGE_PATH", "add_device_option", "DATA_DIR_HELP", "NO_VERIFY_HELP", "add_data_options",
           "refuse_given", "epochs_text", "write_json"]

# Settings whose option is not named after them
OPTION_NAMES = {"class_label": "--class", "num_samples": "--num", "bound": "--spline-bound", "num_blocks": "--blocks"}
IMAGE_SUFFIXES = (".png", ".pdf", ".svg")


def flag(setting: str) -> str:
    """The option that gives ``setting`` (a field of ``TrainConfig``, a keyword of the training functions)."""
    return OPTION_NAMES.get(setting, "--" + setting.replace("_", "-"))


def number(kind: type, test: Callable[[Any], bool], what: str) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` that must pass ``test``, else an error saying it must be ``what``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = what  # argparse names the type in its messages
    return parse


def bounded(top: int) -> Callable[[str], int]:
    """An argparse type: an integer in 1..``top``."""
    return number(int, lambda v: 1 <= v <= top, f"an integer in 1..{top:,}")


POSITIVE_INT = number(int, lambda v: v >= 1, "a positive integer")
NON_NEGATIVE_INT = number(int, lambda v: v >= 0, "a non-negative integer")
SEED = number(int, lambda v: 0 <= v < 2**63, "an integer in [0, 2^63)")
POSITIVE_FLOAT = number(float, lambda v: math.isfinite(v) and v > 0, "a positive finite number")
NON_NEGATIVE_FLOAT = number(float, lambda v: math.isfinite(v) and v >= 0, "a non-negative finite number")
SLOPE = number(float, lambda v: ALPHA_MIN <= v < 1, f"a number in [{ALPHA_MIN:g}, 1)")
LAM = number(float, lambda v: 0 < v < 0.5, "a number strictly between 0 and 0.5")
FRACTION = number(float, lambda v: 0 < v < 1, "a number strictly between 0 and 1")


def PATH(text: str) -> str:  # noqa: N802 (an argparse type, named like the others)
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def suffix_problem(path: str, suffixes: Sequence[str]) -> Optional[str]:
    """What is wrong with ``path`` as a file that must end in one of ``suffixes`` (None: nothing)."""
    if Path(path).suffix.lower() not in suffixes:
        return f"must name a {', '.join(suffixes)} file, got {path!r}"
    return None


def IMAGE_PATH(text: str) -> str:  # noqa: N802
    problem = suffix_problem(PATH(text), IMAGE_SUFFIXES)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def add_device_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")


DATA_DIR_HELP = ("folder with the IDX files (else, for a run, where its training found them; then $LUNET_DATA_DIR, "
                 "the user cache, system folders)")
NO_VERIFY_HELP = "skip the MD5 check of the data files"


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=PATH, help=DATA_DIR_HELP)
    p.add_argument("--no-verify", action="store_true", help=NO_VERIFY_HELP)


def refuse_given(args: argparse.Namespace, names: Sequence[str], where: str) -> None:
    """``ValueError`` naming each option of ``names`` that was given, with what it applies to."""
    given = [flag(n) for n in names if getattr(args, n) not in (None, False)]
    if given:
        verb = "applies" if len(given) == 1 else "apply"
        raise ValueError(f"{', '.join(given)} {verb} to {where}")


def epochs_text(n: int) -> str:
    return f"{n} epoch" if n == 1 else f"{n} epochs"


def write_json(path: Optional[str], obj: dict) -> None:
    """Write ``obj`` to ``path`` (when given) as indented JSON and say so."""
    if not path:
        return
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")
    print(f"wrote {path}")
