"""Image runs (MNIST, Fashion-MNIST): layout on disk, training, loading, sampling.

A run directory holds ``run.json`` (data set, kind, λ, model spec) and one
trainer directory per model: the run itself for an unconditional or
single-class run, ``class-K/`` for each class of a per-class run (the paper's
setting). Every trainer directory has its own atomic, resumable checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, cast

import torch
from torch import nn

from lunet.checks import check_temperature
from lunet.conditional import ConditionalLUNet
from lunet.conditional_density import ConditionalDensity
from lunet.density import Density
from lunet.experiments.config.errors import SettingError
from lunet.experiments.config.models import build_model
from lunet.experiments.config.resources import check_model_memory
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.data.mnist import CLASS_NAMES, FILES, find_file, load_dataset, train_val_split
from lunet.experiments.data.preprocess import LN2, ImagePreprocessor
from lunet.experiments.store.checkpoint import load_checkpoint, load_model
from lunet.experiments.store.folder import RunFolder, as_folder
from lunet.experiments.store.record import (
    IMAGES,
    ImageRunSettings,
    RunRecord,
    read_run,
    write_run,
)
from lunet.experiments.training.distributed import SINGLE, Group, current
from lunet.experiments.training.log import Unit
from lunet.experiments.training.step import LogProbFn, Objective, check_shared_config
from lunet.experiments.training.trainer import Trainer, resolve_device
from lunet.flow import LUNet
from lunet.frozen import frozen_or_module
from lunet.latent import finite_temperature, flow_placement
from lunet.limits import check_positive_int

__all__ = ["nats_to_bits_per_dim", "BITS_PER_DIM", "model_folder", "class_subset", "make_log_prob_fn", "LabelledFlow",
           "read_run_file", "train_image_run", "load_run_models", "fitted_latent_gaussian",
           "fitted_class_priors", "sample_images", "sample_grid", "interpolate"]


def nats_to_bits_per_dim(nats_per_dim: float) -> float:
    """Per-dimension NLL of the dequantised ``y`` in nats -> standard bits/dim."""
    return nats_per_dim / LN2 + 8.0


BITS_PER_DIM = Unit("bits_per_dim", "bits/dim", nats_to_bits_per_dim)


class ImageFlow(Protocol):
    """What sampling and interpolation call of a model: a flow of images, its frozen copy from
    :func:`~lunet.frozen.frozen_or_module`, or a :class:`LabelledFlow`."""

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def model_folder(run: RunFolder, class_label: Optional[int], kind: str) -> RunFolder:
    """Where the model of ``class_label`` keeps its checkpoint: a class folder in a per-class run, else the run's."""
    if kind != "per_class":
        return run
    assert class_label is not None  # each model of a per-class run is of one class
    return run.class_folder(class_label)


def class_subset(
    images: torch.Tensor, labels: torch.Tensor, class_label: Optional[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    if class_label is None:
        return images, labels
    keep = labels == class_label
    return images[keep], labels[keep]


def make_log_prob_fn(pre: ImagePreprocessor, labelled: bool = False) -> LogProbFn[nn.Module]:
    """``(model, pixels, noise) -> log p(y)`` in nats per image, dequantised with ``noise``
    (U[0, 1) draws of the pixels' shape, in the model's dtype, on the pixels' device; a
    ``Trainer`` draws them with ``dequantize=True``). ``labelled``: each row carries its class
    label after its pixels, and the result is ``log p(y | label)`` of a conditional flow (noise
    of either width is taken for the pixels)."""

    def log_prob(model: nn.Module, pixels: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        if noise is None:  # else dequantize would draw from the unseeded global generator
            raise ValueError("image log-likelihoods need dequantisation noise: give the Objective dequantize=True")
        ref = next(model.parameters())
        labels = None
        if labelled:
            pixels, labels = pixels[:, :-1], pixels[:, -1].to(device=ref.device, dtype=torch.int64)
            noise = noise[:, : pixels.shape[1]]
        logits, logdet = pre.to_model_space(pixels, dtype=ref.dtype, noise=noise)
        logits = logits.to(ref.device)
        # the trained model: a flow of images, or of images given their labels
        lp = (cast(Density, model).log_prob(logits) if labels is None
              else cast(ConditionalDensity, model).log_prob(logits, labels))
        return lp + logdet.to(ref.device)

    return log_prob


class LabelledFlow:
    """A conditional flow under one class label, with the passes of an unconditional flow
    (``flow(x)``, ``inverse``, ``log_prob``, ``frozen``): what per-class evaluation, sampling and
    agreement call, so that a conditional run is scored and sampled class by class as a per-class
    run is. ``flow``: a :class:`~lunet.ConditionalLUNet` or its frozen copy. Adapters given one
    ``shared`` dict (those of one run) share one frozen copy of the flow, made at the first
    :meth:`frozen`."""

    def __init__(self, flow: Any, label: int, shared: Optional[dict] = None) -> None:
        self.flow = flow
        self.label = label
        self.dtype, self.device = flow_placement(flow)
        self._shared = {} if shared is None else shared

    def _label(self) -> torch.Tensor:
        return torch.tensor(self.label, device=self.device)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow(x, self._label())

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.flow.inverse(z, self._label())

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.flow.log_prob(x, self._label())

    def frozen(self) -> "LabelledFlow":
        if "frozen" not in self._shared:
            self._shared["frozen"] = frozen_or_module(self.flow)
        return LabelledFlow(self._shared["frozen"], self.label)


def read_run_file(run_dir: str | Path | RunFolder) -> ImageRunSettings:
    """The settings of the image run in ``run_dir``; ``ValueError`` naming ``run.json`` when it is
    damaged, or saying what the folder holds instead."""
    settings = read_run(as_folder(run_dir), (IMAGES,)).settings
    assert isinstance(settings, ImageRunSettings)  # read_run names any other kind of run in its error
    return settings


def train_image_run(
    run_dir: str | Path | RunFolder,
    settings: ImageRunSettings,
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    data_dir: Optional[str] = None,
    verify: bool = True,
    limit: Optional[int] = None,
    group: Optional[Group] = None,
) -> dict[str, Any]:
    """Train every model of the run; returns ``{"epochs", "train_seconds", "val_bits_per_dim"}`` per model.

    ``limit`` keeps only the first ``limit`` training images of each model (for
    smoke tests). ``overwrite`` replaces a run already in ``run_dir``, once the
    data have been found and verified, the device checked and the folder locked.

    With several processes (``group``, default those of ``torch.distributed``), one
    model is trained by all of them together; the models of a per-class run are
    dealt out instead, each trained by one process alone, and each process returns
    the models it trained.
    """
    group = current() if group is None else group
    run = as_folder(run_dir)
    if limit is not None:
        check_positive_int(limit, "limit")
    resolve_device(config.device)
    check_model_memory(settings.model, config.torch_dtype, training=True, device=config.device)
    if settings.kind != "per_class":  # a per-class run's models each train in one process
        check_shared_config(config, group)  # before --overwrite clears anything
    images, labels = load_dataset(settings.dataset, "train", data_dir=data_dir, verify=verify)
    record = RunRecord(IMAGES, settings, str(find_file(settings.dataset, FILES["train"][0], data_dir).parent.resolve()))
    (train_x, train_y), (val_x, val_y) = train_val_split(images, labels)
    resumable = [model_folder(run, c, settings.kind).checkpoint for c in settings.model_classes]
    with group.entered_on_main(run.locked()):
        group.on_main(lambda: run.begin(resume, overwrite, resumable))
        return _train_models(run, record, config, train_x, train_y, val_x, val_y, resume, progress, limit, group)


def _train_models(
    run: RunFolder, record: RunRecord, config: TrainConfig, train_x: torch.Tensor, train_y: torch.Tensor,
    val_x: torch.Tensor, val_y: torch.Tensor, resume: bool, progress: bool, limit: Optional[int], group: Group,
) -> dict[str, Any]:
    settings = record.settings
    assert isinstance(settings, ImageRunSettings)  # the record train_image_run made
    pre = ImagePreprocessor(settings.lam, num_dims=train_x.shape[1])
    labelled = settings.kind == "conditional"
    log_prob_fn = make_log_prob_fn(pre, labelled)
    # a divergence in one class lets the whole run continue with a gentler step
    after_divergence = resume and group.on_main(lambda: any(
        load_checkpoint(path).get("diverged")
        for path in (model_folder(run, c, settings.kind).checkpoint for c in settings.model_classes)
        if path.is_file()
    ))
    # a per-class run deals its models out over the processes; any other run's model is shared by them
    classes_dealt = settings.kind == "per_class" and group.shared
    reports = group.is_main or classes_dealt  # a shared model's messages come from process 0 alone
    results = {}
    for i, c in enumerate(settings.model_classes):
        if classes_dealt and not group.owns(i):
            continue
        tx, ty = class_subset(train_x, train_y, c)
        vx, vy = class_subset(val_x, val_y, c)
        if limit is not None:
            tx, vx, ty, vy = tx[:limit], vx[: max(1, limit // 10)], ty[:limit], vy[: max(1, limit // 10)]
        out = model_folder(run, c, settings.kind)
        torch.manual_seed(config.seed)
        model = build_model(settings.model)
        if settings.data_init != "none" and isinstance(model, (LUNet, ConditionalLUNet)):  # RealNVP has no start
            gen = torch.Generator().manual_seed(config.seed)
            logits = pre.to_model_space(tx, gen)[0]
            if settings.data_init == "gaussian" and tx.shape[0] <= pre.num_dims and reports:
                # the sample covariance of n <= D points is singular: its Gaussian puts held-out images far off
                print(f"warning: {tx.shape[0]} training images for {pre.num_dims} dimensions are too few for the "
                      f"Gaussian start (it needs more images than dimensions); starting from per-pixel "
                      f"standardisation instead (--data-init standardize)")
            if settings.data_init == "gaussian" and tx.shape[0] > pre.num_dims:
                model.init_gaussian(logits)
            else:
                model.standardize(logits)
        if labelled:  # each row carries its label after its pixels (as a pixel's byte), for log_prob_fn
            tx, vx = (torch.cat([x, y.to(x.dtype).unsqueeze(1)], 1) for x, y in ((tx, ty), (vx, vy)))
        model_group = SINGLE if classes_dealt else group
        objective = Objective(log_prob_fn, features=pre.num_dims, unit=BITS_PER_DIM, dequantize=True)
        trainer = Trainer(model, settings.model, config, (tx, vx), objective, out, progress=progress and group.is_main,
                          group=model_group, extra={"class_label": c, "dataset": settings.dataset})
        # rank 0's disk decides: the other machines of a shared model need not see the run folder
        if resume and model_group.on_main(trainer.checkpoint_path.exists):
            trainer.resume(after_divergence=after_divergence)
        if i == 0:  # every check of the first model has passed: the folder now holds this run
            if classes_dealt:  # only rank 0 deals itself model 0
                write_run(run, record)
            else:
                group.on_main(lambda: write_run(run, record))
        if progress and reports and c is not None:
            print(f"class {c}: {tx.shape[0]} training images")
        start = time.perf_counter()
        trainer.fit()
        assert trainer.state.best_val is not None  # fit() keeps a finite best validation or raises
        results["all" if c is None else str(c)] = {
            "epochs": trainer.state.epoch,
            "train_seconds": trainer.state.train_seconds,
            "val_bits_per_dim": nats_to_bits_per_dim(-trainer.state.best_val / pre.num_dims),
            "wall_seconds_this_call": time.perf_counter() - start,
        }
    # a per-class run's processes finish at different times and exchange nothing at the end:
    # each returns its own classes
    return results


def load_run_models(
    run_dir: str | Path | RunFolder, which: str = "best", device: str = "cpu"
) -> tuple[ImageRunSettings, list[nn.Module | LabelledFlow], list[dict]]:
    """Settings, one model per entry of ``settings.classes`` (in eval mode on ``device``), and the
    checkpoint of each model stored; a conditional run's one model comes as a :class:`LabelledFlow`
    under each class."""
    run = as_folder(run_dir)
    dev = resolve_device(device)
    settings = read_run_file(run)
    models: list[nn.Module | LabelledFlow] = []
    ckpts = []
    for c in settings.model_classes:
        model, ckpt = load_model(model_folder(run, c, settings.kind).checkpoint, which=which)
        models.append(model.to(dev).eval())
        ckpts.append(ckpt)
    if settings.kind == "conditional":
        shared: dict = {}
        flow, models = models[0], []
        for c in settings.classes:
            assert c is not None  # a conditional run models every class by its label
            models.append(LabelledFlow(flow, c, shared))
    return settings, models, ckpts


@torch.no_grad()
def fitted_latent_gaussian(
    model: ImageFlow, pixels: torch.Tensor, pre: ImagePreprocessor, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and Cholesky factor (D, D) of the latents of ``pixels`` (the authors' sampling prior);
    ``model``: a flow or its frozen copy from :func:`~lunet.frozen.frozen_or_module`."""
    dtype, device = flow_placement(model)
    gen = torch.Generator().manual_seed(seed)
    zs = []
    for start in range(0, pixels.shape[0], 1000):
        logits, _ = pre.to_model_space(pixels[start : start + 1000], gen, dtype=torch.float64)
        zs.append(model(logits.to(device=device, dtype=dtype))[0].double().cpu())
    z = torch.cat(zs)
    mean = z.mean(0)
    cov = torch.cov(z.T) + 1e-6 * torch.eye(z.shape[1], dtype=torch.float64)
    return mean, torch.linalg.cholesky(cov)


def fitted_class_priors(
    settings: ImageRunSettings, models: Sequence[ImageFlow], pre: ImagePreprocessor,
    data_dir: Optional[str] = None, verify: bool = True, num_images: int = 5000,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The fitted latent Gaussian of each model of a run, from up to ``num_images``
    images of its class in the training split (never the validation or test set)."""
    images, labels = load_dataset(settings.dataset, "train", data_dir=data_dir, verify=verify)
    (train_x, train_y), _ = train_val_split(images, labels)
    return [
        fitted_latent_gaussian(model, class_subset(train_x, train_y, c)[0][:num_images], pre)
        for c, model in zip(settings.classes, models)
    ]


@torch.no_grad()
def sample_images(
    model: ImageFlow,
    pre: ImagePreprocessor,
    num_samples: int,
    temperature: float = 1.0,
    prior: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Images (num_samples, D) in [0, 1]: latents from N(0, T² I) or, given ``prior = (mean, chol)``,
    from the fitted Gaussian with its spread scaled by ``temperature``; ``model``: a flow or its
    frozen copy from :func:`~lunet.frozen.frozen_or_module` (faster for many calls)."""
    check_temperature(temperature)
    check_positive_int(num_samples, "num_samples")
    dtype, device = flow_placement(model)
    eps = torch.randn(num_samples, pre.num_dims, generator=generator, dtype=torch.float64)

    def latent(t: float, draws: torch.Tensor = eps) -> torch.Tensor:
        return t * draws if prior is None else prior[0] + t * draws @ prior[1].T

    z = latent(temperature).to(device=device, dtype=dtype)
    finite = torch.isfinite(z).all(dim=1)  # draws beyond the dtype's range: no pass can take them
    logits = model.inverse(z)[0] if bool(finite.all()) else z
    finite &= torch.isfinite(logits).all(dim=1)
    if not bool(finite.all()):
        few = eps[~finite.cpu()][:16]
        found = finite_temperature(model, lambda t: latent(t, few), temperature)
        where = (f"on the same draws it stays finite at {{temperature}} {found:.3g}" if found is not None
                 else "it is not finite on them at any temperature")
        raise SettingError(f"samples at {{temperature}} {temperature:g} overflow {str(dtype).removeprefix('torch.')} "
                           f"inside the flow ({int((~finite).sum())} of {num_samples} images hold NaN or infinite "
                           f"values); {where}: give a lower {{temperature}}")
    return pre.to_images(logits.double().cpu())


def sample_grid(
    run_dir: str | Path | RunFolder, num_samples: Optional[int] = None, per_row: int = 10, temperature: float = 1.0,
    prior: str = "standard", seed: int = 0, data_dir: Optional[str] = None, verify: bool = True, device: str = "cpu",
) -> tuple[ImageRunSettings, torch.Tensor, Optional[list[str]]]:
    """Samples of an image run for a picture: the settings, the images (N, 28, 28) in [0, 1], and
    for a per-class run the name of each row's class (else None).

    A one-model run draws ``num_samples`` images (default 100); a per-class run ``per_row`` of each
    class, one row per class. Latents come from N(0, T² I) (``prior="standard"``, the model's
    own), or from the Gaussian fitted to the latents of the training images (``"fitted"``,
    the authors' sampling). The draws of class ``c`` come from seed ``seed + c``."""
    if prior not in ("standard", "fitted"):
        raise ValueError(f"prior must be 'standard' or 'fitted', got {prior!r}")
    settings, models, _ = load_run_models(run_dir, device=device)
    if len(models) > 1 and num_samples is not None:
        raise SettingError("{num_samples} is for unconditional and single-class runs; a per-class run draws "
                           "{per_row} images per class")
    flows = [cast(ImageFlow, frozen_or_module(m)) for m in models]  # a frozen flow keeps the flow's passes
    pre = ImagePreprocessor(settings.lam)
    priors: list = [None] * len(flows)
    if prior == "fitted":
        priors = fitted_class_priors(settings, flows, pre, data_dir=data_dir, verify=verify)
    rows, labels = [], []
    for c, model, fitted in zip(settings.classes, flows, priors):
        gen = torch.Generator().manual_seed(seed + (c or 0))
        count = per_row if len(models) > 1 else (num_samples or 100)
        rows.append(sample_images(model, pre, count, temperature, fitted, gen))
        labels.append("all" if c is None else CLASS_NAMES[settings.dataset][c])
    return settings, torch.cat(rows).reshape(-1, 28, 28), labels if len(models) > 1 else None


@torch.no_grad()
def interpolate(
    run_dir: str | Path | RunFolder, pairs: Sequence[tuple[int, int]], steps: int = 10, data_dir: Optional[str] = None,
    verify: bool = True, device: str = "cpu",
) -> torch.Tensor:
    """Images (len(pairs) · steps, 28, 28) in [0, 1]: for each pair ``(a, b)`` of test-image indices,
    ``steps`` images along the straight line between their latents, both ends included."""
    settings, models, _ = load_run_models(run_dir, device=device)
    if len(models) != 1:
        raise ValueError("interpolate needs an unconditional or single-class run")
    model = cast(ImageFlow, models[0])  # a run of one model holds an unconditional flow
    pre = ImagePreprocessor(settings.lam)
    test_x, _ = load_dataset(settings.dataset, "test", data_dir=data_dir, verify=verify)
    bad = [i for pair in pairs for i in pair if not 0 <= i < test_x.shape[0]]
    if bad:
        raise SettingError("{pairs} indices must lie in 0..{top}, got {bad}", top=test_x.shape[0] - 1, bad=bad)
    gen = torch.Generator().manual_seed(0)
    dtype, dev = flow_placement(model)
    frames = []
    for a, b in pairs:
        logits, _ = pre.to_model_space(test_x[[a, b]], gen, dtype=dtype)
        z = model(logits.to(dev))[0]
        w = torch.linspace(0, 1, steps, dtype=dtype, device=dev).unsqueeze(1)
        frames.append(pre.to_images(model.inverse((1 - w) * z[0] + w * z[1])[0].cpu()))
    return torch.cat(frames).reshape(-1, 28, 28)
