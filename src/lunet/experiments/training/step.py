"""One optimisation step of a training run: eager, through ``torch.compile``, replayed as a
CUDA graph (:mod:`lunet.experiments.training.cuda_graph`), or shared by several processes
(``DistributedDataParallel``).

A step never reads back from the device: each adds its loss to a running sum on
the device, which the epoch reads once, at its end.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from lunet.experiments.config.errors import SettingError, error_line
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.data.preprocess import uniform_noise
from lunet.experiments.training.cuda_graph import CaptureFailed, CudaGraphCapture, GraphedSteps, prepare_for_capture
from lunet.experiments.training.distributed import Group
from lunet.experiments.training.log import NATS_PER_DIM, Unit

__all__ = ["AUTO", "LogProbFn", "Objective", "check_shared_config", "StepRunner"]

# the model a training run trains, and the model its log-likelihood function takes
FlowT = TypeVar("FlowT", bound=nn.Module)
# (model, batch, noise) -> log p in nats per row, (B,); noise: U[0, 1) draws of the batch's shape
# for dequantisation (see the Trainer's ``dequantize``), else None
LogProbFn = Callable[[FlowT, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]


@dataclass(frozen=True)
class Objective(Generic[FlowT]):
    """What a run minimises and how it reports it: the mean of ``-log_prob_fn(model, batch, noise) /
    features`` over a batch, in nats per dimension, shown and logged in ``unit``. ``dequantize``: the
    function takes dequantisation noise, U[0, 1) draws of the batch's shape in the model's dtype on the
    batch's device, which the training draws from its seeded generators outside the loss (so that a
    compiled or captured step draws nothing itself); otherwise it gets None."""

    log_prob_fn: LogProbFn[FlowT]
    features: int
    unit: Unit = NATS_PER_DIM
    dequantize: bool = False


# StepRunner's ``capture`` when none is given: a CUDA graph where the device and settings allow one
AUTO = "auto"


def check_shared_config(config: TrainConfig, group: Group) -> None:
    """:class:`SettingError` for settings that several processes sharing one model cannot train with."""
    if not group.shared:
        return
    if config.batch_size < group.world:
        raise SettingError("{batch_size} {size} is below the {world} processes that share each batch; "
                           "give at least {world}", size=config.batch_size, world=group.world)
    if config.compile:
        raise SettingError("{compile} trains in one process only; leave it out when several processes share a model")
    if config.time_budget is not None:
        # each process would read its own clock and stop at its own step
        raise SettingError("{time_budget} trains in one process only; give {epochs} when several processes share "
                           "a model")


class _ShardLoss(nn.Module, Generic[FlowT]):
    """The loss of one process's shard of a global batch as a module's forward, so that
    ``DistributedDataParallel`` sees the pass whose gradients it averages.

    Scaled by ``world / global_rows`` rather than ``1 / shard_rows``: the average over the
    processes is then the mean over the global batch, even when the shards differ in length."""

    def __init__(self, model: FlowT, log_prob_fn: LogProbFn[FlowT], features: int) -> None:
        super().__init__()
        self.model = model
        self.log_prob_fn = log_prob_fn
        self.features = features

    def forward(self, shard: torch.Tensor, noise: Optional[torch.Tensor], global_rows: int, world: int) -> torch.Tensor:
        if shard.shape[0] == 0:  # a last batch with fewer rows than processes: a zero that touches every weight
            return sum((p.sum() * 0 for p in self.model.parameters() if p.requires_grad), torch.zeros(()))
        return -self.log_prob_fn(self.model, shard, noise).sum() * (world / (global_rows * self.features))


class StepRunner(Generic[FlowT]):
    """Optimisation steps of ``model`` on batches of ``train_data`` (rows given as indices).

    Args:
        model, optimizer: what is trained and how.
        objective: the loss (:class:`Objective`).
        train_data: the training rows, where the steps read them (on the GPU for a GPU run).
        config: the run's settings (batch size, clipping, dtype, compile, CUDA graph).
        device: the training device.
        group: the processes sharing each batch.
        capture: a :class:`~lunet.experiments.training.cuda_graph.CudaGraphCapture` (or a stand-in with its
            interface) to replay full batches as a CUDA graph, None for eager steps, or
            :data:`AUTO`: a capture on a GPU with ``config.cuda_graph`` and one process.
    """

    def __init__(
        self, model: FlowT, optimizer: torch.optim.Optimizer, objective: Objective[FlowT], train_data: torch.Tensor,
        config: TrainConfig, device: torch.device, group: Group, capture: Any = AUTO,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.log_prob_fn = objective.log_prob_fn
        self.features = objective.features
        self.train_data = train_data
        self.config = config
        self.device = device
        self.group = group
        self.dequantize = objective.dequantize
        if capture == AUTO:
            # several processes sharing a model exchange gradients between backward and Adam: eager
            capture = (CudaGraphCapture(device) if device.type == "cuda" and config.cuda_graph and not group.shared
                       else None)
        self.capture = capture
        self.graphed: Optional[GraphedSteps] = None  # built at the first full batch
        self.compiled = config.compile
        # without graphs of its own, a GPU run replays the compiled loss as CUDA graphs (reduce-overhead)
        mode = "reduce-overhead" if device.type == "cuda" and capture is None else None
        self._loss = torch.compile(self.batch_loss, mode=mode) if self.compiled else self.batch_loss
        self._shard_loss: Optional[nn.Module] = None  # DistributedDataParallel over _ShardLoss, built at first use
        self.epoch_total = torch.zeros((), dtype=torch.float64, device=device)  # the running loss sum

    @property
    def mode(self) -> str:
        """``"cuda-graph"`` once full batches replay a captured step, else ``"eager"``."""
        return "cuda-graph" if self.graphed is not None and self.graphed.captured else "eager"

    def batch_loss(self, batch: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        """The training loss of one batch: mean negative log-likelihood in nats per dimension."""
        return -self.log_prob_fn(self.model, batch, noise).mean() / self.features

    def step(self, rows: torch.Tensor, generator: torch.Generator) -> None:
        """One optimisation step on the global batch ``rows``, its noise drawn from ``generator``."""
        if self.capture is not None and rows.numel() == self.config.batch_size:
            self._full_batch_step(rows, generator)
        else:
            self._eager_step(rows, generator)

    def _loss_of(self, batch: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        if self._loss is self.batch_loss:
            return self._loss(batch, noise)
        # one compiled graph for every batch size (the last batch of an epoch is smaller)
        torch._dynamo.maybe_mark_dynamic(batch, 0)
        if noise is not None:
            torch._dynamo.maybe_mark_dynamic(noise, 0)
        try:
            return self._loss(batch, noise)
        except Exception as exc:  # no C compiler, an unsupported platform: train as before
            if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
                raise  # the CUDA graph's capture failed, not the compiler: the caller falls back
            self._loss, self.compiled = self.batch_loss, False
            tqdm.write(f"torch.compile failed ({error_line(exc)}); training eagerly")
            return self._loss(batch, noise)

    def _noise_for(self, batch: torch.Tensor, generator: torch.Generator) -> Optional[torch.Tensor]:
        return uniform_noise(batch, generator, self.config.torch_dtype) if self.dequantize else None

    def _step_loss(self, rows: torch.Tensor, generator: torch.Generator,
                   noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The loss of the global batch ``rows``: its mean NLL per dimension, or with several
        processes this one's share of it. ``noise``: the batch's noise if drawn already."""
        if not self.group.shared:
            batch = self.train_data[rows]
            return self._loss_of(batch, self._noise_for(batch, generator) if noise is None else noise)
        if self._shard_loss is None:
            from torch.nn.parallel import DistributedDataParallel

            # the model's buffers (standardisation, fixed slopes) do not change in training: no syncing per step
            no_sync = ("forward_sync_buffers"
                       if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                       else "broadcast_buffers")
            sync_off: dict[str, Any] = {no_sync: False}
            self._shard_loss = DistributedDataParallel(
                _ShardLoss(self.model, self.log_prob_fn, self.features),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **sync_off,
            )
        shard = self.train_data[self.group.shard(rows)]
        return self._shard_loss(shard, self._noise_for(shard, generator), rows.numel(), self.group.world)

    def _optimise(self, loss: torch.Tensor, rows: int) -> None:
        """Backward (into unset gradients), clipping and Adam for the ``loss`` of a batch of
        ``rows`` rows, whose mean (with several processes, this one's share of it) joins the
        epoch's sum."""
        loss.backward()
        if self.config.grad_clip is not None:
            # no error_if_nonfinite: that would read the norm back; a non-finite loss ends the epoch instead
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.epoch_total.add_(loss.detach() * (rows / self.group.world))

    def _eager_step(self, rows: torch.Tensor, generator: torch.Generator, noise: Optional[torch.Tensor] = None) -> None:
        loss = self._step_loss(rows, generator, noise)
        self.optimizer.zero_grad(set_to_none=True)
        self._optimise(loss, rows.numel())

    def graphed_body(self) -> None:
        """The step that :class:`~lunet.experiments.training.cuda_graph.GraphedSteps` captures: its batch comes
        from the fixed buffers."""
        graphed = self.graphed
        assert graphed is not None  # runs only within calls of self.graphed
        self._optimise(self._loss_of(self.train_data[graphed.rows], graphed.noise), graphed.rows.numel())

    def _full_batch_step(self, rows: torch.Tensor, generator: torch.Generator) -> None:
        """A step on a full batch: through the CUDA graph while there is one, else eager."""
        if self.graphed is None:
            prepare_for_capture(self.optimizer, self.device, self.capture.capturable)
            noise_like = ((self.config.batch_size, self.features), self.config.torch_dtype, self.train_data.device)
            self.graphed = GraphedSteps(
                self.graphed_body, lambda: self.optimizer.zero_grad(set_to_none=True), self.capture,
                self.config.batch_size, self.train_data.device, noise_like if self.dequantize else None,
            )
        try:
            self.graphed(rows, generator)
        except CaptureFailed as exc:
            graphed, self.capture, self.graphed = self.graphed, None, None
            for group in self.optimizer.param_groups:
                group["capturable"] = False
            tqdm.write(f"capturing the training step as a CUDA graph failed ({exc}); training eagerly")
            self._eager_step(graphed.rows, generator, graphed.noise)  # the batch and noise already drawn
