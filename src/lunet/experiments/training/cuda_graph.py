"""Training steps replayed as one CUDA graph.

On a GPU a training step of LU-Net is a few hundred small kernel launches; most
of its time is the launching, not the arithmetic. :class:`GraphedSteps`
captures the whole step of a full batch (gather, dequantisation, forward,
loss, backward, gradient clipping, Adam) once, as a CUDA graph, and replays
it for every later full batch: one launch per step. The batch's row indices
and its dequantisation noise reach the graph through fixed buffers, filled
before each replay; the learning rate through a tensor that the schedule
updates in place.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional

import torch

from lunet.experiments.config.errors import error_line
from lunet.experiments.data.preprocess import uniform_noise
from lunet.experiments.training.schedule import rate_numbers, rate_tensors

__all__ = ["WARMUP_STEPS", "CaptureFailed", "CudaGraphCapture", "warmed_capture", "prepare_for_capture",
           "portable_optimizer_state", "GraphedSteps"]

# Eager steps before the capture: the allocator, the library handles and Adam's
# state are set up by real steps, so that the capture records only the step itself.
WARMUP_STEPS = 3


class CaptureFailed(RuntimeError):
    """A step could not be captured as a CUDA graph; the message says why."""


class CudaGraphCapture:
    """Captures work on ``device`` as a CUDA graph.

    ``warmup()`` is the context of the eager steps before a capture (a side
    stream, as the capture itself uses one); ``capture(body)`` records
    ``body()`` without running it and returns the graph's replay.
    """

    capturable = True  # the optimiser must keep its step counts on the device

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.stream = torch.cuda.Stream(device)

    @contextlib.contextmanager
    def warmup(self) -> Iterator[None]:
        with torch.cuda.device(self.device):
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                yield
            torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def capture(self, body: Callable[[], None]) -> Callable[[], None]:
        """Record ``body()`` on this device's side stream; raises what ``body`` raised (not the
        capture's own follow-up error), with the caller's stream current again."""
        graph = torch.cuda.CUDAGraph()
        # torch.cuda.graph would capture on the current device's stream (not ours for cuda:N) and,
        # should the body fail, leave its capture stream current and report the capture's error
        with torch.cuda.device(self.device):
            torch.cuda.synchronize(self.device)
            self.stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(self.stream):
                graph.capture_begin()
                try:
                    body()
                except BaseException:
                    with contextlib.suppress(Exception):
                        graph.capture_end()
                    raise
                graph.capture_end()
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
        return graph.replay


def warmed_capture(capture: CudaGraphCapture, body: Callable[[], None],
                   before_each: Callable[[], None] = lambda: None) -> Callable[[], None]:
    """``body`` run ``WARMUP_STEPS`` times in ``capture``'s warm-up context, then captured;
    returns the replay. ``before_each`` runs before every run and before the capture
    (unsetting gradients, say)."""
    for _ in range(WARMUP_STEPS):
        before_each()
        with capture.warmup():
            body()
    before_each()
    return capture.capture(body)


def prepare_for_capture(optimizer: torch.optim.Optimizer, device: torch.device, capturable: bool) -> None:
    """Make ``optimizer``'s steps capturable: every parameter group gets its learning rate as a
    tensor on ``device`` (:func:`~lunet.experiments.training.schedule.rate_tensors`) and the flag
    ``capturable``, and the optimiser no longer warns about capturable steps run eagerly (the
    warm-up steps are)."""
    rate_tensors(optimizer, device)
    for group in optimizer.param_groups:
        group["capturable"] = capturable
    optimizer._warned_capturable_if_run_uncaptured = True


def portable_optimizer_state(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``optimizer.state_dict()`` with plain-float learning rates and ``capturable`` off, so that a
    checkpoint written by graph-captured training resumes on any device, captured or not."""
    state = rate_numbers(optimizer.state_dict())
    for group in state["param_groups"]:
        group["capturable"] = False
    return state


class GraphedSteps:
    """Training steps on full batches of ``batch_size`` rows: the first
    ``WARMUP_STEPS`` eager, then captured once and replayed.

    Args:
        body: one step that reads its batch from :attr:`rows` (indices into the
            training data) and :attr:`noise` (dequantisation noise, or None) and
            leaves the gradients to the backward pass it runs (they are unset
            before each eager step and before the capture).
        zero_grad: unsets the gradients.
        capture: a :class:`CudaGraphCapture`, or a stand-in with its interface.
        batch_size: the rows of a full batch.
        rows_device: where the row indices live (the training data's device).
        noise_like: shape, dtype and device of the noise; None when the data
            need none.
    """

    def __init__(
        self, body: Callable[[], None], zero_grad: Callable[[], None], capture: Any, batch_size: int,
        rows_device: torch.device, noise_like: Optional[tuple[tuple[int, ...], torch.dtype, torch.device]],
    ) -> None:
        self.body = body
        self.zero_grad = zero_grad
        self.capturer = capture
        self.rows = torch.zeros(batch_size, dtype=torch.long, device=rows_device)
        self.noise = (None if noise_like is None
                      else torch.zeros(noise_like[0], dtype=noise_like[1], device=noise_like[2]))
        self.replay: Optional[Callable[[], None]] = None
        self.eager_steps = 0

    @property
    def captured(self) -> bool:
        return self.replay is not None

    def __call__(self, rows: torch.Tensor, generator: Optional[torch.Generator]) -> None:
        """One optimisation step on the batch ``rows``, its noise drawn from ``generator``;
        ``CaptureFailed`` if the capture fails (this batch is then not yet trained on; its rows
        and noise are in :attr:`rows` and :attr:`noise`)."""
        self.rows.copy_(rows)
        if self.noise is not None:
            uniform_noise(self.noise, generator, self.noise.dtype, out=self.noise)
        if self.replay is None:
            self.zero_grad()
            if self.eager_steps < WARMUP_STEPS:
                with self.capturer.warmup():
                    self.body()
                self.eager_steps += 1
                return
            try:
                self.replay = self.capturer.capture(self.body)
            except Exception as exc:  # noqa: BLE001 (reported by the caller, which then trains eagerly)
                self.zero_grad()
                raise CaptureFailed(error_line(exc)) from exc
        self.replay()
