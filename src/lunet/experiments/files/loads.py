"""Weights-only loads of PyTorch files: nothing that could run code, nothing that would unpack far
beyond the file's size or the machine's memory.

torch is imported by the loads alone, so that ``lunet --help`` answers at once."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from typing import Any

from lunet.experiments.config.errors import first_sentence
from lunet.experiments.config.machine import gigabytes, machine_memory

__all__ = ["MAX_INFLATION", "load_weights_only"]

# torch.save stores a file's members uncompressed; a member packed tighter than this was
# made by something else, and unpacking it could take far more memory than the file's size
MAX_INFLATION = 16


def load_weights_only(path: str | os.PathLike, kind: str, rule: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; a one-line ``ValueError`` naming ``path``
    for a file that would run code (``rule`` says what such a file should hold instead) and for one
    that is not a readable PyTorch file (``kind`` names what it should be)."""
    import torch  # here: the command line imports this module and answers --help without torch

    _check_inflation(path, kind)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL (\S+)", str(exc))
        if found:  # the file names a Python callable or class to import
            raise ValueError(
                f"{path} holds a Python object ({found.group(1)}) besides tensors, numbers, strings and plain "
                f"containers; loading it could run code from the file, so it is refused; {rule}"
            ) from None
        raise ValueError(f"{path} could not be read as a {kind}: it is corrupt or not a PyTorch file") from None
    except Exception as exc:  # torch raises several types for damaged files
        raise ValueError(f"{path} could not be read as a {kind}: it is corrupt ({first_sentence(exc)})") from None


def _check_inflation(path: str | os.PathLike, kind: str) -> None:
    """``ValueError`` naming ``path`` when the members of the zip file that PyTorch files are would
    unpack to more than :data:`MAX_INFLATION` times the file's size, or to more than the machine's
    memory: checked from the zip directory, before anything is unpacked."""
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return  # not a zip file: torch.load reads the old format or reports the damage
    packed = max(os.path.getsize(path), 1)
    if unpacked > MAX_INFLATION * packed:
        raise ValueError(
            f"{path} could not be read as a {kind}: its contents would unpack from {packed:,} bytes to "
            f"{unpacked:,} ({unpacked / packed:,.0f} times as many; torch.save stores them unpacked), so it is "
            f"refused unread"
        )
    memory = machine_memory()
    if memory is not None and unpacked > memory:
        raise ValueError(f"{path} could not be read as a {kind}: its contents take {gigabytes(unpacked)}, more than "
                         f"the {gigabytes(memory)} of memory this machine has")
