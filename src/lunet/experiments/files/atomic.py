"""Atomic writes: a file written whole into a temporary beside its path, then renamed over it, or
left as it was; SIGINT and SIGTERM held back meanwhile, and a link or FIFO at the path refused."""

from __future__ import annotations

import os
import secrets
import signal
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional, cast

from lunet.experiments.files.safe import CLOEXEC, NOFOLLOW, FolderHandle, open_folder, unsafe_file_error

__all__ = ["signals_deferred", "write_atomic", "write_text_atomic", "stale_temporaries"]


_BINARY = getattr(os, "O_BINARY", 0)


def _write_failure(path: Path, exc: OSError) -> OSError:
    """``exc`` as the one line a failed write gets: the file, the reason, and that it is unchanged."""
    return OSError(exc.errno, f"could not write {path}: {exc.strerror or exc}; the file there is unchanged")


def _default_file_mode() -> int:
    """The permissions a new file gets under this process's umask (as ``open`` gives)."""
    try:  # Linux reports the umask without changing it (os.umask would, for every thread)
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask


class _Writes:
    """A file that remembers the first ``OSError`` of a write: ``torch.save`` reports a full
    disk as "unexpected pos N vs M", without the reason, which this keeps."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.error: Optional[OSError] = None

    def write(self, data: Any) -> int:
        try:
            return self._f.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


_deferring = False  # a write of this process holds SIGINT and SIGTERM back now


@contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM back while the block runs (a file being written), then deliver
    them to the handlers they had: a stop never cuts a save short, and still stops the command.
    In a thread other than the main one (where no handler can be set) the block runs as it is."""
    global _deferring
    if _deferring or threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) not in (None, signal.SIG_IGN):  # None: a handler set outside Python
            previous[signum] = signal.signal(signum, lambda got, frame: caught.append(got))
    _deferring = True
    try:
        yield
    finally:
        _deferring = False
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for number in dict.fromkeys(caught):
            signal.raise_signal(number)


def _new_temporary(folder: FolderHandle, name: str) -> tuple[str, int]:
    """A new file ``NAME.RANDOM.tmp`` in ``folder`` (owner-only until written), never a planted link."""
    while True:
        temporary = f"{name}.{secrets.token_hex(4)}.tmp"
        try:
            return temporary, folder.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | CLOEXEC
                                          | _BINARY, 0o600)
        except FileExistsError:
            continue


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """``write(f)`` into a temporary file beside ``path``, then rename it over ``path``; returns ``path``.

    Parent folders are created. The file gets the permissions of any other new
    file. A failed or interrupted write leaves the old file in place and removes its
    temporary; a failed write is an ``OSError`` naming ``path`` and the reason (a
    full disk). SIGINT and SIGTERM wait until the file is written
    (:func:`signals_deferred`). A symbolic link, FIFO or folder at ``path`` is refused
    (:class:`UnsafeFile`); one put there after that check is replaced by the
    rename, never written through. Inside a run folder held locked, the folders on
    the way are opened from the locked one without following links.
    """
    path = Path(path)
    with signals_deferred(), open_folder(path.parent, create=True) as folder:
        mode = folder.mode(path.name)
        if mode is not None and not stat.S_ISREG(mode):
            raise unsafe_file_error(path, "write", mode)
        temporary, fd = _new_temporary(folder, path.name)
        try:
            f = os.fdopen(fd, "wb")
            writes = _Writes(f)
            try:
                with f:
                    os.fchmod(fd, _default_file_mode())
                    write(cast(BinaryIO, writes))  # a proxy of ``f`` that passes everything else on
                    f.flush()
                    os.fsync(f.fileno())
            except Exception as exc:
                failure = writes.error or (exc if isinstance(exc, OSError) else None)
                if failure is None:
                    raise
                raise _write_failure(path, failure) from None
            folder.replace(temporary, path.name)
        except BaseException:
            folder.unlink(temporary)
            raise
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """:func:`write_atomic` of ``text`` (UTF-8)."""
    return write_atomic(path, lambda f: f.write(text.encode()))


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Temporary files that an interrupted :func:`write_atomic` of ``path`` left behind
    (a process killed mid-save cannot remove its own)."""
    path = Path(path)
    return sorted(path.parent.glob(path.name + ".*.tmp"))
