"""The lock of a folder a training writes in: one training at a time per run folder, its holder
named when another asks, the folder watched so that a training stops rather than write elsewhere."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from lunet.experiments.config.errors import NamesSettings

if TYPE_CHECKING:
    from lunet.experiments.store.folder import RunFolder
from lunet.experiments.files.safe import (
    HeldFolder,
    check_writable,
    held_folders,
    open_folder,
    open_regular_in,
    refuse_hard_links,
)

__all__ = ["LOCK_NAME", "RunFolderBusy", "locked_folder"]

LOCK_NAME = ".lock"


class RunFolderBusy(NamesSettings, RuntimeError):
    """Another training holds the run folder (or this process holds it already)."""


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
    if folder in held_folders:
        raise RunFolderBusy("{folder} is locked by this process already: a run folder is locked once, by the "
                            "run that writes in it", folder=folder)
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform
        run.check_files()
        yield folder
        return
    with open_folder(given, create=False) as opened:
        fd = open_regular_in(opened, given / LOCK_NAME, os.O_RDWR | os.O_CREAT, "write")
        try:
            refuse_hard_links(fd, given / LOCK_NAME)  # before the lock or the record touches the file
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
            held_folders[folder] = HeldFolder(Path(os.path.abspath(given)), folder, opened.fd, (st.st_dev, st.st_ino))
            try:
                yield folder
            finally:
                del held_folders[folder]
        finally:
            os.close(fd)  # releases the lock
