"""What the benchmarks measure with: wall times with the device synchronised, the optimisation
steps they time, and the peak memory of a few training steps in a fresh process.

``peak_training_memory_mib`` runs :func:`memory_probe` in a child process (``python -m`` this
module), so that the figure belongs to the measured model alone and not to what the parent
process holds. The steps to measure come from a *factory*, named ``"module:function"`` so that
the child can import it: ``factory(*args)`` runs first and makes the inputs (not counted);
the builder it returns then makes the model and its optimiser (counted) and returns one step.
"""

from __future__ import annotations

import importlib
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Protocol, Sequence

import torch
from torch import nn

__all__ = ["Timing", "Trainable", "time_call", "synchronize", "training_step", "captured_step", "proc_status_kib",
           "memory_probe", "peak_training_memory_mib"]

StepFactory = Callable[..., Callable[[], Callable[[], object]]]


class Trainable(Protocol):
    """What :func:`training_step` trains: a flow's parameters and its ``log_prob``."""

    def parameters(self) -> Iterator[nn.Parameter]: ...

    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Timing:
    """Median and range of repeated wall times, in seconds."""

    median: float
    low: float
    high: float
    repeats: int

    def scaled(self, factor: float) -> "Timing":
        return Timing(self.median * factor, self.low * factor, self.high * factor, self.repeats)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> Timing:
    """Wall time of ``fn()`` with the device synchronised: median, min, max over ``repeats``."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times), max(times), repeats)


def training_step(model: Trainable, batch: torch.Tensor, compiled: bool = False) -> Callable[..., None]:
    """A closure doing one optimisation step (forward, loss, backward, Adam update) on ``batch`` or a given one.

    Uses the fused Adam kernel and skips the value checks, as the trainer's steps do;
    ``compiled``: the loss through ``torch.compile``, as ``lunet train --compile`` has it."""
    from lunet.checks import set_value_checks

    opt = torch.optim.Adam(model.parameters(), lr=1e-5, fused=True)

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        return -model.log_prob(x).mean()

    loss_fn = torch.compile(loss_of) if compiled else loss_of

    def step(x: torch.Tensor = batch) -> None:
        with set_value_checks(False):
            loss = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def captured_step(loss_of: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor],
                  batch: torch.Tensor) -> Callable[[], None]:
    """One optimisation step on a CUDA ``batch`` (``loss_of(batch)``, backward, fused capturable Adam)
    captured as one CUDA graph; returns its replay. Raises what the capture raises (an operation that
    waits for the host, say)."""
    from lunet.experiments.training.cuda_graph import CudaGraphCapture, prepare_for_capture, warmed_capture

    opt = torch.optim.Adam(params, lr=1e-5, fused=True)
    prepare_for_capture(opt, batch.device, capturable=True)  # as the trainer's captured steps have it
    static = batch.clone()

    def body() -> None:
        loss_of(static).backward()
        opt.step()

    return warmed_capture(CudaGraphCapture(batch.device), body, lambda: opt.zero_grad(set_to_none=True))


def proc_status_kib(field: str) -> int:
    """A field of ``/proc/self/status`` in KiB (``VmRSS``, ``VmHWM``); Linux only."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _factory(name: str) -> StepFactory:
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function)


def memory_probe(factory: str, args: Sequence[Any], device: str, steps: int) -> float:
    """In this process: the peak memory, MiB, of ``steps`` steps made by ``factory`` (see the module's
    docstring). CPU: the resident set's high-water mark (VmHWM), reset once the inputs exist, minus
    the resident set then; CUDA: ``max_memory_allocated``."""
    dev = torch.device(device)
    torch.manual_seed(0)
    build = _factory(factory)(*args)
    if dev.type == "cpu":
        with open("/proc/self/clear_refs", "w") as f:  # Linux: "5" resets the high-water mark
            f.write("5")
        before = proc_status_kib("VmRSS")
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    step = build()
    for _ in range(steps):
        step()
    synchronize(dev)
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return (proc_status_kib("VmHWM") - before) / 1024


def peak_training_memory_mib(factory: str, args: Sequence[Any], device: str, steps: int, what: str) -> float:
    """:func:`memory_probe` in a fresh child process; ``RuntimeError`` naming ``what`` (the model)
    with the child's last error line if it fails."""
    out = subprocess.run([sys.executable, "-m", __name__, json.dumps([factory, list(args), device, steps])],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the memory probe of {what} failed: {out.stderr.strip().splitlines()[-1:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1]))


if __name__ == "__main__":
    factory, args, device, steps = json.loads(sys.argv[1])
    print(json.dumps(memory_probe(factory, args, device, steps)))
