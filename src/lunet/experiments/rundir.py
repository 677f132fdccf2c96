"""The run folder: its layout, one writer at a time, and checks made before anything in it is touched."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Iterator, Sequence

LOCK_NAME = ".lock"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
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
def _locked(folder: str | os.PathLike) -> Iterator[Path]:
    # RunFolder.locked's body; see its docstring.
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


class RunFolder:
    """The folder of one training run and the files in it::

        run.json        what an image run models (data set, kind, λ, model spec)
        checkpoint.pt   the model's checkpoint (one-model runs)
        metrics.jsonl   one line per epoch
        curves.png      train and validation NLL per epoch, redrawn at each checkpoint
        class-K/        per-class runs: checkpoint.pt, metrics.jsonl and curves.png of class K
        starts/         2-D runs: the starts trained side by side, the same files
        .lock           held while a training writes here

    A 2-D run also writes ``RESULT_FILES`` beside its checkpoint.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def run_file(self) -> Path:
        return self.path / RUN_FILE

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT_NAME

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def summary(self) -> Path:
        """A 2-D run's results (test NLL, entropy, KL)."""
        return self.path / RESULT_FILES[0]

    @property
    def curves(self) -> Path:
        return self.path / CURVES_NAME

    @property
    def starts(self) -> "RunFolder":
        """Where a 2-D run trains its starts side by side."""
        return RunFolder(self.path / "starts")

    def _model_folders(self) -> list["RunFolder"]:
        return [self, self.starts, *(RunFolder(p) for p in sorted(self.path.glob("class-*")))]

    def class_folder(self, class_label: int) -> "RunFolder":
        """The folder of class ``class_label``'s model in a per-class run."""
        return RunFolder(self.path / f"class-{class_label}")

    def checkpoints(self) -> list[Path]:
        """The checkpoints the run holds: its own, its starts' and each class folder's."""
        return [folder.checkpoint for folder in self._model_folders() if folder.checkpoint.is_file()]

    def clear(self) -> None:
        """Remove what a training wrote here (its own and its classes' checkpoints and metrics,
        the run description, a 2-D run's results), for ``--overwrite``: call it only after every
        check has passed."""
        for sub in self._model_folders():
            sub.checkpoint.unlink(missing_ok=True)
            sub.metrics.unlink(missing_ok=True)
            sub.curves.unlink(missing_ok=True)
        for name in (RUN_FILE, *RESULT_FILES):
            (self.path / name).unlink(missing_ok=True)

    def begin(self, resume: bool, overwrite: bool, resumable: Sequence[Path]) -> None:
        """Check that a training may start here, before it writes: ``overwrite`` clears the
        folder; ``resume`` needs one of the ``resumable`` checkpoints; a new run needs a
        folder without checkpoints. Call it holding :meth:`locked`."""
        if overwrite:
            self.clear()
        elif resume and not any(path.is_file() for path in resumable):
            raise FileNotFoundError(
                f"--resume: there is no checkpoint to resume in {self.path}; leave out --resume to start a new run"
            )
        elif not resume and self.checkpoints():
            raise FileExistsError(
                f"{self.path} already holds a training run; pass --resume to continue it, --overwrite to "
                f"replace it, or choose another --out"
            )

    def locked(self) -> AbstractContextManager[Path]:
        """Hold an exclusive lock on the folder (created if needed) while training writes in it.

        A second process asking for the same folder gets :class:`RunFolderBusy`
        naming the holder. The lock is the operating system's (``flock``), so it
        ends with the process however that ends; the lock file stays behind, empty
        of meaning. Locks nest within a process. Where ``fcntl`` is missing
        (Windows) no lock is taken.
        """
        return _locked(self.path)
