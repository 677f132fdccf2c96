"""The paper's 2-D experiment: fit an LU-Net to a Gaussian mixture and measure KL.

The mixture's density is known exactly, so the test NLL minus the mixture's
entropy is the KL divergence KL(p_data || p_model) in nats, up to Monte-Carlo
error of the test set.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from lunet.flow import LUNet
from lunet.experiments.plots import density_grid, plot_density_2d, plot_samples_2d
from lunet.experiments.toy import GaussianMixture2D
from lunet.experiments.rundir import RunFolder
from lunet.experiments.settings import GMM2DSettings, TrainConfig
from lunet.experiments.train import Trainer, mean_log_prob, resolve_device

NUM_TRAIN = 9000  # as in the paper
NUM_VAL = 3000
NUM_TEST = 50000


def _log_prob_fn(model: torch.nn.Module, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return model.log_prob(batch.to(device=model.input_mean.device, dtype=model.input_mean.dtype))


def make_splits(seed: int) -> dict[str, torch.Tensor]:
    """Train / validation / test points of the default mixture, disjoint draws from ``seed``."""
    mix = GaussianMixture2D()
    return {
        "train": mix.sample(NUM_TRAIN, seed=3 * seed + 1),
        "val": mix.sample(NUM_VAL, seed=3 * seed + 2),
        "test": mix.sample(NUM_TEST, seed=3 * seed + 3),
    }


def run(
    out_dir: str | Path, settings: GMM2DSettings, config: TrainConfig, resume: bool = False,
    progress: bool = True, overwrite: bool = False,
) -> dict[str, Any]:
    """Train, evaluate and draw; writes checkpoint, pictures and ``summary.json`` in ``out_dir``.

    ``overwrite`` replaces a run already in ``out_dir``, once the device and the
    folder have been checked and the folder is locked for this run.
    """
    run = RunFolder(out_dir)
    resolve_device(config.device)
    with run.locked():
        if overwrite:
            run.clear()
        elif run.run_file.exists():
            if run.checkpoints():
                raise FileExistsError(f"{out_dir} holds an image run; choose another --out, or --overwrite to replace it")
            run.run_file.unlink()  # left by an image run that never saved a checkpoint
        return _run(run.path, settings, config, resume, progress)


def _run(out_dir: Path, settings: GMM2DSettings, config: TrainConfig, resume: bool, progress: bool) -> dict[str, Any]:
    mix = GaussianMixture2D()
    data = make_splits(settings.data_seed)
    torch.manual_seed(config.seed)
    spec = {
        "name": "lunet",
        "dim": 2,
        "num_blocks": settings.num_blocks,
        "alpha": settings.alpha,
        "diag": settings.diag,
        "init_scale": settings.init_scale,
    }
    model = LUNet(**{k: v for k, v in spec.items() if k != "name"})
    model.standardize(data["train"])
    trainer = Trainer(
        model, spec, config, data["train"], data["val"], _log_prob_fn, dim=2, out_dir=out_dir,
        describe=lambda nats: f"nll {2 * nats:.4f} nats", progress=progress,
    )
    if resume:
        trainer.resume()
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2-D batches are too small to gain from threads: 1 is ~20% faster
    try:
        trainer.fit()
    finally:
        torch.set_num_threads(threads)
    model.load_state_dict(trainer.best_state)
    model.eval()
    test_nll = -mean_log_prob(model, data["test"], _log_prob_fn, 10000, seed=0)
    entropy = mix.entropy()
    box = mix.bounding_box(margin_stds=4.0)
    ref = model.input_mean
    grid_model = density_grid(lambda p: model.log_prob(p.to(device=ref.device, dtype=ref.dtype)), box)
    grid_true = density_grid(mix.log_prob, box)
    plot_density_2d(
        data["train"], [("LU-Net density", grid_model), ("true density", grid_true)], box, out_dir / "density.png",
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
        "epochs": trainer.epoch,
        "train_seconds": trainer.train_seconds,
        "wall_seconds_this_call": time.perf_counter() - start,
        "model": spec,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
