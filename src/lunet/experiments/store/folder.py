"""The run folder: its layout (run.json, checkpoints, metrics, curves, starts/, class-K/), its
metrics file, its lock, and the checks of paths a run writes to."""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Optional, Sequence

from lunet.experiments.config.errors import NothingToResume, RunExists
from lunet.experiments.config.presets import NUM_CLASSES
from lunet.experiments.files.lock import LOCK_NAME, locked_folder
from lunet.experiments.files.safe import (
    check_regular,
    check_subfolder,
    check_writable_file,
    make_folder,
    open_to_read,
    read_text,
    remove_names,
)

__all__ = ["CHECKPOINT_NAME", "METRICS_NAME", "CURVES_NAME", "RUN_FILE", "RESULT_FILES", "LAYOUT_NAMES",
           "MAX_METRICS_LINE", "NAMED_LINES", "read_metrics", "as_folder", "RunFolder", "run_folder_around",
           "check_output"]

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
RUN_FILE = "run.json"

# what a finished 2-D run writes beside its checkpoint
RESULT_FILES = ("summary.json", "density.png", "samples.png")

# every name a run writes in its folder or in its model folders (class-K/, starts/)
LAYOUT_NAMES = (LOCK_NAME, CHECKPOINT_NAME, METRICS_NAME, CURVES_NAME, RUN_FILE, *RESULT_FILES)


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
    with open(open_to_read(path), "rb") as f:
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


def as_folder(run_dir: "str | os.PathLike | RunFolder") -> "RunFolder":
    """``run_dir`` as a :class:`RunFolder` (itself if it is one already)."""
    return run_dir if isinstance(run_dir, RunFolder) else RunFolder(run_dir)


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
        make_folder(self.path)

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
