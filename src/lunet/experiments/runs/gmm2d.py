"""The paper's 2-D experiment: fit an LU-Net to a Gaussian mixture and measure KL.

The mixture's density is known exactly, so the test NLL minus the mixture's
entropy is the KL divergence KL(p_data || p_model) in nats, up to Monte-Carlo
error of the test set.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Optional

import torch

from lunet.experiments.config.errors import RunExists
from lunet.experiments.config.presets import GMM2DSettings
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.data.mixture2d import GaussianMixture2D
from lunet.experiments.files.atomic import stale_temporaries, write_text_atomic
from lunet.experiments.plots import log_density_grid, plot_density_2d, plot_samples_2d
from lunet.experiments.store.checkpoint import save_checkpoint
from lunet.experiments.store.folder import RunFolder, as_folder
from lunet.experiments.training.log import Unit
from lunet.experiments.training.step import Objective
from lunet.experiments.training.trainer import Trainer, mean_log_prob, resolve_device
from lunet.flow import LUNet

__all__ = ["NUM_TRAIN", "NUM_VAL", "NUM_TEST", "NLL_NATS", "MEAN_NLL_NATS", "make_splits", "train_gmm2d_run",
           "train_starts"]

NUM_TRAIN = 9000  # as in the paper
NUM_VAL = 3000
NUM_TEST = 50000
# the NLL of a point (both dimensions), in nats: the figure the KL is read from
NLL_NATS = Unit("nll_nats", "nats", lambda nats_per_dim: 2 * nats_per_dim)
# the same, averaged over the starts trained side by side
MEAN_NLL_NATS = Unit("mean_nll_nats", "nats (mean of the starts)", lambda nats_per_dim: 2 * nats_per_dim)


def _log_prob_fn(model: LUNet, batch: torch.Tensor, noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    return model.log_prob(batch.to(device=model.input_mean.device, dtype=model.input_mean.dtype))


def make_splits(seed: int) -> dict[str, torch.Tensor]:
    """Train / validation / test points of the default mixture, disjoint draws from ``seed``."""
    mix = GaussianMixture2D()
    return {
        "train": mix.sample(NUM_TRAIN, seed=3 * seed + 1),
        "val": mix.sample(NUM_VAL, seed=3 * seed + 2),
        "test": mix.sample(NUM_TEST, seed=3 * seed + 3),
    }


def train_gmm2d_run(
    run_dir: str | Path | RunFolder, settings: GMM2DSettings, config: TrainConfig, *, resume: bool = False,
    overwrite: bool = False, progress: bool = True,
) -> dict[str, Any]:
    """Train, evaluate and draw; writes checkpoint, pictures and ``summary.json`` in ``run_dir``.

    ``overwrite`` replaces a run already in ``run_dir``, once the device and the
    folder have been checked and the folder is locked for this run.
    """
    run = as_folder(run_dir)
    resolve_device(config.device)
    with run.locked():
        if not overwrite and run.run_file.exists():
            if run.checkpoints():
                raise RunExists("{path} holds an image run or a run on own data; choose another {out}, "
                                "or {overwrite} to replace it", path=run.path)
            run.run_file.unlink()  # left by an image run that never saved a checkpoint
        run.begin(resume, overwrite, resumable=[run.starts.checkpoint])
        return _run(run, settings, config, resume, progress)


def _model_spec(settings: GMM2DSettings) -> dict[str, Any]:
    return {
        "name": "lunet",
        "features": 2,
        "num_blocks": settings.num_blocks,
        "alpha": settings.alpha,
        "learn_alpha": settings.learn_alpha,
        "diag": settings.diag,
        "init_scale": settings.init_scale,
    }


def train_starts(
    run: RunFolder, settings: GMM2DSettings, config: TrainConfig, data: dict[str, torch.Tensor], resume: bool,
    progress: bool,
) -> tuple[Trainer[LUNet], int, LUNet, list[float]]:
    """Train ``settings.starts`` initialisations side by side and keep the best by validation NLL.

    Separated modes trap a 2-D flow in a band that bridges them, and which start is
    trapped depends on its draw. The starts train as the groups of one grouped
    LU-Net on copies of each point (at width 2 a step costs mostly its overhead, so
    sixteen starts cost well under twice one), in ``RUN/starts/`` with its own
    resumable checkpoint, whose best weights are those with the best mean validation
    NLL; of those, the start with the best validation NLL is the run's model.

    Returns the trainer of the grouped flow, the chosen start's index and flow, and
    each start's validation NLL in nats per point.
    """
    k = settings.starts
    spec = {**_model_spec(settings), "features": 2 * k, "groups": k}
    torch.manual_seed(config.seed)
    grouped = LUNet(**{key: v for key, v in spec.items() if key != "name"})
    grouped.standardize(data["train"].repeat(1, k))
    objective = Objective(_log_prob_fn, features=2 * k, unit=NLL_NATS if k == 1 else MEAN_NLL_NATS)
    trainer = Trainer(grouped, spec, config, (data["train"].repeat(1, k), data["val"].repeat(1, k)), objective,
                      run.starts, progress=progress)
    if resume:
        trainer.resume()
    trainer.fit()
    assert trainer.state.best_state is not None  # fit() keeps a finite best validation or raises
    grouped.load_state_dict(trainer.state.best_state)
    starts = [flow.eval() for flow in grouped.split_groups()]
    nlls = [-mean_log_prob(flow, data["val"], _log_prob_fn, 10000, seed=0) for flow in starts]
    chosen = min(range(k), key=nlls.__getitem__)
    return trainer, chosen, starts[chosen], nlls


def _run(run: RunFolder, settings: GMM2DSettings, config: TrainConfig, resume: bool, progress: bool) -> dict[str, Any]:
    start = time.perf_counter()
    data = make_splits(settings.data_seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2-D batches are too small to gain from threads: 1 is ~20% faster
    try:
        trainer, chosen, model, start_nlls = train_starts(run, settings, config, data, resume, progress)
    finally:
        torch.set_num_threads(threads)
    for stale in stale_temporaries(run.checkpoint):  # left by a save that was killed; the lock says none runs
        stale.unlink(missing_ok=True)
    save_checkpoint({
        "model_spec": _model_spec(settings),
        "train_config": dataclasses.asdict(config),
        "model": {key: v.detach().cpu() for key, v in model.state_dict().items()},
        "best_model": None,
        "epoch": trainer.state.epoch,
        "train_seconds": trainer.state.train_seconds,
        "extra": {"dataset": "gmm2d", "start": chosen, "start_val_nll_nats": start_nlls},
    }, run.checkpoint)
    if progress:
        listed = ", ".join(f"{v:.4f}" for v in start_nlls)
        print(f"validation NLL of the {len(start_nlls)} starts, nats: {listed}; start {chosen} is the run's model")
    return _report(run, settings, config, data, trainer, model, start_nlls, start)


def _report(
    run: RunFolder, settings: GMM2DSettings, config: TrainConfig, data: dict[str, torch.Tensor],
    trainer: Trainer[LUNet], model: LUNet, start_nlls: list[float], start: float,
) -> dict[str, Any]:
    """Test KL, the pictures and ``summary.json`` of the chosen model."""
    out_dir = run.path
    mix = GaussianMixture2D()
    test_nll = -mean_log_prob(model, data["test"], _log_prob_fn, 10000, seed=0)
    entropy = mix.entropy()
    box = mix.bounding_box(margin_stds=4.0)
    ref = model.input_mean
    grid_model = log_density_grid(lambda p: model.log_prob(p.to(device=ref.device, dtype=ref.dtype)), box)
    grid_true = log_density_grid(mix.log_prob, box)
    plot_density_2d(
        data["train"], [("LU-Net", grid_model), ("true", grid_true)], box, out_dir / "density.png",
        title=f"{settings.num_blocks}-block LU-Net: test NLL {test_nll:.3f} nats, KL {test_nll - entropy:.3f} nats",
    )
    with torch.no_grad():
        samples = model.sample(NUM_TRAIN, generator=torch.Generator(ref.device).manual_seed(config.seed))
    plot_samples_2d(samples.cpu(), data["train"], box, out_dir / "samples.png")
    summary = {
        "dataset": "gmm2d",
        "test_nll_nats": test_nll,
        "entropy_nats": entropy,
        "kl_nats": test_nll - entropy,
        "num_test_points": NUM_TEST,
        "epochs": trainer.state.epoch,
        "train_seconds": trainer.state.train_seconds,
        "compiled": trainer.steps.compiled,
        "wall_seconds_this_call": time.perf_counter() - start,
        "model": _model_spec(settings),
        "starts": settings.starts,
        "start_val_nll_nats": start_nlls,
    }
    write_text_atomic(run.summary, json.dumps(summary, indent=2) + "\n")
    return summary
