"""Maximum-likelihood training with atomic, exactly resumable checkpoints.

The loop is model- and data-agnostic: it receives a function giving
``log p(batch)`` in nats per sample and minimises the mean negative
log-likelihood per dimension. Every epoch ends with a validation pass, a line
in ``metrics.jsonl`` and a checkpoint written atomically; the best weights on
the validation split are kept beside the last ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from lunet.checks import set_value_checks
from lunet.experiments.checkpoint import (
    check_training_state, error_line, load_checkpoint, save_checkpoint, stale_temporaries, tensor_bytes,
)
from lunet.experiments.distributed import SINGLE, Group, current
from lunet.experiments.preprocess import uniform_noise
from lunet.experiments.rundir import RunFolder, append_text, read_metrics, write_text_atomic
from lunet.experiments.settings import TrainConfig
from lunet.experiments.steps import (
    WARMUP_STEPS, CaptureFailed, CudaGraphCapture, GraphedSteps, portable_optimizer_state, prepare_for_capture,
)

# (model, batch, noise) -> log p in nats per row, (B,); noise: U[0, 1) draws of the batch's shape
# for dequantisation (see Trainer's ``dequantize``), else None
LogProbFn = Callable[[nn.Module, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]

# Settings that may differ when a run is resumed: where it runs, how often it
# reports, and its length (``--resume --epochs N`` extends a run; a cosine
# schedule is then recomputed over the new length).
RESUMABLE_CHANGES = ("device", "eval_every", "epochs", "compile", "cuda_graph")
# After a divergence these may change too: the way to continue from the last
# good checkpoint with a gentler step.
RESUMABLE_AFTER_DIVERGENCE = ("lr", "grad_clip")
# A validation NLL this many nats per dimension above the run's own start
# counts as divergence. Training lowers the NLL from the start (a Gaussian fit
# for image runs, the standardised identity for the 2-D mixture); a run that
# is worse than where it began by a factor e of density in every dimension
# has lost more than it learned, and its weights are no longer a model worth
# keeping as "best".
DIVERGENCE_MARGIN_NATS_PER_DIM = 1.0
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


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite, or validation fell far below the start; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)`` for a device this machine has; ``ValueError`` saying why not otherwise."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    if device.type == "cpu" and device.index not in (None, 0):
        raise ValueError(f"device {name!r}: the CPU is one device; use cpu")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} was requested but CUDA is not available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def data_fingerprint(data: torch.Tensor) -> str:
    """Shape, dtype and SHA-256 of a data tensor: what a resumed run must train on again."""
    digest = hashlib.sha256(tensor_bytes(data)).hexdigest()
    return f"{tuple(data.shape)} {data.dtype} sha256:{digest[:16]}"


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


def _lr_lambda(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.schedule == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@torch.no_grad()
def mean_log_prob(
    model: nn.Module, data: torch.Tensor, log_prob_fn: LogProbFn, batch_size: int, seed: int, group: Group = SINGLE,
    dequantize: bool = False,
) -> float:
    """Mean ``log p`` in nats per sample over ``data``; with ``dequantize`` each batch's noise
    comes from its own seed (derived from ``seed``). With several processes the batches are
    dealt out and the sums added, so the figure does not depend on how many processes share it."""
    was_training = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    total = torch.zeros((), dtype=torch.float64)
    for index, start in enumerate(range(0, data.shape[0], batch_size)):
        if group.owns(index):
            batch = data[start : start + batch_size]
            noise = None
            if dequantize:
                gen = torch.Generator(device="cpu").manual_seed(_noise_seed(seed, "validation", index))
                noise = uniform_noise(batch, gen, dtype)
            total += log_prob_fn(model, batch, noise).double().sum().cpu()
    model.train(was_training)
    return float(group.all_sum(total)) / data.shape[0]


def check_shared_config(config: TrainConfig, group: Group) -> None:
    """``ValueError`` for settings that several processes sharing one model cannot train with."""
    if not group.shared:
        return
    if config.batch_size < group.world:
        raise ValueError(f"--batch-size {config.batch_size} is below the {group.world} processes that share "
                         f"each batch; give at least {group.world}")
    if config.compile:
        raise ValueError("--compile trains in one process only; leave it out when several processes share a model")


class _ShardLoss(nn.Module):
    """The loss of one process's shard of a global batch as a module's forward, so that
    ``DistributedDataParallel`` sees the pass whose gradients it averages.

    Scaled by ``world / global_rows`` rather than ``1 / shard_rows``: the average over the
    processes is then the mean over the global batch, even when the shards differ in length."""

    def __init__(self, model: nn.Module, log_prob_fn: LogProbFn, dim: int) -> None:
        super().__init__()
        self.model = model
        self.log_prob_fn = log_prob_fn
        self.dim = dim

    def forward(self, shard: torch.Tensor, noise: Optional[torch.Tensor], global_rows: int, world: int) -> torch.Tensor:
        if shard.shape[0] == 0:  # a last batch with fewer rows than processes: a zero that touches every weight
            return sum((p.sum() * 0 for p in self.model.parameters() if p.requires_grad), torch.zeros(()))
        return -self.log_prob_fn(self.model, shard, noise).sum() * (world / (global_rows * self.dim))


def _noise_seed(*parts: object) -> int:
    """A seed for one stream of noise, named by ``parts`` (the run's seed, what it is for, ...)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


class Trainer:
    """Trains ``model`` on ``train_data`` and selects on ``val_data``.

    Args:
        model: a flow with trainable parameters.
        model_spec: the spec that rebuilds it (stored in the checkpoint).
        log_prob_fn: ``(model, raw_batch, noise) -> log p`` in nats, (B,).
        dim: data dimension, for per-dimension losses.
        out_dir: where ``checkpoint.pt`` and ``metrics.jsonl`` go; locked while
            :meth:`fit` runs, so that two trainings cannot write there at once.
        unit: how the NLL is reported (metrics keys, console, curves).
        group: the processes training this model together (default: those of the
            initialised ``torch.distributed`` group, else this process alone). Each
            takes its shard of every global batch of ``config.batch_size`` rows;
            rank 0 alone writes files and shows progress.
        dequantize: whether ``log_prob_fn`` takes dequantisation noise, U[0, 1) draws of
            the batch's shape in the model's dtype on the batch's device (else it gets
            None). The trainer draws it from its seeded generators, outside the loss, so
            that a compiled or captured step draws nothing itself.
    """

    def __init__(
        self,
        model: nn.Module,
        model_spec: dict[str, Any],
        config: TrainConfig,
        train_data: torch.Tensor,
        val_data: torch.Tensor,
        log_prob_fn: LogProbFn,
        dim: int,
        out_dir: str | Path,
        unit: Unit = NATS_PER_DIM,
        extra: Optional[dict[str, Any]] = None,
        progress: bool = True,
        group: Optional[Group] = None,
        dequantize: bool = False,
    ) -> None:
        self.config = config
        self.group = current() if group is None else group
        check_shared_config(config, self.group)
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":
            # Fixed batch shapes: let cuDNN pick its fastest convolution once.
            torch.backends.cudnn.benchmark = True
        if train_data.shape[0] < 1 or val_data.shape[0] < 1:
            raise ValueError(
                f"training needs at least one training and one validation example, "
                f"got {train_data.shape[0]} and {val_data.shape[0]}"
            )
        if train_data.is_floating_point() and not bool(torch.isfinite(train_data).all()):
            # checked once here: the steps skip the per-batch checks that would wait for the device
            bad = int((~torch.isfinite(train_data)).sum())
            raise ValueError(f"the training data hold {bad} NaN or infinite value(s); shape {tuple(train_data.shape)}")
        self.model = model.to(device=self.device, dtype=config.torch_dtype)
        self.model_spec = model_spec
        # On a GPU the training data live there, and the batches, their noise and their loss stay there:
        # a step copies nothing to or from the host.
        self.resident = self.device.type == "cuda"
        self.train_data = train_data.to(self.device) if self.resident else train_data
        self.val_data = val_data
        self.data = {"train": data_fingerprint(train_data), "val": data_fingerprint(val_data)}
        self.log_prob_fn = log_prob_fn
        self.dequantize = dequantize
        self.dim = dim
        self.folder = RunFolder(out_dir)
        self.unit = unit
        self.extra = extra or {}
        self.progress = progress and self.group.is_main
        self.steps_per_epoch = math.ceil(train_data.shape[0] / config.batch_size)
        # The fused kernel makes one pass over each parameter instead of ~10.
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(config, self.steps_per_epoch * config.epochs)
        )
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)  # the shuffled orders
        # the dequantisation noise: drawn where the data are
        self.noise = torch.Generator(device=self.device).manual_seed(config.seed) if self.resident else self.generator
        self.epoch = 0
        self.best_val: Optional[float] = None
        self.best_state: Optional[dict[str, torch.Tensor]] = None
        self.start_val: Optional[float] = None  # validation log p of the untrained model, nats per sample
        self.train_seconds = 0.0
        self._resumed = False
        # On a GPU, full batches replay as one CUDA graph (see steps.py); several processes sharing a
        # model exchange gradients between backward and Adam, which stays eager.
        self._capture: Any = (CudaGraphCapture(self.device)
                              if self.device.type == "cuda" and config.cuda_graph and not self.group.shared else None)
        self._graphed: Optional[GraphedSteps] = None  # built at the first full batch
        self.compiled = config.compile
        # without graphs of its own, a GPU run replays the compiled loss as CUDA graphs (reduce-overhead)
        mode = "reduce-overhead" if self.device.type == "cuda" and self._capture is None else None
        self._loss = torch.compile(self._batch_loss, mode=mode) if self.compiled else self._batch_loss
        self._shard_loss: Optional[nn.Module] = None  # DistributedDataParallel over _ShardLoss, built by fit()
        self._epoch_total = torch.zeros((), dtype=torch.float64, device=self.device)  # the running loss sum
        self._curves_drawn_at: Optional[float] = None
        self._curves_stale = False  # rows written since curves.png was drawn

    @property
    def checkpoint_path(self) -> Path:
        return self.folder.checkpoint

    @property
    def step_mode(self) -> str:
        """``"cuda-graph"`` once full batches replay a captured step, else ``"eager"``."""
        return "cuda-graph" if self._graphed is not None and self._graphed.captured else "eager"

    def _state(self) -> dict[str, Any]:
        return {
            "model_spec": self.model_spec,
            "train_config": dataclasses.asdict(self.config),
            "data": self.data,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "best_model": self.best_state,
            "best_val_log_prob": self.best_val,
            "start_val_log_prob": self.start_val,
            "optimizer": portable_optimizer_state(self.optimizer),
            # the last rates as numbers: a captured run's are tensors on its device
            "scheduler": {**self.scheduler.state_dict(), "_last_lr": [float(v) for v in self.scheduler.get_last_lr()]},
            "generator": self.generator.get_state(),
            "noise_generator": self.noise.get_state() if self.resident else None,
            "epoch": self.epoch,
            "train_seconds": self.train_seconds,
            "extra": self.extra,
        }

    def resume(self, after_divergence: bool = False) -> None:
        """Continue from ``checkpoint.pt`` in ``out_dir``, exactly where it stopped.

        The model, the optimisation settings and the data must be the run's
        own; only ``RESUMABLE_CHANGES`` may differ, and after a divergence
        (marked in this checkpoint, or ``after_divergence``: in another model
        of the same run) ``RESUMABLE_AFTER_DIVERGENCE`` too (a new peak
        learning rate rescales the rest of the schedule).
        """
        ckpt = self.group.decide(lambda: self._resumable_checkpoint(after_divergence))
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        # The loaded state holds the old run's peak and its rate for the next step; a new
        # peak (after a divergence) or a new length (--epochs) changes both.
        factor = self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)
        for group in self.optimizer.param_groups:
            group["initial_lr"] = self.config.lr
            group["lr"] = self.config.lr * factor
        self.scheduler.base_lrs = [self.config.lr] * len(self.optimizer.param_groups)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.generator.set_state(ckpt["generator"])
        if self.resident and ckpt.get("noise_generator") is not None:
            self.noise.set_state(ckpt["noise_generator"])
        self.epoch = ckpt["epoch"]
        self.best_val = ckpt["best_val_log_prob"]
        self.best_state = ckpt["best_model"]
        self.start_val = ckpt.get("start_val_log_prob")
        self.train_seconds = ckpt.get("train_seconds", 0.0)
        self._resumed = True
        # Rows logged after the checkpoint belong to epochs that will be redone.
        metrics = self.folder.metrics
        with self.group.holding(self.folder.locked()):
            if self.group.is_main and os.path.lexists(metrics):
                rows, problems = read_metrics(metrics)
                if problems:  # a line cut short by a kill is expected; the checkpoint, not the log, holds the run
                    print(f"warning: dropped from {metrics}: {'; '.join(problems)}")
                write_text_atomic(metrics, "".join(json.dumps(r) + "\n" for r in rows if r["epoch"] <= self.epoch))

    def _resumable_checkpoint(self, after_divergence: bool) -> dict[str, Any]:
        """The checkpoint in ``out_dir``, after checking that this run may continue it."""
        if not self.checkpoint_path.is_file():
            raise FileNotFoundError(
                f"--resume: there is no checkpoint to resume in {self.folder.path} "
                f"(no {self.checkpoint_path.name}); leave out --resume to start a new run"
            )
        ckpt = load_checkpoint(self.checkpoint_path)
        if "optimizer" not in ckpt:
            raise ValueError(
                f"{self.checkpoint_path} holds model weights only (no optimiser state), so training cannot "
                f"resume from it; start a new run in another --out"
            )
        if ckpt["model_spec"] != self.model_spec:
            raise ValueError(
                f"checkpoint {self.checkpoint_path} holds model {ckpt['model_spec']}, "
                f"but this run asks for {self.model_spec}; use another --out or matching options"
            )
        check_training_state(self.checkpoint_path, ckpt, dict(self.model.named_parameters()))
        stored_data = ckpt["data"]
        if stored_data != self.data:
            listed = ", ".join(
                f"{split} {stored_data.get(split)} -> {self.data[split]}"
                for split in self.data if stored_data.get(split) != self.data[split]
            )
            raise ValueError(
                f"{self.checkpoint_path} was trained on other data ({listed}); resume with the run's own "
                f"data options (--limit, --val-fraction, data set, files) or start a new run in another --out"
            )
        # The schedule and the batches depend on these: resuming under others
        # would silently train a different run.
        diverged = after_divergence or bool(ckpt.get("diverged"))
        allowed = RESUMABLE_CHANGES + (RESUMABLE_AFTER_DIVERGENCE if diverged else ())
        stored = ckpt["train_config"]
        missing = [k for k in dataclasses.asdict(self.config) if k not in stored and k not in RESUMABLE_CHANGES]
        if missing:  # (the settings that may change were added to the record over time)
            raise ValueError(f"{self.checkpoint_path} cannot be resumed: its record of the training settings lacks "
                             f"{', '.join(missing)}, so a resumed run could not be compared with it")
        finished = ckpt["epoch"] >= self.config.epochs  # nothing left to train: no setting can change it
        changed = {
            k: (stored[k], v) for k, v in dataclasses.asdict(self.config).items()
            if not finished and k not in allowed and k in stored and stored[k] != v
        }
        if changed:
            listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"{self.checkpoint_path} was trained with other settings ({listed}); resume with the "
                f"run's own options or start a new run in another --out"
            )
        return ckpt

    def _diverged(self, what: str, advice: str) -> TrainingDiverged:
        """The error for a divergence, after marking the last good checkpoint (if any) as followed by one."""

        def mark() -> Optional[str]:
            if not self.checkpoint_path.is_file():
                return None
            try:
                ckpt = load_checkpoint(self.checkpoint_path)
                ckpt["diverged"] = what
                save_checkpoint(ckpt, self.checkpoint_path)
                return str(ckpt["epoch"])
            except (ValueError, OSError):
                return "?"  # a checkpoint that cannot be read or rewritten stays as it is; the message holds

        epoch = self.group.decide(mark)
        if epoch is not None:
            kept = (
                f"the last good checkpoint (epoch {epoch}) is kept in {self.checkpoint_path}; "
                f"{advice}, or continue it with --resume and a lower --lr or a --grad-clip"
            )
        else:
            kept = f"no checkpoint had been written yet, so nothing is kept; {advice}"
        return TrainingDiverged(f"{what}; {kept}")

    def _batch_loss(self, batch: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        """The training loss of one batch: mean negative log-likelihood in nats per dimension."""
        return -self.log_prob_fn(self.model, batch, noise).mean() / self.dim

    def _loss_of(self, batch: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        if self._loss is self._batch_loss:
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
            self._loss, self.compiled = self._batch_loss, False
            tqdm.write(f"torch.compile failed ({error_line(exc)}); training eagerly")
            return self._loss(batch, noise)

    def _noise_for(self, batch: torch.Tensor, generator: torch.Generator) -> Optional[torch.Tensor]:
        return uniform_noise(batch, generator, self.config.torch_dtype) if self.dequantize else None

    def _step_loss(self, rows: torch.Tensor, generator: torch.Generator,
                   noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The loss of the global batch ``rows`` (indices into the training data): its mean
        NLL per dimension, or with several processes this one's share of it. ``noise``: the
        batch's dequantisation noise if drawn already (else drawn from ``generator``)."""
        if not self.group.shared:
            batch = self.train_data[rows]
            return self._loss_of(batch, self._noise_for(batch, generator) if noise is None else noise)
        if self._shard_loss is None:
            from torch.nn.parallel import DistributedDataParallel

            # the model's buffers (standardisation, fixed slopes) do not change in training: no syncing per step
            no_sync = ("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                       else "broadcast_buffers")
            self._shard_loss = DistributedDataParallel(
                _ShardLoss(self.model, self.log_prob_fn, self.dim),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                **{no_sync: False},
            )
        shard = self.train_data[self.group.shard(rows)]
        return self._shard_loss(shard, self._noise_for(shard, generator), rows.numel(), self.group.world)

    def _clip(self) -> None:
        if self.config.grad_clip is not None:
            # no error_if_nonfinite: that would read the norm back; a non-finite loss ends the epoch instead
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)

    def _optimise(self, loss: torch.Tensor, rows: int) -> None:
        """Backward (into unset gradients), clipping and Adam for the ``loss`` of a batch of
        ``rows`` rows, whose mean (with several processes, this one's share of it) joins the
        epoch's sum."""
        loss.backward()
        self._clip()
        self.optimizer.step()
        self._epoch_total.add_(loss.detach() * (rows / self.group.world))

    def _eager_step(self, rows: torch.Tensor, generator: torch.Generator, noise: Optional[torch.Tensor] = None) -> None:
        """One optimisation step on the global batch ``rows``."""
        loss = self._step_loss(rows, generator, noise)
        self.optimizer.zero_grad(set_to_none=True)
        self._optimise(loss, rows.numel())

    def _graphed_body(self) -> None:
        """The step that :class:`GraphedSteps` captures: its batch comes from the fixed buffers."""
        graphed = self._graphed
        self._optimise(self._loss_of(self.train_data[graphed.rows], graphed.noise), graphed.rows.numel())

    def _full_batch_step(self, rows: torch.Tensor, generator: torch.Generator) -> None:
        """A step on a full batch: through the CUDA graph while there is one, else eager."""
        if self._graphed is None:
            prepare_for_capture(self.optimizer, self.device, self._capture.capturable)
            noise_like = ((self.config.batch_size, self.dim), self.config.torch_dtype, self.train_data.device)
            self._graphed = GraphedSteps(
                self._graphed_body, lambda: self.optimizer.zero_grad(set_to_none=True), self._capture,
                self.config.batch_size, self.train_data.device, noise_like if self.dequantize else None,
            )
        try:
            self._graphed(rows, generator)
        except CaptureFailed as exc:
            graphed, self._capture, self._graphed = self._graphed, None, None
            for group in self.optimizer.param_groups:
                group["capturable"] = False
            tqdm.write(f"capturing the training step as a CUDA graph failed ({exc}); training eagerly")
            self._eager_step(graphed.rows, generator, graphed.noise)  # the batch and noise already drawn

    def _train_epoch(self, bar: tqdm) -> float:
        """One pass over the training data; returns its mean loss in nats per dimension.

        The loss is read back once, at the end: a step never waits for the device.
        Every process draws the same shuffled order (one generator, one seed) and
        takes its shard of each batch; their dequantisation noise is their own."""
        self.model.train()
        cfg = self.config
        n = self.train_data.shape[0]
        order = torch.randperm(n, generator=self.generator).to(self.train_data.device)
        noise = self.noise
        if self.group.shared:
            noise = torch.Generator(self.train_data.device).manual_seed(
                _noise_seed(cfg.seed, "training", self.epoch, self.group.rank))
        self._epoch_total.zero_()
        # the training data were checked once, in __init__: no step waits for a value check
        with set_value_checks(False):
            for step in range(self.steps_per_epoch):
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                if self._capture is not None and idx.numel() == cfg.batch_size:
                    self._full_batch_step(idx, noise)
                else:
                    self._eager_step(idx, noise)
                self.scheduler.step()
                bar.update(1)
        mean = float(self.group.all_sum(self._epoch_total)) / n
        if not math.isfinite(mean):
            raise self._diverged(
                f"the training loss became {mean} in epoch {self.epoch + 1}", "lower --lr or add --grad-clip"
            )
        return mean

    def _validation_log_prob(self) -> float:
        return mean_log_prob(self.model, self.val_data, self.log_prob_fn, 1000, seed=self.config.seed + 1,
                             group=self.group, dequantize=self.dequantize)

    def fit(self) -> list[dict[str, Any]]:
        """Train the remaining epochs; returns the metric rows written this call."""
        with self.group.holding(self.folder.locked()):
            self.group.decide(self._prepare_folder)
            if not self._resumed:
                self.start_val = self._validation_log_prob()
                self._resumed = True  # a later fit() on this trainer continues the run
            rows = []
            cfg = self.config
            if self.epoch > cfg.epochs:
                raise ValueError(
                    f"--epochs {cfg.epochs} is below the {self.epoch} epochs {self.checkpoint_path} has already "
                    f"trained; give at least {self.epoch}"
                )
            if self.progress and self.epoch < cfg.epochs:
                if self.compiled:
                    tqdm.write("training step compiled with torch.compile: the first steps wait for the compiler")
                if self._capture is not None:
                    tqdm.write(f"training steps on {self.device}: each full batch replays one CUDA graph, "
                               f"captured after {WARMUP_STEPS} eager steps (--no-cuda-graph: all eager)")
            bar = tqdm(
                total=cfg.epochs * self.steps_per_epoch,
                initial=self.epoch * self.steps_per_epoch,
                desc="training",
                unit="step",
                disable=not self.progress,
                mininterval=1.0,
            )
            try:
                with bar:
                    while self.epoch < cfg.epochs:
                        row = self._run_epoch(bar)
                        if row is not None:
                            rows.append(row)
            finally:
                if self._curves_stale:  # a stop (Ctrl-C, divergence) leaves the curves of every row written
                    with contextlib.suppress(Exception):  # never in place of why training stopped
                        self._draw_curves()
            return rows

    def _prepare_folder(self) -> None:
        """Clear what a killed save left; a new run must not overwrite a checkpoint."""
        for stale in stale_temporaries(self.checkpoint_path):
            stale.unlink(missing_ok=True)  # left by a save that was killed; the lock says none is running
        if not self._resumed:
            if self.checkpoint_path.exists():
                raise FileExistsError(
                    f"{self.checkpoint_path} already exists; pass --resume to continue that run, "
                    f"--overwrite to replace it, or choose another --out"
                )
            self.folder.metrics.unlink(missing_ok=True)

    def _check_validation(self, val_lp: float) -> None:
        """Raise :class:`TrainingDiverged` for a non-finite validation figure or one far below the start."""
        val_nll = -val_lp / self.dim
        if not math.isfinite(val_lp):
            raise self._diverged(f"the validation log-likelihood is {val_lp} after epoch {self.epoch}", "lower --lr")
        if self.start_val is not None and math.isfinite(self.start_val):
            start_nll = -self.start_val / self.dim
            if val_nll > start_nll + DIVERGENCE_MARGIN_NATS_PER_DIM:
                raise self._diverged(
                    f"training diverged: after epoch {self.epoch} the validation NLL is {self.unit.describe(val_nll)}, "
                    f"worse than the untrained start ({self.unit.describe(start_nll)}) by more than "
                    f"{DIVERGENCE_MARGIN_NATS_PER_DIM:g} nat per dimension",
                    "lower --lr or add --grad-clip",
                )

    def _run_epoch(self, bar: tqdm) -> Optional[dict[str, Any]]:
        """One epoch of training; every ``eval_every`` epochs also validation, a log row and a checkpoint."""
        cfg = self.config
        start = time.perf_counter()
        train_nll = self._train_epoch(bar)
        self.train_seconds += time.perf_counter() - start
        self.epoch += 1
        if self.epoch % cfg.eval_every and self.epoch != cfg.epochs:
            return None
        val_lp = self._validation_log_prob()
        self._check_validation(val_lp)
        if self.best_val is None or val_lp > self.best_val:
            self.best_val = val_lp
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        row = {
            "epoch": self.epoch,
            f"train_{self.unit.key}": self.unit.convert(train_nll),
            f"val_{self.unit.key}": self.unit.convert(-val_lp / self.dim),
            "lr": float(self.scheduler.get_last_lr()[0]),
            "train_seconds": self.train_seconds,
            "steps": self.step_mode,
        }
        if self.group.is_main:
            append_text(self.folder.metrics, json.dumps(row) + "\n")
            save_checkpoint(self._state(), self.checkpoint_path)
            now = time.monotonic()
            self._curves_stale = True
            if (self.epoch == cfg.epochs or self._curves_drawn_at is None
                    or now - self._curves_drawn_at >= CURVES_EVERY_SECONDS):
                self._draw_curves()
                self._curves_drawn_at = now
        if self.progress:
            tqdm.write(
                f"epoch {self.epoch}/{cfg.epochs}  train {self.unit.describe(train_nll)}  "
                f"val {self.unit.describe(-val_lp / self.dim)}  ({format_seconds(self.train_seconds)} training)"
            )
        bar.set_postfix_str(f"epoch {self.epoch}/{cfg.epochs}, val {self.unit.describe(-val_lp / self.dim)}")
        return row

    def _draw_curves(self) -> None:
        """``curves.png`` beside the metrics: train and validation NLL per epoch (skipped without matplotlib)."""
        self._curves_stale = False
        try:
            from lunet.experiments.plots import plot_training_curves
        except ImportError:
            return
        plot_training_curves(self.folder.metrics, self.folder.curves, self.unit.key, self.unit.label)
