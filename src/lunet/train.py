"""Maximum-likelihood training with atomic, exactly resumable checkpoints.

The loop is model- and data-agnostic: it receives a function giving
``log p(batch)`` in nats per sample and minimises the mean negative
log-likelihood per dimension. Every epoch ends with a validation pass, a line
in ``metrics.jsonl`` and a checkpoint written atomically; the best weights on
the validation split are kept beside the last ones.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

from lunet.checkpoint import FORMAT_VERSION, load_checkpoint, save_atomic

LogProbFn = Callable[[nn.Module, torch.Tensor, torch.Generator], torch.Tensor]

CHECKPOINT_NAME = "checkpoint.pt"
# Settings that may differ when a run is resumed: where it runs, how often it
# reports, and its length (``--resume --epochs N`` extends a run; a cosine
# schedule is then recomputed over the new length).
RESUMABLE_CHANGES = ("device", "eval_every", "epochs")
METRICS_NAME = "metrics.jsonl"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainConfig:
    """Optimisation settings; every field is a CLI option of ``lunet train``."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    schedule: str = "cosine"  # "cosine" (to zero over the run, after warm-up) or "constant"
    warmup_steps: int = 0
    grad_clip: Optional[float] = None
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    eval_every: int = 1  # epochs between validation, log line and checkpoint (the last epoch always)

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        for name in ("epochs", "batch_size", "eval_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def resolve_device(name: str) -> torch.device:
    """``torch.device(name)``, with a clear error when CUDA is asked for but absent."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available here; use --device cpu")
    return device


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
def mean_log_prob(model: nn.Module, data: torch.Tensor, log_prob_fn: LogProbFn, batch_size: int, seed: int) -> float:
    """Mean ``log p`` in nats per sample over ``data``, with a fixed noise seed."""
    was_training = model.training
    model.eval()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    total = 0.0
    for start in range(0, data.shape[0], batch_size):
        total += float(log_prob_fn(model, data[start : start + batch_size], gen).double().sum())
    model.train(was_training)
    return total / data.shape[0]


class Trainer:
    """Trains ``model`` on ``train_data`` and selects on ``val_data``.

    Args:
        model: a flow with trainable parameters.
        model_spec: the spec that rebuilds it (stored in the checkpoint).
        log_prob_fn: ``(model, raw_batch, generator) -> log p`` in nats, (B,).
        dim: data dimension, for per-dimension losses.
        out_dir: where ``checkpoint.pt`` and ``metrics.jsonl`` go.
        describe: turns nats/dim into the figure shown on the progress bar.
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
        describe: Callable[[float], str] = lambda nats: f"nll {nats:.4f} nats/dim",
        extra: Optional[dict[str, Any]] = None,
        progress: bool = True,
    ) -> None:
        self.config = config
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":
            # Fixed batch shapes: let cuDNN pick its fastest convolution once.
            torch.backends.cudnn.benchmark = True
        self.model = model.to(device=self.device, dtype=config.torch_dtype)
        self.model_spec = model_spec
        self.train_data = train_data
        self.val_data = val_data
        self.log_prob_fn = log_prob_fn
        self.dim = dim
        self.out_dir = Path(out_dir)
        self.describe = describe
        self.extra = extra or {}
        self.progress = progress
        self.steps_per_epoch = math.ceil(train_data.shape[0] / config.batch_size)
        # The fused kernel makes one pass over each parameter instead of ~10.
        self.optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, _lr_lambda(config, self.steps_per_epoch * config.epochs)
        )
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.epoch = 0
        self.best_val: Optional[float] = None
        self.best_state: Optional[dict[str, torch.Tensor]] = None
        self.train_seconds = 0.0
        self._resumed = False

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def _state(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "model_spec": self.model_spec,
            "train_config": dataclasses.asdict(self.config),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "best_model": self.best_state,
            "best_val_log_prob": self.best_val,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "epoch": self.epoch,
            "train_seconds": self.train_seconds,
            "extra": self.extra,
        }

    def resume(self) -> None:
        """Continue from ``checkpoint.pt`` in ``out_dir``, exactly where it stopped."""
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
        # The schedule and the batches depend on these: resuming under others
        # would silently train a different run.
        stored = ckpt.get("train_config", {})
        changed = {
            k: (stored[k], v) for k, v in dataclasses.asdict(self.config).items()
            if k not in RESUMABLE_CHANGES and k in stored and stored[k] != v
        }
        if changed:
            listed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise ValueError(
                f"{self.checkpoint_path} was trained with other settings ({listed}); resume with the "
                f"run's own options or start a new run in another --out"
            )
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.generator.set_state(ckpt["generator"])
        self.epoch = ckpt["epoch"]
        self.best_val = ckpt["best_val_log_prob"]
        self.best_state = ckpt["best_model"]
        self.train_seconds = ckpt.get("train_seconds", 0.0)
        self._resumed = True
        # Rows logged after the checkpoint belong to epochs that will be redone.
        metrics = self.out_dir / METRICS_NAME
        if metrics.exists():
            kept = [ln for ln in metrics.read_text().splitlines() if ln.strip() and json.loads(ln)["epoch"] <= self.epoch]
            metrics.write_text("".join(ln + "\n" for ln in kept))

    def _train_epoch(self, bar: tqdm) -> float:
        self.model.train()
        cfg = self.config
        n = self.train_data.shape[0]
        order = torch.randperm(n, generator=self.generator)
        total, count = 0.0, 0
        for step in range(self.steps_per_epoch):
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            batch = self.train_data[idx]
            log_p = self.log_prob_fn(self.model, batch, self.generator)
            loss = -log_p.mean() / self.dim
            if not torch.isfinite(loss):
                raise TrainingDiverged(
                    f"loss became {loss.item()} at epoch {self.epoch + 1}, step {step + 1}; the last good "
                    f"checkpoint is kept in {self.checkpoint_path}. Lower --lr or add --grad-clip."
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            total += loss.item() * idx.numel()
            count += idx.numel()
            bar.update(1)
            if step % 10 == 0:
                bar.set_postfix_str(f"epoch {self.epoch + 1} train {self.describe(total / count)}", refresh=False)
        return total / count

    def fit(self) -> list[dict[str, Any]]:
        """Train the remaining epochs; returns the metric rows written this call."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if not self._resumed:
            if self.checkpoint_path.exists():
                raise FileExistsError(
                    f"{self.checkpoint_path} already exists; pass --resume to continue that run "
                    f"or choose another --out"
                )
            (self.out_dir / METRICS_NAME).unlink(missing_ok=True)
            self._resumed = True  # a later fit() on this trainer continues the run
        rows = []
        cfg = self.config
        bar = tqdm(
            total=cfg.epochs * self.steps_per_epoch,
            initial=self.epoch * self.steps_per_epoch,
            desc="training",
            unit="step",
            disable=not self.progress,
            mininterval=1.0,
        )
        with bar:
            while self.epoch < cfg.epochs:
                row = self._run_epoch(bar)
                if row is not None:
                    rows.append(row)
        return rows

    def _run_epoch(self, bar: tqdm) -> Optional[dict[str, Any]]:
        """One epoch of training; every ``eval_every`` epochs also validation, a log row and a checkpoint."""
        cfg = self.config
        start = time.perf_counter()
        train_nll = self._train_epoch(bar)
        self.train_seconds += time.perf_counter() - start
        self.epoch += 1
        if self.epoch % cfg.eval_every and self.epoch != cfg.epochs:
            return None
        val_lp = mean_log_prob(self.model, self.val_data, self.log_prob_fn, 1000, seed=cfg.seed + 1)
        if not math.isfinite(val_lp):
            raise TrainingDiverged(
                f"validation log-likelihood is {val_lp} after epoch {self.epoch}; "
                f"the last good checkpoint is kept in {self.checkpoint_path}"
            )
        if self.best_val is None or val_lp > self.best_val:
            self.best_val = val_lp
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        row = {
            "epoch": self.epoch,
            "train_nll_per_dim": train_nll,
            "val_nll_per_dim": -val_lp / self.dim,
            "lr": self.scheduler.get_last_lr()[0],
            "train_seconds": self.train_seconds,
        }
        with open(self.out_dir / METRICS_NAME, "a") as f:
            f.write(json.dumps(row) + "\n")
        save_atomic(self._state(), self.checkpoint_path)
        if self.progress:
            tqdm.write(
                f"epoch {self.epoch}/{cfg.epochs}  train {self.describe(train_nll)}  "
                f"val {self.describe(-val_lp / self.dim)}  ({self.train_seconds:.1f}s)"
            )
        return row
