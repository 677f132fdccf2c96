"""The run folder: its layout, one writer at a time, checks made before anything in it is touched,
and writes that never go through a symbolic link or into a FIFO."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import sys
import tempfile
import time
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Optional, Sequence

from lunet.experiments.settings import NamesSettings, NothingToResume, RunExists

LOCK_NAME = ".lock"
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
RUN_FILE = "run.json"
# what a finished 2-D run writes beside its checkpoint
RESULT_FILES = ("summary.json", "density.png", "samples.png")
# The folders this process holds locked: a second hold on one of them is a mistake of the caller
# (flock would grant it silently, and the inner release would free the outer hold).
_held: set[Path] = set()


# Where the platform has them: open no symbolic link as the last part of a path, and
# open a FIFO without waiting for its other end (so that it can be refused, not hang).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class RunFolderBusy(NamesSettings, RuntimeError):
    """Another training holds the run folder (or this process holds it already)."""


class UnsafeFile(ValueError):
    """A path lunet would write (or read) is a symbolic link, a FIFO, a device or a folder
    where a regular file belongs, or a sub-folder of a run that is a link or a file."""


def _kind(mode: int) -> str:
    """What a file of ``mode`` (from ``lstat``) is, as the refusals name it."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(mode):
            return name
    return "not a regular file"


def _refusal(path: Path, action: str, mode: int) -> UnsafeFile:
    return UnsafeFile(f"refusing to {action} {path}: it is {_kind(mode)}; lunet writes and reads regular files "
                      f"only, never through a link: remove it or choose another path")


def check_regular(path: str | os.PathLike, action: str = "write") -> Path:
    """``path`` if it is a regular file or does not exist; :class:`UnsafeFile` naming it if it
    is a symbolic link (to anything) or not a regular file."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISREG(mode):
        raise _refusal(path, action, mode)
    return path


def check_subfolder(path: str | os.PathLike) -> Path:
    """``path``, a sub-folder of a run (``starts/``, ``class-K/``), if it is a folder or does not
    exist; :class:`UnsafeFile` naming it if it is a symbolic link or a file."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISDIR(mode):
        raise UnsafeFile(f"refusing to use {path}: it is {_kind(mode)}, not a folder of this run; "
                         f"nothing in a run folder is followed through a link: remove it")
    return path


def open_regular(path: str | os.PathLike, flags: int, action: str = "write") -> int:
    """``os.open(path, flags)`` (mode 0o666 less the umask when created) for a regular file only:
    :class:`UnsafeFile` naming ``path`` for a symbolic link or anything else, also one put in
    its place between the check and the opening."""
    path = check_regular(path, action)
    try:
        fd = os.open(path, flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC, 0o666)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link, or a FIFO without a reader, put there after the check
            raise UnsafeFile(f"refusing to {action} {path}: it is not a regular file (it changed while "
                             f"being opened)") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _refusal(path, action, mode)
    return fd


def read_text(path: str | os.PathLike) -> str:
    """The text (UTF-8) of the file at ``path``, a link to it included; :class:`UnsafeFile` naming
    it, without waiting, when it is a FIFO, a device or a folder."""
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafeFile(f"refusing to read {path}: it is {_kind(mode)}, not a regular file")
    with open(fd, encoding="utf-8") as f:
        return f.read()


def _write_failure(path: Path, exc: OSError) -> OSError:
    """``exc`` as the one line a failed write gets: the file, the reason, and that it is unchanged."""
    return OSError(exc.errno, f"could not write {path}: {exc.strerror or exc}; the file there is unchanged")


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to the regular file ``path`` (created if missing), never through a link
    (:class:`UnsafeFile`); a failed write (a full disk) is an ``OSError`` naming the file."""
    path = Path(path)
    fd = open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        data = memoryview(text.encode())
        while data:
            data = data[os.write(fd, data):]
    except OSError as exc:
        raise OSError(exc.errno, f"could not write {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


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


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """``write(f)`` into a temporary file beside ``path``, then rename it over ``path``; returns ``path``.

    Parent folders are created. The file gets the permissions of any other new
    file (the temporary file would otherwise keep ``mkstemp``'s owner-only mode).
    A failed or interrupted write leaves the old file in place and removes its
    temporary; a failed write is an ``OSError`` naming ``path`` and the reason (a
    full disk). A symbolic link, FIFO or folder at ``path`` is refused
    (:class:`UnsafeFile`); one put there after that check is replaced by the
    rename, never written through.
    """
    path = check_regular(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        f = os.fdopen(fd, "wb")
        writes = _Writes(f)
        try:
            with f:
                os.fchmod(fd, _default_file_mode())
                write(writes)
                f.flush()
                os.fsync(f.fileno())
        except Exception as exc:
            failure = writes.error or (exc if isinstance(exc, OSError) else None)
            if failure is None:
                raise
            raise _write_failure(path, failure) from None
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
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


def read_metrics(path: str | os.PathLike) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a ``metrics.jsonl`` (JSON objects with an ``"epoch"``), and what was wrong with
    each other line ("line 7, cut short ..."): a line cut short by a stop mid-write, or one that
    something else wrote, is no row."""
    text = read_text(path)
    lines = text.splitlines()
    rows, problems = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if isinstance(row, dict) and isinstance(row.get("epoch"), int):
                rows.append(row)
                continue
            reason = "not a row of metrics"
        except ValueError:
            reason = "not JSON"
        if number == len(lines) and not text.endswith("\n"):
            reason = "cut short (the run stopped while writing it)"
        problems.append(f"line {number}, {reason}")
    return rows, problems


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and make sure a file can be written in it; ``ValueError`` naming it if not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)  # a new name: never a planted link
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"cannot write in {folder}: {exc.strerror or exc}") from None
    return folder


def check_writable_file(path: str | os.PathLike) -> Path:
    """Make sure ``path`` can be written (its folder created if needed) before long work
    ends by writing it; ``ValueError`` naming the path if not (:class:`UnsafeFile` for a
    symbolic link or a FIFO there). Nothing is left behind."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name")
    check_writable(path.parent)
    existed = os.path.lexists(path)
    try:
        os.close(open_regular(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT))
    except UnsafeFile:
        raise
    except OSError as exc:
        raise ValueError(f"cannot write {path}: {exc.strerror or exc}") from None
    if not existed:
        path.unlink()
    return path


def _same_file(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` name one file: the same path once links and ``..`` are resolved,
    or the same file on disk (a hard link)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | os.PathLike, option: str, run: Optional["RunFolder"] = None,
                 inputs: Sequence[tuple[str | os.PathLike, str]] = ()) -> Path:
    """:func:`check_writable_file`, after refusing (``ValueError`` naming ``option`` and the file) an
    output that is one of ``run``'s own files or one of the ``inputs`` ``(path, what it is)`` the
    command reads: writing it would destroy what the command works from."""
    path = Path(path)
    named = [(own, f"the run's own {own.relative_to(run.path)}") for own in run.own_files()] if run else []
    for kept, what in [*named, *((Path(p), what) for p, what in inputs)]:
        if _same_file(path, kept):
            raise ValueError(f"{option} {path} is {what}; writing it would destroy it: choose another file")
    return check_writable_file(path)


def _holder_description(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 1 << 16, 0))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"process {info['pid']} on {info['host']}, started {started}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def _locked(run: "RunFolder") -> Iterator[Path]:
    # RunFolder.locked's body; see its docstring.
    given = check_writable(run.path)
    folder = given.resolve()
    if folder in _held:
        raise RunFolderBusy("{folder} is locked by this process already: a run folder is locked once, by the "
                            "run that writes in it", folder=folder)
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        run.check_files()
        yield folder
        return
    fd = open_regular(given / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder_description(fd)
        os.close(fd)
        raise RunFolderBusy("{folder} is in use by another training ({holder}); wait for it to finish or choose "
                            "another {out}", folder=folder, holder=holder) from None
    try:
        run.check_files()  # before anything is written here
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
        _held.add(folder)
        yield folder
    finally:
        _held.discard(folder)
        os.close(fd)  # releases the lock


def _remove(folder: Path, names: Sequence[str], top: bool) -> None:
    """Remove the files ``names`` from ``folder`` (the run folder if ``top``, else one of its
    sub-folders, which is then opened only if it is no symbolic link), without leaving it."""
    if os.unlink not in os.supports_dir_fd:
        for name in names:
            (folder / name).unlink(missing_ok=True)
        return
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | (0 if top else _NOFOLLOW) | _CLOEXEC)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            check_subfolder(folder)
        raise
    try:
        for name in names:
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass
    finally:
        os.close(fd)


def as_folder(folder: "str | os.PathLike | RunFolder") -> "RunFolder":
    """``folder`` as a :class:`RunFolder` (itself if it is one already)."""
    return folder if isinstance(folder, RunFolder) else RunFolder(folder)


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

    The folder itself may be reached through a symbolic link; nothing of the layout
    in it may be one (:meth:`check_files`), since anyone who can write in a shared
    run folder could otherwise point the run's writes and removals at other files.
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

    def own_files(self) -> list[Path]:
        """Every file of the layout, existing or not: the run's own, each model folder's and, for a
        2-D run (one with ``starts/``), its results. No output of a command may be one of them."""
        files = [self.run_file]
        for folder in self._model_folders():
            files += [folder.path / LOCK_NAME, folder.checkpoint, folder.metrics, folder.curves]
        if self.starts.path.is_dir():
            files += [self.path / name for name in RESULT_FILES]
        return files

    def check_files(self) -> None:
        """:class:`UnsafeFile` naming the first file of the layout here that is a symbolic link or
        not a regular file, or sub-folder (``starts/``, ``class-K/``) that is a link or a file: in a
        folder that others can write to, a link would carry the run's writes and removals elsewhere."""
        for name in (CHECKPOINT_NAME, METRICS_NAME, CURVES_NAME, RUN_FILE, *RESULT_FILES):
            check_regular(self.path / name)
        for folder in self._model_folders()[1:]:
            check_subfolder(folder.path)

    def class_folder(self, class_label: int) -> "RunFolder":
        """The folder of class ``class_label``'s model in a per-class run."""
        return RunFolder(self.path / f"class-{class_label}")

    def checkpoints(self) -> list[Path]:
        """The checkpoints the run holds: its own, its starts' and each class folder's."""
        return [folder.checkpoint for folder in self._model_folders() if folder.checkpoint.is_file()]

    def clear(self) -> None:
        """Remove what a training wrote here (its own and its classes' checkpoints and metrics,
        the run description, a 2-D run's results), for ``--overwrite``: call it only after every
        check has passed. A sub-folder that is a symbolic link is refused (:class:`UnsafeFile`)
        before anything is removed, and nothing is removed outside the folder: a file that is a
        link goes as a link, and a sub-folder turned into a link meanwhile is not entered."""
        self.check_files()
        for sub in self._model_folders():
            _remove(sub.path, (CHECKPOINT_NAME, METRICS_NAME, CURVES_NAME), top=sub is self)
        _remove(self.path, (RUN_FILE, *RESULT_FILES), top=True)

    def begin(self, resume: bool, overwrite: bool, resumable: Sequence[Path]) -> None:
        """Check that a training may start here, before it writes: ``overwrite`` clears the
        folder; ``resume`` needs one of the ``resumable`` checkpoints; a new run needs a
        folder without checkpoints. Call it holding :meth:`locked`."""
        if overwrite:
            self.clear()
        elif resume and not any(path.is_file() for path in resumable):
            raise NothingToResume("{resume}: there is no checkpoint to resume in {path}; leave out {resume} to start "
                                  "a new run", path=self.path)
        elif not resume and self.checkpoints():
            raise RunExists("{path} already holds a training run; pass {resume} to continue it, {overwrite} to "
                            "replace it, or choose another {out}", path=self.path)

    def locked(self) -> AbstractContextManager[Path]:
        """Hold an exclusive lock on the folder (created if needed) while training writes in it.

        A second process asking for the same folder gets :class:`RunFolderBusy`
        naming the holder. The lock is the operating system's (``flock``), so it
        ends with the process however that ends; the lock file stays behind, empty
        of meaning. Within one process a folder is locked once: a second hold raises
        :class:`RunFolderBusy` too. Where ``fcntl`` is missing
        (Windows) no lock is taken. Taking it checks the folder's files
        (:meth:`check_files`) before anything is written there.
        """
        return _locked(self)
