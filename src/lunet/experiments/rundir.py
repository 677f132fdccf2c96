"""The run folder: its layout, one writer at a time, checks made before anything in it is touched,
and writes that never go through a symbolic link or into a FIFO."""

from __future__ import annotations

import errno
import json
import os
import secrets
import signal
import socket
import stat
import sys
import tempfile
import threading
import time
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
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
# every name a run writes in its folder or in its model folders (class-K/, starts/)
LAYOUT_NAMES = (LOCK_NAME, CHECKPOINT_NAME, METRICS_NAME, CURVES_NAME, RUN_FILE, *RESULT_FILES)
# a per-class run trains one model per class, each in its folder class-K/
NUM_CLASSES = 10


# Where the platform has them: open no symbolic link as the last part of a path, and
# open a FIFO without waiting for its other end (so that it can be refused, not hang).
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_BINARY = getattr(os, "O_BINARY", 0)
# Where folders can be opened and names looked up in an open folder (POSIX), a path inside a
# run folder is never looked up again by name once its parts were checked.
_AT = {os.open, os.stat, os.unlink, os.mkdir, os.rename} <= os.supports_dir_fd


class RunFolderBusy(NamesSettings, RuntimeError):
    """Another training holds the run folder (or this process holds it already)."""


class UnsafeFile(ValueError):
    """A path lunet would write (or read) is a symbolic link, a FIFO, a device or a folder
    where a regular file belongs, or a sub-folder of a run that is a link or a file."""


class RunFolderChanged(UnsafeFile):
    """The run folder a training holds locked is no longer at its path (removed, renamed, replaced)."""


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


def _not_a_folder(path: Path, mode: int) -> UnsafeFile:
    return UnsafeFile(f"refusing to use {path}: it is {_kind(mode)}, not a folder of this run; "
                      f"nothing in a run folder is followed through a link: remove it")


def check_subfolder(path: str | os.PathLike) -> Path:
    """``path``, a sub-folder of a run (``starts/``, ``class-K/``), if it is a folder or does not
    exist; :class:`UnsafeFile` naming it if it is a symbolic link or a file."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISDIR(mode):
        raise _not_a_folder(path, mode)
    return path


@dataclass
class _Hold:
    """A run folder this process holds locked: its path as given (made absolute; it may pass
    through a link), resolved, the folder open, and which folder it was when locked."""

    path: Path
    resolved: Path
    fd: Optional[int]
    identity: tuple[int, int]

    def parts_of(self, path: Path) -> Optional[tuple[str, ...]]:
        """The parts of the absolute ``path`` below this folder, None if it lies elsewhere."""
        for base in (self.path, self.resolved):
            if path == base or base in path.parents:
                return path.relative_to(base).parts
        return None

    def check_in_place(self) -> None:
        """:class:`RunFolderChanged` if the path no longer leads to the folder that was locked."""
        try:
            st = os.stat(self.path)
        except OSError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self.identity:
            raise RunFolderChanged(
                f"the run folder {self.path} was removed, renamed or replaced during the training: it is no longer "
                f"the folder this training locked, so the training stops rather than write elsewhere")


# The folders this process holds locked, by resolved path: a second hold on one of them is a mistake
# of the caller (flock would grant it silently, and the inner release would free the outer hold).
_held: dict[Path, _Hold] = {}


class _Folder:
    """A folder for the names in it: open where the platform allows (a name then means this
    folder's entry, whatever becomes of its path meanwhile), else its path."""

    def __init__(self, path: Path, fd: Optional[int]) -> None:
        self.path = path
        self.fd = fd

    def _name(self, name: str) -> str:
        return name if self.fd is not None else str(self.path / name)

    def mode(self, name: str) -> Optional[int]:
        """The ``lstat`` mode of ``name``, None if there is none."""
        try:
            return os.stat(self._name(name), dir_fd=self.fd, follow_symlinks=False).st_mode
        except FileNotFoundError:
            return None

    def open(self, name: str, flags: int, mode: int = 0o666) -> int:
        return os.open(self._name(name), flags, mode, dir_fd=self.fd)

    def unlink(self, name: str) -> None:
        with suppress(FileNotFoundError):
            os.unlink(self._name(name), dir_fd=self.fd)

    def replace(self, source: str, target: str) -> None:
        os.replace(self._name(source), self._name(target), src_dir_fd=self.fd, dst_dir_fd=self.fd)


def _subfolder_at(fd: int, name: str, path: Path, create: bool) -> int:
    """The sub-folder ``name`` of the open folder ``fd`` (``path``), opened without following a link
    (:class:`UnsafeFile` naming ``path`` for a link or a file there), created first if ``create``."""
    try:
        return os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        try:
            mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
        except OSError:
            mode = 0
        raise _not_a_folder(path, mode) from None
    with suppress(FileExistsError):
        os.mkdir(name, dir_fd=fd)
    return _subfolder_at(fd, name, path, create=False)


def _parts_below(path: Path, base: Optional[Path]) -> Optional[tuple[str, ...]]:
    """The parts of the absolute ``path`` below the absolute ``base``, None if it lies elsewhere."""
    if base is not None and (path == base or base in path.parents):
        return path.relative_to(base).parts
    return None


@contextmanager
def _open_folder(folder: Path, create: bool, root: Optional[Path] = None) -> Iterator[_Folder]:
    """``folder``, open (created first if ``create``). Inside a run folder this process holds
    locked (or inside ``root``), it is reached from that folder one part at a time, following
    no link, after checking that the held folder is still the one at its path."""
    if not _AT:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        yield _Folder(folder, None)
        return
    absolute = Path(os.path.abspath(folder))
    hold = next((h for h in _held.values() if h.parts_of(absolute) is not None), None)
    below_root = _parts_below(absolute, Path(os.path.abspath(root)) if root is not None else None)
    if hold is not None:
        hold.check_in_place()
        base, parts = hold.path, hold.parts_of(absolute)
        fd = os.open(".", os.O_RDONLY | _DIRECTORY | _CLOEXEC, dir_fd=hold.fd)
    elif below_root is not None:
        base, parts = Path(root), below_root
        fd = os.open(base, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    else:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        base, parts = folder, ()
        fd = os.open(folder, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for part in parts:
            base = base / part
            sub = _subfolder_at(fd, part, base, create)
            os.close(fd)
            fd = sub
        yield _Folder(folder, fd)
    finally:
        os.close(fd)


def _open_regular_in(folder: _Folder, path: Path, flags: int, action: str) -> int:
    """``path``'s file in the open ``folder``, opened with ``flags``: :class:`UnsafeFile` for a link
    or anything but a regular file, also one put there between the check and the opening."""
    mode = folder.mode(path.name)
    if mode is not None and not stat.S_ISREG(mode):
        raise _refusal(path, action, mode)
    try:
        fd = folder.open(path.name, flags | _NOFOLLOW | _NONBLOCK | _CLOEXEC)
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


def _refuse_hard_links(fd: int, path: Path, action: str = "write") -> None:
    """:class:`UnsafeFile` if the open file ``fd`` has other names: writing it in place would
    change them too (a planted hard link to someone else's file)."""
    links = os.fstat(fd).st_nlink
    if links > 1:
        raise UnsafeFile(f"refusing to {action} {path}: it has {links} hard links, so writing it would change "
                         f"another file too; remove it")


def open_regular(path: str | os.PathLike, flags: int, action: str = "write") -> int:
    """``os.open(path, flags)`` (mode 0o666 less the umask when created) for a regular file only:
    :class:`UnsafeFile` naming ``path`` for a symbolic link or anything else, also one put in
    its place between the check and the opening."""
    path = Path(path)
    with _open_folder(path.parent, create=False) as folder:
        return _open_regular_in(folder, path, flags, action)


def remove_file(path: str | os.PathLike) -> None:
    """Remove the file at ``path`` if there is one (a link goes as a link); inside a run folder held
    locked, never through a sub-folder that became a link."""
    path = Path(path)
    with suppress(FileNotFoundError), _open_folder(path.parent, create=False) as folder:
        folder.unlink(path.name)


def _open_to_read(path: str | os.PathLike) -> int:
    """A descriptor of the regular file at ``path``, a link to it included; :class:`UnsafeFile`
    naming it, without waiting, when it is a FIFO, a device or a folder."""
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | _CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafeFile(f"refusing to read {path}: it is {_kind(mode)}, not a regular file")
    return fd


def read_text(path: str | os.PathLike) -> str:
    """The text (UTF-8) of the file at ``path``, a link to it included; :class:`UnsafeFile` naming
    it, without waiting, when it is a FIFO, a device or a folder."""
    with open(_open_to_read(path), encoding="utf-8") as f:
        return f.read()


def _write_failure(path: Path, exc: OSError) -> OSError:
    """``exc`` as the one line a failed write gets: the file, the reason, and that it is unchanged."""
    return OSError(exc.errno, f"could not write {path}: {exc.strerror or exc}; the file there is unchanged")


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to the regular file ``path`` (created if missing), never through a link nor
    into a file with other hard links (:class:`UnsafeFile`); a failed write (a full disk) is an
    ``OSError`` naming the file."""
    path = Path(path)
    with _open_folder(path.parent, create=True) as folder:
        fd = _open_regular_in(folder, path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "write")
    try:
        _refuse_hard_links(fd, path)
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
        for signum in dict.fromkeys(caught):
            signal.raise_signal(signum)


def _new_temporary(folder: _Folder, name: str) -> tuple[str, int]:
    """A new file ``NAME.RANDOM.tmp`` in ``folder`` (owner-only until written), never a planted link."""
    while True:
        temporary = f"{name}.{secrets.token_hex(4)}.tmp"
        try:
            return temporary, folder.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
                                          | _BINARY, 0o600)
        except FileExistsError:
            continue


def write_atomic(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
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
    with signals_deferred(), _open_folder(path.parent, create=True) as folder:
        mode = folder.mode(path.name)
        if mode is not None and not stat.S_ISREG(mode):
            raise _refusal(path, "write", mode)
        temporary, fd = _new_temporary(folder, path.name)
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


# A row of metrics is a few hundred bytes; a longer line is something else, and is not held whole.
MAX_METRICS_LINE = 1 << 16
# The lines named in a warning for each kind of damage; the rest are counted.
NAMED_LINES = 5


def read_metrics(path: str | os.PathLike, last_epoch: Optional[int] = None) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of a ``metrics.jsonl`` (JSON objects with an ``"epoch"``, in increasing order of
    epochs), and what was wrong with each other line ("line 7, cut short ..."): a line cut short
    by a stop mid-write, or one that something else wrote (not UTF-8, not JSON, far too long, a
    second row of an epoch), is no row. Read a line at a time, none held beyond
    :data:`MAX_METRICS_LINE` bytes; with ``last_epoch`` (the checkpoint's), rows of later epochs,
    which a resumed run redoes, are left out, so that no more rows are kept than epochs trained."""
    rows: list[dict[str, Any]] = []
    latest = 0  # the epoch of the last row read, kept or not
    found: dict[str, tuple[list[int], int]] = {}  # each kind of damage: its first lines, and how many
    with open(_open_to_read(path), "rb") as f:
        number = 0
        while True:
            line = f.readline(MAX_METRICS_LINE + 1)
            if not line:
                break
            number += 1
            reason = None
            if len(line) > MAX_METRICS_LINE:
                reason = f"longer than {MAX_METRICS_LINE:,} bytes, far more than a row of metrics"
                while line and not line.endswith(b"\n"):  # the rest of it, a piece at a time
                    line = f.readline(MAX_METRICS_LINE)
            elif line.strip():
                row, reason = _metrics_row(line)
                if row is not None and row["epoch"] <= latest:
                    reason = "a row of an epoch logged before it"
                elif row is not None:
                    latest = row["epoch"]
                    if last_epoch is None or latest <= last_epoch:
                        rows.append(row)
                if reason is not None and not line.endswith(b"\n"):
                    reason = "cut short (the run stopped while writing it)"
            if reason is not None:
                first, count = found.get(reason, ([], 0))
                found[reason] = (first if len(first) >= NAMED_LINES else first + [number], count + 1)
    problems = []
    for reason, (first, count) in sorted(found.items(), key=lambda item: item[1][0][0]):
        more = f" and {count - len(first):,} more" if count > len(first) else ""
        problems.append(f"line{'s' if count > 1 else ''} {', '.join(map(str, first))}{more}, {reason}")
    return rows, problems


def _metrics_row(line: bytes) -> tuple[Optional[dict[str, Any]], Optional[str]]:
    """The row of metrics ``line`` holds, or None and why it holds none."""
    try:
        row = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    except ValueError:
        return None, "not JSON"
    epoch = row.get("epoch") if isinstance(row, dict) else None
    if type(epoch) is not int or epoch < 1:
        return None, "not a row of metrics"
    return row, None


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


def run_folder_around(path: str | os.PathLike) -> Optional[Path]:
    """The run folder that the file ``path`` lies in (links resolved): its folder if that holds
    ``run.json`` or ``.lock``, or that folder's parent if it does and the folder is one of a run's
    model folders (``class-K/``, ``starts/``); None otherwise."""
    folder = Path(path).parent.resolve()
    candidates = [folder]
    if folder.name == "starts" or folder.name.startswith("class-"):
        candidates.append(folder.parent)
    for candidate in candidates:
        if any(os.path.lexists(candidate / name) for name in (RUN_FILE, LOCK_NAME)):
            return candidate
    return None


def check_output(path: str | os.PathLike, option: str, run: Optional["RunFolder"] = None,
                 inputs: Sequence[tuple[str | os.PathLike, str]] = ()) -> Path:
    """:func:`check_writable_file`, after refusing (``ValueError`` naming ``option`` and the file) an
    output that is one of ``run``'s own files or one of the ``inputs`` ``(path, what it is)`` the
    command reads, and, in any run folder (this run's or another's, see :func:`run_folder_around`),
    a name of the run layout or a file that is there already: writing it would destroy what the
    command works from, or what a run (perhaps training now) has made. A new file of another name
    may be written in a run folder."""
    path = Path(path)
    named = [(own, f"the run's own {own.relative_to(run.path)}") for own in run.own_files()] if run else []
    for kept, what in [*named, *((Path(p), what) for p, what in inputs)]:
        if _same_file(path, kept):
            raise ValueError(f"{option} {path} is {what}; writing it would destroy it: choose another file")
    folder = run_folder_around(path)
    temporary = path.name.endswith(".tmp") and any(path.name.startswith(name + ".") for name in LAYOUT_NAMES)
    if folder is not None and (path.name in LAYOUT_NAMES or temporary):
        raise ValueError(f"{option} {path} is a file of the run in {folder}; writing it would destroy it: "
                         f"choose another file")
    if folder is not None and os.path.lexists(path):
        raise ValueError(f"{option} {path} is a file already in the run folder {folder}; lunet replaces no file "
                         f"there (only a new file may be written in a run folder): choose another file")
    return check_writable_file(path)


def _holder_description(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 1 << 16, 0))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"process {info['pid']} on {info['host']}, started {started}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextmanager
def locked_folder(run: "RunFolder") -> Iterator[Path]:
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
    with _open_folder(given, create=False) as opened:
        fd = _open_regular_in(opened, given / LOCK_NAME, os.O_RDWR | os.O_CREAT, "write")
        try:
            _refuse_hard_links(fd, given / LOCK_NAME)  # before the lock or the record touches the file
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise RunFolderBusy("{folder} is in use by another training ({holder}); wait for it to finish or "
                                    "choose another {out}", folder=folder, holder=_holder_description(fd)) from None
            run.check_files()  # before anything is written here
            record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                      "command": " ".join(sys.argv)}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(record).encode() + b"\n", 0)
            st = os.fstat(fd if opened.fd is None else opened.fd)
            _held[folder] = _Hold(Path(os.path.abspath(given)), folder, opened.fd, (st.st_dev, st.st_ino))
            try:
                yield folder
            finally:
                del _held[folder]
        finally:
            os.close(fd)  # releases the lock


def remove_names(run: Path, folder: Path, names: Sequence[str]) -> None:
    """Remove the files ``names`` from ``folder``, the run folder ``run`` or one of its sub-folders,
    which is reached from ``run`` without following a link."""
    with suppress(FileNotFoundError), _open_folder(folder, create=False, root=run) as opened:
        for name in names:
            opened.unlink(name)


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
    While this process holds the folder (:meth:`locked`), every file written or
    removed in it (:func:`write_atomic`, :func:`append_text`, :func:`remove_file`) is
    reached from the open folder one part at a time, following no link, and only
    while the folder is still the one at its path (:class:`RunFolderChanged`).
    Which sub-folders belong to the run is what its record says (:meth:`checkpoints`).
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
        """This folder and the sub-folders its record says the run made: a per-class run's
        ``class-K/`` (``"kind": "per_class"`` in ``run.json``), a 2-D run's ``starts/`` (a 2-D run
        writes no ``run.json``). Any other name here is someone else's and is left alone."""
        try:
            entries = json.loads(read_text(self.run_file))
        except FileNotFoundError:
            return [self, self.starts]
        except (OSError, ValueError):  # a damaged record names no sub-folder (check_files names the damage)
            return [self]
        if isinstance(entries, dict) and entries.get("kind") == "per_class":
            return [self, *(self.class_folder(k) for k in range(NUM_CLASSES))]
        return [self]

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
        """The checkpoints the run holds: its own and, as its record says, its starts' or each class
        folder's."""
        return [folder.checkpoint for folder in self._model_folders() if folder.checkpoint.is_file()]

    def clear(self) -> None:
        """Remove what a training wrote here, as the run's record says (its own and its model
        folders' checkpoints, metrics and curves, the run description, a 2-D run's results), for
        ``--overwrite``: call it only after every check has passed. Other files and folders stay,
        however they are named (``class-old/``). A sub-folder of the run that is a symbolic link is
        refused (:class:`UnsafeFile`) before anything is removed, and nothing is removed outside
        the folder: a file that is a link goes as a link, and a sub-folder turned into a link
        meanwhile is not entered."""
        self.check_files()
        for sub in self._model_folders():
            remove_names(self.path, sub.path, (CHECKPOINT_NAME, METRICS_NAME, CURVES_NAME))
        remove_names(self.path, self.path, (RUN_FILE, *RESULT_FILES))

    def make(self) -> None:
        """Create the folder if it is missing (inside a run folder held locked, through no link)."""
        with _open_folder(self.path, create=True):
            pass

    def begin(self, resume: bool, overwrite: bool, resumable: Sequence[Path]) -> None:
        """Check that a training may start here, before it writes: ``overwrite`` clears the
        folder; ``resume`` needs one of the ``resumable`` checkpoints; a new run needs a
        folder without checkpoints. The new run's model folders (those of ``resumable``) must be
        folders or absent. Call it holding :meth:`locked`."""
        for path in resumable:
            if Path(path).parent != self.path:
                check_subfolder(Path(path).parent)
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
        return locked_folder(self)
