"""Image runs (MNIST, Fashion-MNIST): layout on disk, training, loading, sampling.

A run directory holds ``run.json`` (data set, kind, λ, model spec) and one
trainer directory per model: the run itself for an unconditional or
single-class run, ``class-K/`` for each class of a per-class run (the paper's
setting). Every trainer directory has its own atomic, resumable checkpoint.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from lunet.experiments.checkpoint import build_model, check_spec, load_checkpoint, load_model
from lunet.checks import check_positive_int, check_temperature
from lunet.experiments.data import DATASETS, FILES, find_file, load_dataset, train_val_split
from lunet.experiments.distributed import SINGLE, Group, current
from lunet.flow import placement
from lunet.experiments.preprocess import LN2, ImagePreprocessor
from lunet.experiments.rundir import RunFolder, UnsafeFile, read_text, write_text_atomic
from lunet.experiments.settings import DEFAULT_LAM, TrainConfig, paper_lunet_spec
from lunet.experiments.resources import check_model_memory
from lunet.experiments.train import LogProbFn, Trainer, Unit, check_shared_config, resolve_device
from lunet.experiments.vector_runs import RUN_KEYS

NUM_CLASSES = 10
KINDS = ("unconditional", "class", "per_class")
DATA_INITS = ("gaussian", "standardize", "none")


@dataclass
class ImageRunSettings:
    """What a run models; stored in ``run.json``."""

    dataset: str = "mnist"
    kind: str = "unconditional"
    class_label: Optional[int] = None
    model: dict[str, Any] = field(default_factory=lambda: paper_lunet_spec())
    lam: float = DEFAULT_LAM
    data_init: str = "gaussian"  # "gaussian" (start at the full-covariance Gaussian fit), "standardize" or "none"

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or not 0 < self.lam < 0.5:
            raise ValueError(f"lam (the logit transform's λ) must lie strictly between 0 and 0.5, got {self.lam!r}")
        if self.data_init not in DATA_INITS:
            raise ValueError(f"data_init must be one of {DATA_INITS}, got {self.data_init!r}")
        # true is an int to Python; read back from run.json it is no class
        if self.class_label is not None and (isinstance(self.class_label, bool)
                                             or not isinstance(self.class_label, int)):
            raise ValueError(f"class_label must be an integer or null, got {self.class_label!r}")
        if self.kind == "class" and not (isinstance(self.class_label, int) and 0 <= self.class_label < NUM_CLASSES):
            raise ValueError(f"--class must be an integer in 0..{NUM_CLASSES - 1}, got {self.class_label!r}")
        check_spec(self.model)

    @property
    def classes(self) -> list[Optional[int]]:
        """The class of each model in the run (None = all classes)."""
        if self.kind == "per_class":
            return list(range(NUM_CLASSES))
        return [self.class_label] if self.kind == "class" else [None]


def nats_to_bits_per_dim(nats_per_dim: float) -> float:
    """Per-dimension NLL of the dequantised ``y`` in nats -> standard bits/dim."""
    return nats_per_dim / LN2 + 8.0


BITS_PER_DIM = Unit("bits_per_dim", "bits/dim", nats_to_bits_per_dim)


def model_folder(run: RunFolder, class_label: Optional[int], kind: str) -> RunFolder:
    """Where the model of ``class_label`` keeps its checkpoint: a class folder in a per-class run, else the run's."""
    return run.class_folder(class_label) if kind == "per_class" else run


def class_subset(
    images: torch.Tensor, labels: torch.Tensor, class_label: Optional[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    if class_label is None:
        return images, labels
    keep = labels == class_label
    return images[keep], labels[keep]


def make_log_prob_fn(pre: ImagePreprocessor) -> LogProbFn:
    """``(model, pixels, noise) -> log p(y)`` in nats per image, dequantised with ``noise``
    (U[0, 1) draws of the pixels' shape, in the model's dtype, on the pixels' device; a
    ``Trainer`` draws them with ``dequantize=True``)."""

    def log_prob(model: nn.Module, pixels: torch.Tensor, noise: Optional[torch.Tensor]) -> torch.Tensor:
        if noise is None:  # else dequantize would draw from the unseeded global generator
            raise ValueError("image log-likelihoods need dequantisation noise: give the Trainer dequantize=True")
        ref = next(model.parameters())
        logits, logdet = pre.to_model_space(pixels, dtype=ref.dtype, noise=noise)
        return model.log_prob(logits.to(ref.device)) + logdet.to(ref.device)

    return log_prob


def write_run_file(run: RunFolder, settings: ImageRunSettings, data_dir: Optional[Path] = None) -> None:
    """``run.json``: the settings, and where the data were found (``data_dir``), so that the
    commands that read the test set find it again without ``--data-dir``."""
    run.path.mkdir(parents=True, exist_ok=True)
    path = run.run_file
    record = {
        "dataset": settings.dataset,
        "kind": settings.kind,
        "class_label": settings.class_label,
        "model": settings.model,
        "lam": settings.lam,
        "data_init": settings.data_init,
    }
    if path.exists() and run.checkpoints():  # without a checkpoint there is no run to protect
        existing = json.loads(read_text(path))
        existing.pop("data_dir", None)  # where the data lie may change; what they are may not
        if existing != record:
            raise ValueError(
                f"{path} describes another run ({existing}); use another --out, or the same options to resume"
            )
    if data_dir is not None:
        record["data_dir"] = str(data_dir.resolve())
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")


def recorded_data_dir(run_dir: str | Path) -> Optional[str]:
    """The folder where training found the run's data set (``run.json``), if recorded and still there."""
    try:
        found = json.loads(read_text(RunFolder(run_dir).run_file)).get("data_dir")
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, str) and Path(found).is_dir() else None


def read_run_file(run_dir: str | Path) -> ImageRunSettings:
    """The settings of an image run from its ``run.json``; ``ValueError`` naming the file when it is damaged."""
    run = RunFolder(run_dir)
    path = run.run_file
    if not path.exists():
        if run.checkpoint.is_file() and run.summary.is_file():
            raise ValueError(
                f"{run_dir} is a 2-D mixture run: its test NLL and KL are in {run.summary}, its "
                f"pictures in density.png and samples.png; this command takes image runs (MNIST, Fashion-MNIST). "
                f"`lunet export {run_dir} --out FILE` makes its weights a file to load in Python"
            )
        raise FileNotFoundError(f"{path} not found: {run_dir} is not an image run directory made by `lunet train`")
    try:
        record = json.loads(read_text(path))
    except UnsafeFile:
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); it was not written by `lunet train` or was damaged") from None
    if not isinstance(record, dict):
        raise ValueError(f"{path} holds a {type(record).__name__}, not the settings of a run")
    record.pop("data_dir", None)
    if any(key in record for key in RUN_KEYS):  # damaged or not, its entries are those of a run on own data
        raise ValueError(f"{run_dir} is a run on own data (trained with --data); this command takes image runs. "
                         f"`lunet evaluate {run_dir} --data FILE` and `lunet sample {run_dir} --out FILE.npy` take it")
    try:
        return ImageRunSettings(**record)
    except TypeError as exc:
        raise ValueError(f"{path} does not describe a run of this version: {exc}") from None
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None



def train_image_run(
    run_dir: str | Path,
    settings: ImageRunSettings,
    config: TrainConfig,
    data_dir: Optional[str] = None,
    verify: bool = True,
    resume: bool = False,
    progress: bool = True,
    limit: Optional[int] = None,
    overwrite: bool = False,
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
    run = RunFolder(run_dir)
    if limit is not None:
        check_positive_int(limit, "limit")
    resolve_device(config.device)
    check_model_memory(settings.model, config.torch_dtype, training=True, device=config.device)
    if settings.kind != "per_class":  # a per-class run's models each train in one process
        check_shared_config(config, group)  # before --overwrite clears anything
    images, labels = load_dataset(settings.dataset, "train", data_dir=data_dir, verify=verify)
    found = find_file(settings.dataset, FILES["train"][0], data_dir).parent
    (train_x, train_y), (val_x, val_y) = train_val_split(images, labels)
    resumable = [model_folder(run, c, settings.kind).checkpoint for c in settings.classes]
    with group.holding(run.locked()):
        group.decide(lambda: run.begin(resume, overwrite, resumable))
        return _train_models(run, settings, config, train_x, train_y, val_x, val_y, resume, progress, limit, found,
                             group)


def _train_models(
    run: RunFolder, settings: ImageRunSettings, config: TrainConfig, train_x: torch.Tensor, train_y: torch.Tensor,
    val_x: torch.Tensor, val_y: torch.Tensor, resume: bool, progress: bool, limit: Optional[int], data_dir: Path,
    group: Group,
) -> dict[str, Any]:
    pre = ImagePreprocessor(settings.lam, num_dims=train_x.shape[1])
    log_prob_fn = make_log_prob_fn(pre)
    # a divergence in one class lets the whole run continue with a gentler step
    after_divergence = resume and group.decide(lambda: any(
        load_checkpoint(path).get("diverged")
        for path in (model_folder(run, c, settings.kind).checkpoint for c in settings.classes)
        if path.is_file()
    ))
    # a per-class run deals its models out over the processes; any other run's model is shared by them
    dealt = settings.kind == "per_class" and group.shared
    speaks = group.is_main or dealt  # a shared model's messages come from process 0 alone
    results = {}
    for i, c in enumerate(settings.classes):
        if dealt and not group.owns(i):
            continue
        tx, _ = class_subset(train_x, train_y, c)
        vx, _ = class_subset(val_x, val_y, c)
        if limit is not None:
            tx, vx = tx[:limit], vx[: max(1, limit // 10)]
        out = model_folder(run, c, settings.kind).path
        torch.manual_seed(config.seed)
        model = build_model(settings.model)
        if settings.data_init != "none" and hasattr(model, "standardize"):
            gen = torch.Generator().manual_seed(config.seed)
            logits = pre.to_model_space(tx, gen)[0]
            if settings.data_init == "gaussian" and tx.shape[0] <= pre.num_dims and speaks:
                # the sample covariance of n <= D points is singular: its Gaussian puts held-out images far off
                print(f"warning: {tx.shape[0]} training images for {pre.num_dims} dimensions are too few for the "
                      f"Gaussian start (it needs more images than dimensions); starting from per-pixel "
                      f"standardisation instead (--data-init standardize)")
            if settings.data_init == "gaussian" and tx.shape[0] > pre.num_dims:
                model.init_gaussian(logits)
            else:
                model.standardize(logits)
        model_group = SINGLE if dealt else group
        trainer = Trainer(
            model, settings.model, config, tx, vx, log_prob_fn, dim=pre.num_dims, out_dir=out,
            unit=BITS_PER_DIM, progress=progress and group.is_main,
            extra={"class_label": c, "dataset": settings.dataset}, group=model_group, dequantize=True,
        )
        # rank 0's disk decides: the other machines of a shared model need not see the run folder
        if resume and model_group.decide(trainer.checkpoint_path.exists):
            trainer.resume(after_divergence=after_divergence)
        if i == 0:  # every check of the first model has passed: the folder now holds this run
            if dealt:  # only rank 0 deals itself model 0
                write_run_file(run, settings, data_dir)
            else:
                group.decide(lambda: write_run_file(run, settings, data_dir))
        if progress and speaks and c is not None:
            print(f"class {c}: {tx.shape[0]} training images")
        start = time.perf_counter()
        trainer.fit()
        results["all" if c is None else str(c)] = {
            "epochs": trainer.epoch,
            "train_seconds": trainer.train_seconds,
            "val_bits_per_dim": nats_to_bits_per_dim(-trainer.best_val / pre.num_dims),
            "wall_seconds_this_call": time.perf_counter() - start,
        }
    # a per-class run's processes finish at different times and exchange nothing at the end:
    # each returns its own classes
    return results


def load_run_models(
    run_dir: str | Path, which: str = "best", device: str = "cpu"
) -> tuple[ImageRunSettings, list[nn.Module], list[dict]]:
    """Settings, one model per entry of ``settings.classes`` (in eval mode on ``device``), and their checkpoints."""
    run = RunFolder(run_dir)
    dev = resolve_device(device)
    settings = read_run_file(run_dir)
    models, ckpts = [], []
    for c in settings.classes:
        model, ckpt = load_model(model_folder(run, c, settings.kind).checkpoint, which=which)
        models.append(model.to(dev).eval())
        ckpts.append(ckpt)
    return settings, models, ckpts


@torch.no_grad()
def fitted_latent_gaussian(model: nn.Module, pixels: torch.Tensor, pre: ImagePreprocessor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and Cholesky factor (D, D) of the latents of ``pixels`` (the authors' sampling prior);
    ``model``: a flow or a snapshot from :func:`~lunet.flow.for_inference`."""
    dtype, device = placement(model)
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
    settings: ImageRunSettings, models: list[nn.Module], pre: ImagePreprocessor,
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
    model: nn.Module,
    pre: ImagePreprocessor,
    num_samples: int,
    temperature: float = 1.0,
    prior: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Images (num_samples, D) in [0, 1]: latents from N(0, T² I) or, given ``prior = (mean, chol)``,
    from the fitted Gaussian with its spread scaled by ``temperature``; ``model``: a flow or a
    snapshot from :func:`~lunet.flow.for_inference` (faster for many calls)."""
    check_temperature(temperature)
    check_positive_int(num_samples, "num_samples")
    dtype, device = placement(model)
    eps = torch.randn(num_samples, pre.num_dims, generator=generator, dtype=torch.float64)
    if prior is None:
        z = temperature * eps
    else:
        mean, chol = prior
        z = mean + temperature * eps @ chol.T
    logits = model.inverse(z.to(device=device, dtype=dtype))[0]
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(
            f"samples at temperature {temperature:g} overflow {dtype} inside the network; use a lower temperature"
        )
    return pre.to_images(logits.double().cpu())
