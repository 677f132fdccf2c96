"""The paper's 2-D experiment: fit an LU-Net to a Gaussian mixture and measure KL.

The mixture's density is known exactly, so the test NLL minus the mixture's
entropy is the KL divergence KL(p_data || p_model) in nats, up to Monte-Carlo
error of the test set.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from lunet.flow import LUNet
from lunet.experiments.plots import log_density_grid, plot_density_2d, plot_samples_2d
from lunet.experiments.toy import GaussianMixture2D
from lunet.experiments.rundir import RunFolder
from lunet.experiments.settings import GMM2DSettings, TrainConfig
from lunet.experiments.train import Trainer, Unit, mean_log_prob, resolve_device

NUM_TRAIN = 9000  # as in the paper
NUM_VAL = 3000
NUM_TEST = 50000
# the NLL of a point (both dimensions), in nats: the figure the KL is read from
NLL_NATS = Unit("nll_nats", "nats", lambda nats_per_dim: 2 * nats_per_dim)


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


def _model_spec(settings: GMM2DSettings) -> dict[str, Any]:
    return {
        "name": "lunet",
        "dim": 2,
        "num_blocks": settings.num_blocks,
        "alpha": settings.alpha,
        "diag": settings.diag,
        "init_scale": settings.init_scale,
    }


def _new_model(spec: dict[str, Any], seed: int, train: torch.Tensor) -> LUNet:
    torch.manual_seed(seed)
    model = LUNet(**{k: v for k, v in spec.items() if k != "name"})
    model.standardize(train)
    return model


def choose_start(
    settings: GMM2DSettings, config: TrainConfig, data: dict[str, torch.Tensor], progress: bool = True
) -> tuple[LUNet, list[float]]:
    """Train ``settings.starts`` initialisations for ``settings.start_epochs(config.epochs)`` epochs each and
    return the one with the best validation NLL, and each one's validation NLL (nats per point).

    Separated modes trap a 2-D flow in a band that bridges them, and which start is
    trapped depends on the draw; a short run already tells them apart. The starts'
    seeds are drawn from ``config.seed``, so the choice is reproducible.
    """
    spec = _model_spec(settings)
    seeds = torch.randint(2**62, (settings.starts,), generator=torch.Generator().manual_seed(config.seed)).tolist()
    epochs = settings.start_epochs(config.epochs)
    short = dataclasses.replace(config, epochs=epochs, eval_every=epochs)
    best, nlls = None, []
    with tempfile.TemporaryDirectory(prefix="lunet-gmm2d-start-") as scratch:
        for k, seed in enumerate(seeds):
            model = _new_model(spec, seed, data["train"])
            trainer = Trainer(
                model, spec, dataclasses.replace(short, seed=seed), data["train"], data["val"], _log_prob_fn, dim=2,
                out_dir=Path(scratch) / f"start-{k}", progress=False,
            )
            trainer.fit()
            nlls.append(-trainer.best_val)
            if progress:
                print(f"start {k + 1}/{settings.starts}: validation NLL {nlls[-1]:.4f} nats after {epochs} epochs")
            if best is None or nlls[-1] < min(nlls[:-1]):
                model.load_state_dict(trainer.best_state)
                best = model
    return best, nlls


def _run(out_dir: Path, settings: GMM2DSettings, config: TrainConfig, resume: bool, progress: bool) -> dict[str, Any]:
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 2-D batches are too small to gain from threads: 1 is ~20% faster
    try:
        trainer, start_nlls = _train(out_dir, settings, config, resume, progress)
    finally:
        torch.set_num_threads(threads)
    return _report(out_dir, settings, config, trainer, start_nlls, start)


def _train(
    out_dir: Path, settings: GMM2DSettings, config: TrainConfig, resume: bool, progress: bool
) -> tuple[Trainer, list[float] | None]:
    data = make_splits(settings.data_seed)
    spec = _model_spec(settings)
    if resume:  # the chosen start is in the checkpoint
        model, start_nlls = _new_model(spec, config.seed, data["train"]), None
    else:
        model, start_nlls = choose_start(settings, config, data, progress)
    trainer = Trainer(
        model, spec, config, data["train"], data["val"], _log_prob_fn, dim=2, out_dir=out_dir,
        unit=NLL_NATS, progress=progress,
    )
    if resume:
        trainer.resume()
    trainer.fit()
    return trainer, start_nlls


def _report(
    out_dir: Path, settings: GMM2DSettings, config: TrainConfig, trainer: Trainer, start_nlls: list[float] | None,
    start: float,
) -> dict[str, Any]:
    """Test KL, the pictures and ``summary.json`` of the trained run."""
    mix = GaussianMixture2D()
    data = make_splits(settings.data_seed)
    spec, model = trainer.model_spec, trainer.model
    model.load_state_dict(trainer.best_state)
    model.eval()
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
        "epochs": trainer.epoch,
        "train_seconds": trainer.train_seconds,
        "wall_seconds_this_call": time.perf_counter() - start,
        "model": spec,
        "starts": settings.starts,
        "start_epochs": settings.start_epochs(config.epochs),
        "start_val_nll_nats": start_nlls,
    }
    RunFolder(out_dir).summary.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
