"""What a training checkpoint holds, and the rules for resuming one.

The state is the model's, the optimiser's, the learning-rate schedule's and the
generators' (shuffled orders, dequantisation noise), with the run's progress:
its epoch, its best and its starting validation figure, its training time. A
run resumes only under its own model, data and settings; what may change is
listed here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from lunet.experiments.config.errors import NamesSettings, NothingToResume, SettingError
from lunet.experiments.config.models import short_repr
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.store.checkpoint import check_training_state, load_checkpoint, tensor_bytes
from lunet.experiments.training.average import WeightAverage
from lunet.experiments.training.cuda_graph import portable_optimizer_state
from lunet.experiments.training.log import Unit
from lunet.experiments.training.schedule import LearningRateSchedule

__all__ = ["RESUMABLE_CHANGES", "SETTINGS_ADDED_LATER", "RESUMABLE_AFTER_DIVERGENCE", "DIVERGENCE_MARGIN_NATS_PER_DIM",
           "TrainingDiverged", "data_fingerprint", "divergence", "diverged", "TrainingState"]

# Settings that may differ when a run is resumed: where it runs, how often it
# reports, and its length (a longer run extends it; a cosine schedule is then
# recomputed over the new length).
RESUMABLE_CHANGES = ("device", "eval_every", "epochs", "time_budget", "compile", "cuda_graph", "patience")
# Settings a run's record may lack because they came later, with the value such a run trained under.
SETTINGS_ADDED_LATER: dict[str, Any] = {"ema": None}
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


class TrainingDiverged(NamesSettings, RuntimeError):
    """The loss became NaN or infinite, or validation fell far below the start; the last good checkpoint is kept."""


def data_fingerprint(data: torch.Tensor) -> str:
    """Shape, dtype and SHA-256 of a data tensor: what a resumed run must train on again."""
    digest = hashlib.sha256(tensor_bytes(data)).hexdigest()
    return f"{tuple(data.shape)} {data.dtype} sha256:{digest[:16]}"


def divergence(val_lp: float, start_val: Optional[float], epoch: int, features: int,
               unit: Unit) -> Optional[tuple[str, str]]:
    """What went wrong and the advice, when the validation log-likelihood ``val_lp`` (nats per
    sample) after ``epoch`` is not finite or far below the untrained ``start_val``; else None."""
    if not math.isfinite(val_lp):
        return f"the validation log-likelihood is {val_lp} after epoch {epoch}", "lower {lr}"
    if start_val is not None and math.isfinite(start_val):
        val_nll, start_nll = -val_lp / features, -start_val / features
        if val_nll > start_nll + DIVERGENCE_MARGIN_NATS_PER_DIM:
            return (f"training diverged: after epoch {epoch} the validation NLL is {unit.describe(val_nll)}, "
                    f"worse than the untrained start ({unit.describe(start_nll)}) by more than "
                    f"{DIVERGENCE_MARGIN_NATS_PER_DIM:g} nat per dimension", "lower {lr} or add {grad_clip}")
    return None


def diverged(what: str, advice: str, kept_epoch: Optional[str], checkpoint: Path) -> TrainingDiverged:
    """The error for a divergence: ``what`` happened, ``advice`` (naming settings as ``{lr}``), and
    the last good checkpoint, of epoch ``kept_epoch`` (None: none was written)."""
    if kept_epoch is None:
        return TrainingDiverged("{what}; no checkpoint had been written yet, so nothing is kept; " + advice, what=what)
    return TrainingDiverged(
        "{what}; the last good checkpoint (epoch {epoch}) is kept in {path}; " + advice
        + ", or continue it with {resume} and a lower {lr} or a {grad_clip}",
        what=what, epoch=kept_epoch, path=checkpoint,
    )


class TrainingState:
    """The state of one model's training, as a checkpoint holds it.

    Args:
        model, model_spec: the model and the spec that rebuilds it.
        config: the run's settings.
        data: fingerprints of the training and validation data (:func:`data_fingerprint`).
        optimizer, schedule: the optimiser and its learning-rate schedule.
        order: the generator of the shuffled orders.
        noise: the generator of the dequantisation noise where it is not ``order`` (on a GPU), else None.
        extra: what the caller records beside (data set, class).
        average: the weights' average (``config.ema``), whose weights are validated and kept as the best.
    """

    def __init__(
        self, model: nn.Module, model_spec: dict[str, Any], config: TrainConfig, data: dict[str, str],
        optimizer: torch.optim.Optimizer, schedule: LearningRateSchedule, order: torch.Generator,
        noise: Optional[torch.Generator], extra: dict[str, Any], average: Optional[WeightAverage] = None,
    ) -> None:
        self.model = model
        self.model_spec = model_spec
        self.config = config
        self.data = data
        self.optimizer = optimizer
        self.schedule = schedule
        self.order = order
        self.noise = noise
        self.extra = extra
        self.average = average
        self.epoch = 0
        self.best_val: Optional[float] = None
        self.best_epoch: Optional[int] = None
        self.best_state: Optional[dict[str, torch.Tensor]] = None
        self.start_val: Optional[float] = None  # validation log p of the untrained model, nats per sample
        self.train_seconds = 0.0
        self.skipped_steps = 0  # steps of epochs a time budget cut short, never taken

    def keep_if_best(self, val_lp: float) -> None:
        """Keep the model's weights as the best if ``val_lp`` is finite and beats every earlier validation."""
        if math.isfinite(val_lp) and (self.best_val is None or val_lp > self.best_val):
            self.best_val = val_lp
            self.best_epoch = self.epoch
            self.best_state = (self.average.state_dict() if self.average is not None
                               else {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()})

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint's contents."""
        return {
            "model_spec": self.model_spec,
            "train_config": dataclasses.asdict(self.config),
            "data": self.data,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "best_model": self.best_state,
            "best_val_log_prob": self.best_val,
            "best_epoch": self.best_epoch,
            "start_val_log_prob": self.start_val,
            "optimizer": portable_optimizer_state(self.optimizer),
            "schedule": self.schedule.state_dict(),
            "generator": self.order.get_state(),
            "noise_generator": self.noise.get_state() if self.noise is not None else None,
            "epoch": self.epoch,
            "train_seconds": self.train_seconds,
            "skipped_steps": self.skipped_steps,
            "extra": self.extra,
            "average_model": self.average.state_dict() if self.average is not None else None,
            "average_updates": self.average.updates if self.average is not None else None,
        }

    def load(self, path: Path, after_divergence: bool) -> dict[str, Any]:
        """The checkpoint at ``path``, read and checked (:meth:`check_resumable`) for this run to resume;
        :class:`NothingToResume` if there is none."""
        if not path.is_file():
            raise NothingToResume("{resume}: there is no checkpoint to resume in {folder} (no {name}); "
                                  "leave out {resume} to start a new run", folder=path.parent, name=path.name)
        ckpt = load_checkpoint(path)
        self.check_resumable(ckpt, path, after_divergence)
        return ckpt

    def check_resumable(self, ckpt: dict[str, Any], path: Path, after_divergence: bool) -> None:
        """Refuse (``ValueError`` naming what differs) to resume ``ckpt``, read from ``path``, under
        another model, other data or other settings than :data:`RESUMABLE_CHANGES`; after a divergence
        (marked in ``ckpt``, or ``after_divergence``: in another model of the same run)
        :data:`RESUMABLE_AFTER_DIVERGENCE` may differ too."""
        if "optimizer" not in ckpt:
            raise SettingError("{path} holds model weights only (no optimiser state), so training cannot "
                               "resume from it; start a new run in another {out}", path=path)
        if ckpt["model_spec"] != self.model_spec:
            raise SettingError("checkpoint {path} holds model {stored}, but this run asks for {spec}; use another "
                               "{out} or matching options", path=path, stored=ckpt["model_spec"], spec=self.model_spec)
        # the batches of an epoch are this run's when the batch size is (else the settings differ
        # and are refused below, or the run is finished and takes no step)
        stored = ckpt.get("train_config")
        same_batches = isinstance(stored, dict) and stored.get("batch_size") == self.config.batch_size
        check_training_state(path, ckpt, dict(self.model.named_parameters()), self.optimizer,
                             {"generator": self.order, "noise_generator": self.noise},
                             self.schedule.total_steps // self.config.epochs if same_batches else None)
        stored_data = ckpt["data"]
        if stored_data != self.data:
            listed = ", ".join(f"{split} {stored_data.get(split)} -> {self.data[split]}"
                               for split in self.data if stored_data.get(split) != self.data[split])
            raise SettingError(
                "{path} was trained on other data ({listed}); resume with the run's own data options "
                "({limit}, {val_fraction}, data set, files) or start a new run in another {out}",
                path=path, listed=listed,
            )
        # The schedule and the batches depend on these: resuming under others would silently train a different run.
        diverged = after_divergence or bool(ckpt.get("diverged"))
        allowed = RESUMABLE_CHANGES + (RESUMABLE_AFTER_DIVERGENCE if diverged else ())
        stored = {**SETTINGS_ADDED_LATER, **ckpt["train_config"]}
        settings = dataclasses.asdict(self.config)
        missing = [k for k in settings if k not in stored and k not in RESUMABLE_CHANGES]
        if missing:  # (the settings that may change were added to the record over time)
            raise ValueError(f"{path} cannot be resumed: its record of the training settings lacks "
                             f"{', '.join(missing)}, so a resumed run could not be compared with it")
        # nothing left to train: no setting can change it
        budget = self.config.time_budget
        finished = ckpt["epoch"] >= self.config.epochs or (budget is not None and ckpt["train_seconds"] >= budget)
        changed = {k: (stored[k], v) for k, v in settings.items()
                   if not finished and k not in allowed and k in stored and stored[k] != v}
        if changed:
            # each setting as a field of the template, so that the command line names it as its flag
            listed = ", ".join("{%s} %s -> %s" % (k, _literal(old), _literal(new)) for k, (old, new) in changed.items())
            raise SettingError("{path} was trained with other settings (" + listed + "); resume with the run's own "
                               "options or start a new run in another {out}", path=path)
        if self.average is not None:
            updates = ckpt.get("average_updates")
            if not isinstance(ckpt.get("average_model"), dict) or type(updates) is not int or updates < 0:
                raise ValueError(f"{path} cannot be resumed: it holds no average of the weights, which this run "
                                 f"keeps (--ema); it was damaged, or trained without --ema")
            try:
                self.average.check(ckpt["average_model"])
            except ValueError as exc:
                raise ValueError(f"{path} cannot be resumed: {exc}") from None

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from ``ckpt`` (checked by :meth:`check_resumable`), exactly where it stopped;
        the schedule takes this run's peak and length from there."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"], ckpt.get("train_seconds", 0.0))
        self.order.set_state(ckpt["generator"])
        if self.noise is not None and ckpt.get("noise_generator") is not None:
            self.noise.set_state(ckpt["noise_generator"])
        self.epoch = ckpt["epoch"]
        self.best_val = ckpt["best_val_log_prob"]
        self.best_epoch = ckpt.get("best_epoch")
        self.best_state = ckpt["best_model"]
        self.start_val = ckpt.get("start_val_log_prob")
        self.train_seconds = ckpt.get("train_seconds", 0.0)
        self.skipped_steps = ckpt.get("skipped_steps", 0)
        if self.average is not None:
            self.average.load_state_dict(ckpt["average_model"], ckpt["average_updates"])


def _literal(value: object) -> str:
    """``repr(value)`` (cut short: it may come from the file) as literal text of a message template."""
    return short_repr(value).replace("{", "{{").replace("}", "}}")
