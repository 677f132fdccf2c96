"""The log of one model's training: ``metrics.jsonl``, ``curves.png``, the progress bar and
the lines on the console."""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

from tqdm.auto import tqdm

from lunet.experiments.files.atomic import write_text_atomic
from lunet.experiments.files.safe import append_text, remove_file
from lunet.experiments.store.folder import RunFolder, read_metrics

__all__ = ["CURVES_EVERY_SECONDS", "Unit", "NATS_PER_DIM", "format_seconds", "RunLog"]

# curves.png is redrawn at most this often (and after the last epoch): drawing it takes
# about 0.15 s, a third of an epoch where epochs are fast (on a GPU)
CURVES_EVERY_SECONDS = 30.0


@dataclass(frozen=True)
class Unit:
    """How a run reports its negative log-likelihood: ``convert`` maps nats per dimension
    to the figure, ``key`` names it in ``metrics.jsonl`` (``train_<key>``, ``val_<key>``)
    and ``label`` follows it on the console and on the curves' axis."""

    key: str
    label: str
    convert: Callable[[float], float]

    def describe(self, nats_per_dim: float) -> str:
        return f"{self.convert(nats_per_dim):.4f} {self.label}"


NATS_PER_DIM = Unit("nats_per_dim", "nats/dim", lambda v: v)


def format_seconds(seconds: float) -> str:
    """``0.6 s``, ``42 s``, ``3 min 05 s``, ``1 h 02 min``: a duration as people read it."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole // 60 % 60:02d} min"


class RunLog:
    """What a training tells about itself, in ``folder`` and on the console.

    Args:
        folder: where ``metrics.jsonl`` and ``curves.png`` go.
        unit: how the NLL is reported (metrics keys, console, curves).
        progress: whether the progress bar and the per-epoch lines show.
        writes: whether this process writes the files (with several processes, rank 0 alone).

    :meth:`epoch_begins` is called before every epoch; it does nothing here, and a
    subclass may watch the run there (stop it, say).
    """

    def __init__(self, folder: RunFolder, unit: Unit = NATS_PER_DIM, progress: bool = True,
                 writes: bool = True) -> None:
        self.folder = folder
        self.unit = unit
        self.progress = progress and writes
        self.writes = writes
        self.fields: dict[str, Any] = {}  # figures every row carries (a run's baseline, say)
        self._bar: Optional[tqdm] = None
        self._curves_drawn_at: Optional[float] = None
        self._curves_stale = False  # rows written since curves.png was drawn

    def restart(self) -> None:
        """A new run: the rows of an earlier one go."""
        if self.writes:
            remove_file(self.folder.metrics)

    def keep_until(self, epoch: int) -> None:
        """A resumed run: rows logged after its checkpoint (``epoch``) belong to epochs that will be
        redone; a line cut short by a kill, or any other line that is no row of this run's epochs,
        is dropped, with a warning naming it (the checkpoint, not the log, holds the run)."""
        metrics = self.folder.metrics
        if not self.writes or not os.path.lexists(metrics):
            return
        rows, problems = read_metrics(metrics, last_epoch=epoch)
        if problems:
            print(f"warning: dropped from {metrics}: {'; '.join(problems)}")
        write_text_atomic(metrics, "".join(json.dumps(r) + "\n" for r in rows))

    def note(self, text: str) -> None:
        """A line on the console, above the progress bar."""
        if self.progress:
            tqdm.write(text)

    @contextlib.contextmanager
    def training(self, total: float, done: float, unit: str = "step") -> Iterator[None]:
        """The progress bar over the run's steps (or its budget's seconds, ``unit="s"``) while
        training; a stop (Ctrl-C, divergence) still leaves curves of every row written."""
        fmt = None if unit == "step" else "{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]"
        self._bar = tqdm(total=total, initial=done, desc="training", unit=unit, bar_format=fmt,
                         disable=not self.progress, mininterval=1.0)
        try:
            with self._bar:
                yield
        finally:
            self._bar = None
            if self._curves_stale:
                with contextlib.suppress(Exception):  # never in place of why training stopped
                    self.draw_curves()

    def epoch_begins(self, epoch: int) -> None:
        """Before epoch ``epoch`` + 1 trains."""

    def advance(self, amount: float = 1) -> None:
        """One step done (or ``amount`` more of the bar's unit)."""
        if self._bar is not None:
            self._bar.update(amount)

    def write_row(self, row: dict[str, Any]) -> None:
        """Append ``row`` to ``metrics.jsonl``."""
        if self.writes:
            append_text(self.folder.metrics, json.dumps({**row, **self.fields}) + "\n")
            self._curves_stale = True

    def redraw(self, last: bool) -> None:
        """Redraw the curves after the ``last`` epoch, or if they were drawn long enough ago."""
        now = time.monotonic()
        due = self._curves_drawn_at is None or now - self._curves_drawn_at >= CURVES_EVERY_SECONDS
        if self.writes and (last or due):
            self.draw_curves()
            self._curves_drawn_at = now

    def report(self, epoch: int, epochs: Optional[int], train_nll: float, val_nll: float,
               train_seconds: float) -> None:
        """The line of an evaluated epoch, NLLs in nats per dimension (``epochs``: the run's length,
        None for a run counted in seconds)."""
        of = "" if epochs is None else f"/{epochs}"
        self.note(f"epoch {epoch}{of}  train {self.unit.describe(train_nll)}  "
                  f"val {self.unit.describe(val_nll)}  ({format_seconds(train_seconds)} training)")
        if self._bar is not None:
            self._bar.set_postfix_str(f"epoch {epoch}{of}, val {self.unit.describe(val_nll)}")

    def draw_curves(self) -> None:
        """``curves.png`` beside the metrics: train and validation NLL per epoch."""
        from lunet.experiments.plots import plot_training_curves

        self._curves_stale = False
        plot_training_curves(self.folder.metrics, self.folder.curves, self.unit.key, self.unit.label)
