"""Several processes training together, with ``torch.distributed`` as launched by ``torchrun``.

A :class:`Group` names this process's place among the processes of one run.
Data-parallel training shares one model: every process takes its own shard of
each global batch and ``DistributedDataParallel`` averages the gradients.
Per-class runs share nothing: each process trains its own classes. Rank 0 of a
shared model is the only one that writes files; decisions that read the disk
(may the run start? what does the checkpoint hold?) are taken there and
broadcast, so that every process goes the same way.
"""

from __future__ import annotations

import datetime
import os
import signal
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional, TypeVar

import torch
import torch.distributed as dist

from lunet.experiments.config.errors import NamesSettings

__all__ = ["T", "TIMEOUT", "Group", "SINGLE", "launched", "current", "start", "stop"]

T = TypeVar("T")
# A peer that died leaves the others waiting in a collective: give up after this long
# (torchrun normally stops them at once).
TIMEOUT = datetime.timedelta(minutes=30)
# What a rank-0 decision may raise, most specific first: every process raises the first
# class the error is an instance of, with its message (RuntimeError for anything else);
# an error that names settings travels whole.
_RERAISED = (FileNotFoundError, FileExistsError, ValueError, TypeError, OSError, RuntimeError)


@dataclass(frozen=True)
class Group:
    """This process's ``rank`` among ``world`` processes; ``world == 1`` is a plain single process."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the files of the model it trains."""
        return self.rank == 0

    @property
    def shared(self) -> bool:
        """Whether several processes train one model together."""
        return self.world > 1

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's contiguous share of ``rows`` (shares differ in length by at most one)."""
        return torch.tensor_split(rows, self.world)[self.rank] if self.shared else rows

    def owns(self, index: int) -> bool:
        """Whether the ``index``-th of several independent jobs is this process's (round robin)."""
        return index % self.world == self.rank

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of ``value`` over the processes (``value`` itself for one process)."""
        if not self.shared:
            return value
        home = value.device
        if dist.get_backend() == "nccl":  # NCCL reduces GPU tensors only
            value = value.to(torch.device("cuda", torch.cuda.current_device()))
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value.to(home)

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every process."""
        if not self.shared:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, decision: Callable[[], T]) -> T:
        """Run ``decision`` on rank 0 and return its result everywhere; an error it raises is
        raised on every process, so that none is left waiting for the others."""
        if not self.shared:
            return decision()
        outcome: tuple[Optional[int], Any] = (None, None)
        if self.is_main:
            try:
                outcome = (None, decision())
            except NamesSettings as exc:  # travels whole, so that every process names the settings alike
                outcome = (-1, exc)
            except Exception as exc:  # every process must hear of it, whatever it is
                index = next((i for i, cls in enumerate(_RERAISED) if isinstance(exc, cls)),
                             _RERAISED.index(RuntimeError))
                outcome = (index, str(exc) if str(exc) else type(exc).__name__)
        kind, value = self.broadcast(outcome)
        if kind == -1:
            raise value
        if kind is not None:
            raise _RERAISED[kind](value)
        return value

    def barrier(self) -> None:
        if self.shared:
            dist.barrier()

    @contextmanager
    def entered_on_main(self, context: AbstractContextManager) -> Iterator[None]:
        """Enter ``context`` on the writing process only (a run folder's lock, say); if that
        fails, every process raises its error."""
        if not self.shared:
            with context:
                yield
            return
        entered = self.on_main(lambda: context.__enter__() or True)
        try:
            yield
        finally:
            if self.is_main and entered:
                context.__exit__(None, None, None)


SINGLE = Group()


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current() -> Group:
    """The group of the initialised default process group, else :data:`SINGLE`."""
    if dist.is_available() and dist.is_initialized():
        return Group(dist.get_rank(), dist.get_world_size())
    return SINGLE


def start(device: str) -> tuple[Group, str]:
    """Join the processes ``torchrun`` started (gloo for the CPU, NCCL for CUDA devices);
    returns the group and this process's device (``cuda:LOCAL_RANK`` for ``cuda``).

    Stopping one process (torchrun does so when another fails) raises
    ``KeyboardInterrupt`` here, so that the run ends as a Ctrl-C would."""
    if not launched():
        return SINGLE, device
    if not dist.is_available():
        raise ValueError("this PyTorch build has no torch.distributed; run lunet train in one process")
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was requested but CUDA is not available here; use --device cpu")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if on_gpu else "gloo", timeout=TIMEOUT)
    signal.signal(signal.SIGTERM, _interrupt)
    return current(), device


def stop() -> None:
    """Leave the process group (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _interrupt(signum: int, frame: Optional[object]) -> None:
    raise KeyboardInterrupt
