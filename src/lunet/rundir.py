"""The run folder: one writer at a time, and checks made before anything in it is touched."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".lock"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
RUN_FILE = "run.json"
# what a finished 2-D run writes beside its checkpoint
RESULT_FILES = ("summary.json", "density.png", "samples.png")
# Locks this process holds: path -> (file descriptor, depth), so that nested
# holders (a run and the trainer inside it) share one lock.
_held: dict[Path, list] = {}


class RunFolderBusy(RuntimeError):
    """Another process is training into the same run folder."""


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and make sure a file can be written in it; ``ValueError`` naming it if not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"cannot write in {folder}: {exc.strerror or exc}") from None
    return folder


def check_writable_file(path: str | os.PathLike) -> Path:
    """Make sure ``path`` can be written (its folder created if needed) before long work
    ends by writing it; ``ValueError`` naming the path if not. Nothing is left behind."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name")
    check_writable(path.parent)
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not existed:
        path.unlink()
    return path


def _holder_description(lock_file: Path) -> str:
    try:
        info = json.loads(lock_file.read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"process {info['pid']} on {info['host']}, started {started}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def locked(folder: str | os.PathLike) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if needed) while training writes in it.

    A second process asking for the same folder gets :class:`RunFolderBusy`
    naming the holder. The lock is the operating system's (``flock``), so it
    ends with the process however that ends; the lock file stays behind, empty
    of meaning. Where ``fcntl`` is missing (Windows) no lock is taken.
    """
    folder = check_writable(folder).resolve()
    if folder in _held:
        _held[folder][1] += 1
        try:
            yield folder
        finally:
            _held[folder][1] -= 1
        return
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        yield folder
        return
    lock_file = folder / LOCK_NAME
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RunFolderBusy(
            f"{folder} is in use by another training ({_holder_description(lock_file)}); "
            f"wait for it to finish or choose another --out"
        ) from None
    try:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        _held[folder] = [fd, 1]
        yield folder
    finally:
        _held.pop(folder, None)
        os.close(fd)  # releases the lock


def checkpoints_in(folder: str | os.PathLike) -> list[Path]:
    """The checkpoints a run holds in ``folder``: its own and each class folder's."""
    folder = Path(folder)
    return [p for p in [folder / CHECKPOINT_NAME, *sorted(folder.glob(f"class-*/{CHECKPOINT_NAME}"))] if p.is_file()]


def clear_run(folder: str | os.PathLike) -> None:
    """Remove what a training run wrote in ``folder`` (its own and its classes' checkpoints,
    metrics and run description), for ``--overwrite``: call it only after every check has passed."""
    folder = Path(folder)
    for sub in [folder, *sorted(folder.glob("class-*"))]:
        for name in (CHECKPOINT_NAME, METRICS_NAME):
            (sub / name).unlink(missing_ok=True)
    for name in (RUN_FILE, *RESULT_FILES):
        (folder / name).unlink(missing_ok=True)
