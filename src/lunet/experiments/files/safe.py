"""Safe file input and output: reads, appends and removals that never go through a symbolic link
or into a FIFO; inside a run folder held locked, paths are reached from the open folder (the
atomic writes, over the same folders, are in :mod:`lunet.experiments.files.atomic`)."""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

__all__ = ["NOFOLLOW", "CLOEXEC", "UnsafeFile", "RunFolderChanged", "unsafe_file_error", "FolderHandle",
           "check_regular", "check_subfolder", "HeldFolder", "open_folder",
           "open_regular_in", "refuse_hard_links", "open_regular", "remove_file", "open_to_read",
           "read_text", "append_text", "check_writable", "check_writable_file", "make_folder", "remove_names"]


# Where the platform has them: open no symbolic link as the last part of a path, and
# open a FIFO without waiting for its other end (so that it can be refused, not hang).
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


# Where folders can be opened and names looked up in an open folder (POSIX), a path inside a
# run folder is never looked up again by name once its parts were checked.
_AT = {os.open, os.stat, os.unlink, os.mkdir, os.rename} <= os.supports_dir_fd


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


def unsafe_file_error(path: Path, action: str, mode: int) -> UnsafeFile:
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
        raise unsafe_file_error(path, action, mode)
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
class HeldFolder:
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
held_folders: dict[Path, HeldFolder] = {}


class FolderHandle:
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
        return os.open(name, os.O_RDONLY | _DIRECTORY | NOFOLLOW | CLOEXEC, dir_fd=fd)
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
def open_folder(folder: Path, create: bool, root: Optional[Path] = None) -> Iterator[FolderHandle]:
    """``folder``, open (created first if ``create``). Inside a run folder this process holds
    locked (or inside ``root``), it is reached from that folder one part at a time, following
    no link, after checking that the held folder is still the one at its path."""
    if not _AT:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        yield FolderHandle(folder, None)
        return
    absolute = Path(os.path.abspath(folder))
    hold = next((h for h in held_folders.values() if h.parts_of(absolute) is not None), None)
    below_root = _parts_below(absolute, Path(os.path.abspath(root)) if root is not None else None)
    if hold is not None:
        hold.check_in_place()
        held_parts = hold.parts_of(absolute)
        assert held_parts is not None  # the hold was picked for holding ``absolute``
        base, parts = hold.path, held_parts
        fd = os.open(".", os.O_RDONLY | _DIRECTORY | CLOEXEC, dir_fd=hold.fd)
    elif below_root is not None:
        assert root is not None  # there are parts below ``root`` only when it is given
        base, parts = Path(root), below_root
        fd = os.open(base, os.O_RDONLY | _DIRECTORY | CLOEXEC)
    else:
        if create:
            folder.mkdir(parents=True, exist_ok=True)
        base, parts = folder, ()
        fd = os.open(folder, os.O_RDONLY | _DIRECTORY | CLOEXEC)
    try:
        for part in parts:
            base = base / part
            sub = _subfolder_at(fd, part, base, create)
            os.close(fd)
            fd = sub
        yield FolderHandle(folder, fd)
    finally:
        os.close(fd)


def open_regular_in(folder: FolderHandle, path: Path, flags: int, action: str) -> int:
    """``path``'s file in the open ``folder``, opened with ``flags``: :class:`UnsafeFile` for a link
    or anything but a regular file, also one put there between the check and the opening."""
    mode = folder.mode(path.name)
    if mode is not None and not stat.S_ISREG(mode):
        raise unsafe_file_error(path, action, mode)
    try:
        fd = folder.open(path.name, flags | NOFOLLOW | _NONBLOCK | CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO):  # a link, or a FIFO without a reader, put there after the check
            raise UnsafeFile(f"refusing to {action} {path}: it is not a regular file (it changed while "
                             f"being opened)") from None
        raise
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise unsafe_file_error(path, action, mode)
    return fd


def refuse_hard_links(fd: int, path: Path, action: str = "write") -> None:
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
    with open_folder(path.parent, create=False) as folder:
        return open_regular_in(folder, path, flags, action)


def remove_file(path: str | os.PathLike) -> None:
    """Remove the file at ``path`` if there is one (a link goes as a link); inside a run folder held
    locked, never through a sub-folder that became a link."""
    path = Path(path)
    with suppress(FileNotFoundError), open_folder(path.parent, create=False) as folder:
        folder.unlink(path.name)


def open_to_read(path: str | os.PathLike) -> int:
    """A descriptor of the regular file at ``path``, a link to it included; :class:`UnsafeFile`
    naming it, without waiting, when it is a FIFO, a device or a folder."""
    fd = os.open(path, os.O_RDONLY | _NONBLOCK | CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise UnsafeFile(f"refusing to read {path}: it is {_kind(mode)}, not a regular file")
    return fd


def read_text(path: str | os.PathLike) -> str:
    """The text (UTF-8) of the file at ``path``, a link to it included; :class:`UnsafeFile` naming
    it, without waiting, when it is a FIFO, a device or a folder."""
    with open(open_to_read(path), encoding="utf-8") as f:
        return f.read()


def append_text(path: str | os.PathLike, text: str) -> None:
    """Append ``text`` to the regular file ``path`` (created if missing), never through a link nor
    into a file with other hard links (:class:`UnsafeFile`); a failed write (a full disk) is an
    ``OSError`` naming the file."""
    path = Path(path)
    with open_folder(path.parent, create=True) as folder:
        fd = open_regular_in(folder, path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, "write")
    try:
        refuse_hard_links(fd, path)
        data = memoryview(text.encode())
        while data:
            data = data[os.write(fd, data):]
    except OSError as exc:
        raise OSError(exc.errno, f"could not write {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


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


def make_folder(path: str | os.PathLike) -> None:
    """Create the folder ``path`` if it is missing (inside a run folder held locked, through no link)."""
    with open_folder(Path(path), create=True):
        pass


def remove_names(run: Path, folder: Path, names: Sequence[str]) -> None:
    """Remove the files ``names`` from ``folder``, the run folder ``run`` or one of its sub-folders,
    which is reached from ``run`` without following a link."""
    with suppress(FileNotFoundError), open_folder(folder, create=False, root=run) as opened:
        for name in names:
            opened.unlink(name)
