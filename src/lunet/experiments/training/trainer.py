"""Maximum-likelihood training with atomic, exactly resumable checkpoints.

The loop is model- and data-agnostic: it receives a function giving
``log p(batch)`` in nats per sample and minimises the mean negative
log-likelihood per dimension. Every epoch ends with a validation pass, a line
in ``metrics.jsonl`` and a checkpoint written atomically; the best weights on
the validation split are kept beside the last ones.

The :class:`Trainer` assembles the parts: the steps (:mod:`~lunet.experiments.training.step`),
the learning rate (:mod:`~lunet.experiments.training.schedule`), the state and its resume rules
(:mod:`~lunet.experiments.training.state`) and the log (:mod:`~lunet.experiments.training.log`).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import time
from pathlib import Path
from typing import Any, Generic, Optional

import torch
from torch import nn

from lunet.checks import set_value_checks
from lunet.experiments.config.errors import RunExists, SettingError
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.data.preprocess import uniform_noise
from lunet.experiments.files.atomic import stale_temporaries
from lunet.experiments.files.safe import remove_file
from lunet.experiments.store.checkpoint import mark_diverged, save_checkpoint
from lunet.experiments.store.folder import RunFolder, as_folder
from lunet.experiments.training.average import WeightAverage
from lunet.experiments.training.cuda_graph import WARMUP_STEPS
from lunet.experiments.training.distributed import SINGLE, Group, current
from lunet.experiments.training.log import RunLog
from lunet.experiments.training.schedule import LearningRateSchedule
from lunet.experiments.training.state import TrainingState, data_fingerprint, diverged, divergence
from lunet.experiments.training.step import AUTO, FlowT, LogProbFn, Objective, StepRunner, check_shared_config

__all__ = ["resolve_device", "mean_log_prob", "default_optimizer", "check_splits", "check_optimizer", "Trainer"]


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
            raise ValueError(
                f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return device


@torch.no_grad()
def mean_log_prob(
    model: FlowT, data: torch.Tensor, log_prob_fn: LogProbFn[FlowT], batch_size: int, seed: int, group: Group = SINGLE,
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


def _noise_seed(*parts: object) -> int:
    """A seed for one stream of noise, named by ``parts`` (the run's seed, what it is for, ...)."""
    return int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


def default_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam at ``config.lr`` with ``config.weight_decay``, as every lunet run trains: the fused kernel,
    one pass over each parameter instead of ~10."""
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True)


def check_splits(train_data: torch.Tensor, val_data: torch.Tensor) -> None:
    """``ValueError`` unless there is a row to train on and one to validate on, and the training rows
    are finite (checked once, before training: the steps skip the per-batch checks that would wait
    for the device)."""
    if train_data.shape[0] < 1 or val_data.shape[0] < 1:
        raise ValueError(f"training needs at least one training and one validation example, "
                         f"got {train_data.shape[0]} and {val_data.shape[0]}")
    if train_data.is_floating_point() and not bool(torch.isfinite(train_data).all()):
        bad = int((~torch.isfinite(train_data)).sum())
        raise ValueError(f"the training data hold {bad} NaN or infinite value(s); shape {tuple(train_data.shape)}")


def check_optimizer(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.Optimizer:
    """``optimizer``, if its weight decay is the run's (which the run's record and checkpoints hold)."""
    decay = optimizer.param_groups[0].get("weight_decay", config.weight_decay)
    if decay != config.weight_decay:
        raise ValueError(f"the optimizer's weight decay {decay!r} is not the run's ({config.weight_decay!r}), "
                         f"which its record and checkpoints hold: build it with config.weight_decay")
    return optimizer


class Trainer(Generic[FlowT]):
    """Trains ``model`` on the first of ``data = (train, val)`` and selects on the second.

    Args:
        model: a flow with trainable parameters.
        model_spec: the spec that rebuilds it (stored in the checkpoint).
        config: how it trains (:class:`~lunet.experiments.config.training.TrainConfig`).
        data: the training and validation rows, as ``objective.log_prob_fn`` takes them.
        objective: the loss and its unit (:class:`~lunet.experiments.training.step.Objective`).
        run_dir: where ``checkpoint.pt`` and ``metrics.jsonl`` go (a path or a
            :class:`~lunet.experiments.store.folder.RunFolder`). Hold the lock of the run
            folder (:meth:`~lunet.experiments.store.folder.RunFolder.locked`) around
            :meth:`resume` and :meth:`fit`, so that no other training writes there
            meanwhile; the run functions (image runs, own data, the 2-D run) do.
        optimizer: over ``model``'s parameters (default :func:`default_optimizer`); the schedule sets
            its learning rate from ``config``, the checkpoint keeps its state, and a resume refuses a
            checkpoint whose optimiser settings differ from this one's.
        log: the run's log (default: a :class:`~lunet.experiments.training.log.RunLog` in ``run_dir``,
            with a progress bar unless ``progress`` is off).
        group: the processes training this model together (default: those of the
            initialised ``torch.distributed`` group, else this process alone). Each
            takes its shard of every global batch of ``config.batch_size`` rows;
            rank 0 alone writes files and shows progress.
        capture: how full batches are captured as a CUDA graph (see
            :class:`~lunet.experiments.training.step.StepRunner`).
        extra: what the kind of run keeps in the checkpoint beside the weights.

    The parts are public: :attr:`optimizer`, :attr:`steps` (the step runner), :attr:`schedule`,
    :attr:`state` (epoch, best weights, ...), :attr:`log` and :attr:`average` (the weights' moving
    average with ``config.ema``, else None).
    """

    def __init__(
        self,
        model: FlowT,
        model_spec: dict[str, Any],
        config: TrainConfig,
        data: tuple[torch.Tensor, torch.Tensor],
        objective: Objective[FlowT],
        run_dir: str | Path | RunFolder,
        *,
        optimizer: Optional[torch.optim.Optimizer] = None,
        log: Optional[RunLog] = None,
        progress: bool = True,
        group: Optional[Group] = None,
        capture: Any = AUTO,
        extra: Optional[dict[str, Any]] = None,
    ) -> None:
        train_data, val_data = data
        self.config = config
        self.group = current() if group is None else group
        check_shared_config(config, self.group)
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":
            # Fixed batch shapes: let cuDNN pick its fastest convolution once.
            torch.backends.cudnn.benchmark = True
        check_splits(train_data, val_data)
        self.model = model.to(device=self.device, dtype=config.torch_dtype)
        # On a GPU the training data live there, and the batches, their noise and their loss stay there:
        # a step copies nothing to or from the host.
        self.train_data = train_data.to(self.device) if self.device.type == "cuda" else train_data
        self.val_data = val_data
        self.objective = objective
        self.folder = as_folder(run_dir)
        self.log = log if log is not None else RunLog(self.folder, objective.unit, progress, writes=self.group.is_main)
        self.steps_per_epoch = math.ceil(train_data.shape[0] / config.batch_size)
        self.optimizer = (default_optimizer(self.model, config) if optimizer is None
                          else check_optimizer(optimizer, config))
        self.schedule = LearningRateSchedule(self.optimizer, config, self.steps_per_epoch * config.epochs)
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)  # the shuffled orders
        # the dequantisation noise: drawn where the data are
        on_gpu = self.device.type == "cuda"
        self.noise = torch.Generator(device=self.device).manual_seed(config.seed) if on_gpu else self.generator
        fingerprints = {"train": data_fingerprint(train_data), "val": data_fingerprint(val_data)}
        self.average = WeightAverage(self.model, config.ema) if config.ema is not None else None
        self.state = TrainingState(self.model, model_spec, config, fingerprints, self.optimizer, self.schedule,
                                   self.generator, self.noise if on_gpu else None, extra or {}, self.average)
        self.steps = StepRunner(self.model, self.optimizer, objective, self.train_data, config, self.device,
                                self.group, capture)
        self._resumed = False

    @property
    def checkpoint_path(self) -> Path:
        return self.folder.checkpoint

    def resume(self, after_divergence: bool = False) -> None:
        """Continue from ``checkpoint.pt`` in ``run_dir``, exactly where it stopped, if the
        state's rules allow (:meth:`~lunet.experiments.training.state.TrainingState.check_resumable`);
        ``after_divergence``: another model of the same run diverged."""

        self.state.restore(self.group.on_main(lambda: self.state.load(self.checkpoint_path, after_divergence)))
        self._resumed = True
        self.log.keep_until(self.state.epoch)

    def fit(self) -> list[dict[str, Any]]:
        """Train the remaining epochs; returns the metric rows written this call."""
        self.group.on_main(self._prepare_folder)
        if not self._resumed:
            self.state.start_val = self._validation_log_prob()
            self.state.keep_if_best(self.state.start_val)  # a start no epoch improves on stays the best
            self._resumed = True  # a later fit() on this trainer continues the run
        cfg, state = self.config, self.state
        if state.epoch > cfg.epochs:
            raise SettingError("{epochs} {given} is below the {done} epochs {path} has already trained; give at "
                               "least {done}", given=cfg.epochs, done=state.epoch, path=self.checkpoint_path)
        if state.epoch < cfg.epochs and not self.budget_spent:
            if self.steps.compiled:
                self.log.note("training step compiled with torch.compile: the first steps wait for the compiler")
            if self.steps.capture is not None:
                self.log.note(f"training steps on {self.device}: each full batch replays one CUDA graph, "
                              f"captured after {WARMUP_STEPS} eager steps (--no-cuda-graph: all eager)")
        rows = []
        bar: tuple[float, float, str]
        if cfg.time_budget is None:
            bar = (cfg.epochs * self.steps_per_epoch, state.epoch * self.steps_per_epoch, "step")
        else:
            bar = (cfg.time_budget, min(state.train_seconds, cfg.time_budget), "s")
        with self.log.training(*bar):
            while state.epoch < cfg.epochs and not self.stopped_early and not self.budget_spent:
                row = self._run_epoch()
                if row is not None:
                    rows.append(row)
        if self.stopped_early and rows:
            self.log.note(f"stopped after epoch {state.epoch}{self._of_epochs}: the last {cfg.patience} validations "
                          f"did not improve on epoch {state.best_epoch}'s, whose weights are kept as the best")
        return rows

    @property
    def budget_spent(self) -> bool:
        """Whether the run has trained its ``config.time_budget`` seconds (never without a budget)."""
        budget = self.config.time_budget
        return budget is not None and self.state.train_seconds >= budget

    @property
    def _of_epochs(self) -> str:
        # a budgeted run's epochs are a cap it rarely reaches: its lines name the seconds instead
        return f" of {self.config.epochs}" if self.config.time_budget is None else ""

    @property
    def stopped_early(self) -> bool:
        """Whether the last ``config.patience`` validations have not improved on the best."""
        cfg, state = self.config, self.state
        if cfg.patience is None or state.best_epoch is None:
            return False
        return state.epoch - state.best_epoch >= cfg.patience * cfg.eval_every

    def _prepare_folder(self) -> None:
        """Clear what a killed save left; a new run must not overwrite a checkpoint."""
        self.folder.make()
        for stale in stale_temporaries(self.checkpoint_path):
            remove_file(stale)  # left by a save that was killed; the lock says none is running
        if not self._resumed:
            if self.checkpoint_path.exists():
                raise RunExists("{path} already exists; pass {resume} to continue that run, {overwrite} to "
                                "replace it, or choose another {out}", path=self.checkpoint_path)
            self.log.restart()

    def _validation_log_prob(self) -> float:
        """Mean ``log p`` of the validation rows by the weights validated: the average's with ``config.ema``."""
        with self.average.applied() if self.average is not None else contextlib.nullcontext():
            return mean_log_prob(self.model, self.val_data, self.objective.log_prob_fn, 1000,
                                 seed=self.config.seed + 1, group=self.group, dequantize=self.objective.dequantize)

    def train_epoch(self) -> float:
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
                _noise_seed(cfg.seed, "training", self.state.epoch, self.group.rank))
        self.steps.epoch_total.zero_()
        budget, spent, start = cfg.time_budget, self.state.train_seconds, time.perf_counter()
        taken, shown = 0, spent
        # the training data were checked once, in __init__: no step waits for a value check
        with set_value_checks(False):
            for step in range(self.steps_per_epoch):
                self.steps.step(order[step * cfg.batch_size : (step + 1) * cfg.batch_size], noise)
                if self.average is not None:
                    self.average.update()
                taken += 1
                if budget is None:
                    self.schedule.step()
                    self.log.advance()
                    continue
                now = spent + time.perf_counter() - start
                self.schedule.step(now)
                self.log.advance(min(now, budget) - min(shown, budget))
                shown = now
                if now >= budget:
                    break
        # the rest of an epoch the budget cut short is never trained: the checkpoint counts it
        self.state.skipped_steps += self.steps_per_epoch - taken
        trained = min(n, taken * cfg.batch_size)
        mean = float(self.group.all_sum(self.steps.epoch_total)) / trained
        if not math.isfinite(mean):
            raise self._diverged(f"the training loss became {mean} in epoch {self.state.epoch + 1}",
                                 "lower {lr} or add {grad_clip}")
        return mean

    def _diverged(self, what: str, advice: str) -> Exception:
        """The error for a divergence, after marking the last good checkpoint (if any) as followed by one."""
        epoch = self.group.on_main(lambda: mark_diverged(self.checkpoint_path, what))
        return diverged(what, advice, epoch, self.checkpoint_path)

    def _run_epoch(self) -> Optional[dict[str, Any]]:
        """One epoch of training; every ``eval_every`` epochs also validation, a log row and a checkpoint."""
        cfg, state = self.config, self.state
        self.log.epoch_begins(state.epoch)
        start = time.perf_counter()
        train_nll = self.train_epoch()
        state.train_seconds += time.perf_counter() - start
        state.epoch += 1
        last = state.epoch == cfg.epochs or self.budget_spent
        if state.epoch % cfg.eval_every and not last:
            return None
        val_lp = self._validation_log_prob()
        # with early stopping a validation that falls far below the start ends the run as any other
        # that does not improve, the best weights kept; a non-finite one is a divergence either way
        start_val = None if cfg.patience is not None else state.start_val
        features, unit = self.objective.features, self.objective.unit
        problem = divergence(val_lp, start_val, state.epoch, features, unit)
        if problem is not None:
            raise self._diverged(*problem)
        state.keep_if_best(val_lp)
        row = {
            "epoch": state.epoch,
            f"train_{unit.key}": unit.convert(train_nll),
            f"val_{unit.key}": unit.convert(-val_lp / features),
            "lr": self.schedule.rate,
            "train_seconds": state.train_seconds,
            "steps": self.steps.mode,
        }
        self.log.write_row(row)
        if self.group.is_main:
            save_checkpoint(state.checkpoint(), self.checkpoint_path)
        self.log.redraw(last=last)
        self.log.report(state.epoch, None if cfg.time_budget is not None else cfg.epochs, train_nll,
                        -val_lp / features, state.train_seconds)
        return row
