"""Test-set evaluation of image runs: bits/dim in both conventions, the Bayes
classifier of per-class runs, and whether samples show their class."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, cast

import torch
from torch import nn

from lunet.experiments.config.presets import NUM_CLASSES
from lunet.experiments.data.mnist import dataset_digest, load_dataset, user_cache_dir
from lunet.experiments.data.preprocess import ImagePreprocessor, bits_per_dim, paper_bits_per_pixel
from lunet.experiments.runs.images import (
    ImageFlow,
    LabelledFlow,
    class_subset,
    fitted_class_priors,
    load_run_models,
    sample_images,
)
from lunet.experiments.store.checkpoint import load_checkpoint, save_checkpoint
from lunet.experiments.store.folder import RunFolder
from lunet.flow import LUNet
from lunet.frozen import frozen_or_module
from lunet.latent import flow_placement

__all__ = ["ImageDensity", "image_log_probs", "evaluate_run", "class_log_probs", "DigitClassifier",
           "train_classifier", "class_agreement"]


class ImageDensity(Protocol):
    """What scores images: a flow of images, its frozen copy from :func:`~lunet.frozen.frozen_or_module`,
    or a :class:`~lunet.experiments.runs.images.LabelledFlow`."""

    def log_prob(self, x: torch.Tensor, /) -> torch.Tensor: ...


@torch.no_grad()
def image_log_probs(
    model: ImageDensity, pixels: torch.Tensor, pre: ImagePreprocessor, seed: int, batch_size: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: ``log p(y)`` of the dequantised image and the flow's logit-space ``log p(l)``, nats (N,).

    ``model``: a flow or its frozen copy from :func:`~lunet.frozen.frozen_or_module` (faster).
    """
    dtype, device = flow_placement(model)
    gen = torch.Generator().manual_seed(seed)
    full, logit_space = [], []
    for start in range(0, pixels.shape[0], batch_size):
        logits, logdet = pre.to_model_space(pixels[start : start + batch_size], gen, dtype=dtype)
        lp = model.log_prob(logits.to(device)).double().cpu()
        logit_space.append(lp)
        full.append(lp + logdet.double())
    return torch.cat(full), torch.cat(logit_space)


def _spread(values: list[float]) -> dict[str, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else 0.0}


def evaluate_run(
    run_dir: str | Path | RunFolder, draws: int = 3, data_dir: Optional[str] = None, verify: bool = True,
    limit: Optional[int] = None, device: str = "cpu",
) -> dict[str, Any]:
    """Test bits/dim of a run (mean and spread over ``draws`` dequantisation draws).

    Per-class runs score each test image under its own class's model (the
    paper's setting), report every class, and add the Bayes classifier's
    accuracy ``argmax_c log p(x|c)`` (uniform class prior).
    """
    settings, models, ckpts = load_run_models(run_dir, device=device)
    frozen_models = [cast(ImageDensity, frozen_or_module(m)) for m in models]  # a frozen flow scores as the flow does
    images, labels = load_dataset(settings.dataset, "test", data_dir=data_dir, verify=verify)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    pre = ImagePreprocessor(settings.lam, num_dims=images.shape[1])
    d = pre.num_dims
    bpd_draws, paper_draws = [], []
    per_class: dict[str, dict[str, float]] = {}
    for draw in range(draws):
        full_all, logit_all = [], []
        for c, model in zip(settings.classes, frozen_models):
            x, _ = class_subset(images, labels, c)
            if x.shape[0] == 0:
                raise ValueError(
                    f"no test images of class {c} among the {images.shape[0]} evaluated; use a larger --limit"
                )
            full, logit_space = image_log_probs(model, x, pre, seed=1000 + draw)
            full_all.append(full)
            logit_all.append(logit_space)
            if c is not None and draw == 0:
                per_class[str(c)] = {
                    "bits_per_dim": float(bits_per_dim(full, d).mean()),
                    "paper_bits_per_pixel": float(paper_bits_per_pixel(logit_space, d).mean()),
                    "num_test_images": int(x.shape[0]),
                }
        bpd_draws.append(float(bits_per_dim(torch.cat(full_all), d).mean()))
        paper_draws.append(float(paper_bits_per_pixel(torch.cat(logit_all), d).mean()))
    bpd, paper = _spread(bpd_draws), _spread(paper_draws)
    result: dict[str, Any] = {
        "dataset": settings.dataset,
        "kind": settings.kind,
        "class_label": settings.class_label,
        "bits_per_dim": bpd["mean"],
        "bits_per_dim_std_over_draws": bpd["std"],
        "paper_bits_per_pixel": paper["mean"],
        "paper_bits_per_pixel_std_over_draws": paper["std"],
        "dequantisation_draws": draws,
        "lam": settings.lam,
        "num_test_images": int(sum(t.numel() for t in full_all)),
        "epochs": [ck["epoch"] for ck in ckpts],
        "train_seconds": sum(ck.get("train_seconds", 0.0) for ck in ckpts),
        "model": settings.model,
    }
    first = models[0]
    if settings.kind == "conditional":  # one model for every class, its weights counted once
        assert isinstance(first, LabelledFlow)
        result["num_parameters_free"] = result["num_parameters_stored"] = first.flow.num_parameters()
    else:
        from lunet.baselines.realnvp import RealNVP

        assert isinstance(first, (LUNet, RealNVP))  # the image models of build_model
        result["num_parameters_free"] = first.num_parameters("free") * len(models)
        result["num_parameters_stored"] = first.num_parameters("stored") * len(models)
    if per_class:
        result["per_class"] = per_class
    if settings.kind in ("per_class", "conditional"):  # a classifier needs a density of every class
        scores = class_log_probs(frozen_models, images, pre)
        result["bayes_classifier_accuracy"] = float((scores.argmax(1) == labels).double().mean())
        # log p(x) = logsumexp_c log p(x | c) - log K under a uniform class prior
        marginal = torch.logsumexp(scores, dim=1) - math.log(scores.shape[1])
        result["bits_per_dim_marginal"] = float(bits_per_dim(marginal, d).mean())
    return result


@torch.no_grad()
def class_log_probs(models: Sequence[ImageDensity], images: torch.Tensor, pre: ImagePreprocessor) -> torch.Tensor:
    """``log p(y | c)`` in nats of each test image under each class's model, (N, K) float64 (one
    dequantisation draw, the same for every class); ``models``: one flow (or frozen flow) per class."""
    return torch.stack([image_log_probs(m, images, pre, seed=7)[0] for m in models], dim=1)



class DigitClassifier(nn.Module):
    """A small MLP on pixels in [0, 1], (B, 784) -> logits (B, 10): the judge of sample classes."""

    def __init__(self, features: int = 784, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, NUM_CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def train_classifier(
    dataset: str, data_dir: Optional[str] = None, verify: bool = True, epochs: int = 4, seed: int = 0,
    cache: bool = True,
) -> tuple[DigitClassifier, float]:
    """Train :class:`DigitClassifier` on the real training set; returns it and its test accuracy.

    With ``cache``, the judge is kept in the user cache folder, named by the data files'
    digest, the epochs and the seed, and read from there next time (training is
    deterministic, so the cached judge is the one training would give again)."""
    path = None
    if cache:
        digest = dataset_digest(dataset, data_dir)
        path = user_cache_dir() / "judges" / f"{dataset}-{digest[:16]}-e{epochs}-s{seed}.pt"
        if path.is_file():
            try:
                stored = load_checkpoint(path)
                clf = DigitClassifier(stored["model_spec"]["features"])
                clf.load_state_dict(stored["model"])
                return clf.eval(), float(stored["test_accuracy"])
            except (ValueError, KeyError, RuntimeError):
                pass  # a damaged cache entry is replaced below
    clf, acc = _train_classifier(dataset, data_dir, verify, epochs, seed)
    if path is not None:
        try:
            save_checkpoint({"model_spec": {"name": "digit-classifier", "features": clf.net[0].in_features},
                             "model": clf.state_dict(), "test_accuracy": acc}, path)
        except OSError:
            pass  # no writable cache: the judge is trained again next time
    return clf, acc


def _train_classifier(
    dataset: str, data_dir: Optional[str], verify: bool, epochs: int, seed: int
) -> tuple[DigitClassifier, float]:
    torch.manual_seed(seed)
    x, y = load_dataset(dataset, "train", data_dir=data_dir, verify=verify)
    tx, ty = load_dataset(dataset, "test", data_dir=data_dir, verify=verify)
    x, tx = x.float() / 255, tx.float() / 255
    clf = DigitClassifier(x.shape[1])
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], 128):
            idx = order[start : start + 128]
            loss = nn.functional.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    clf.eval()
    with torch.no_grad():
        acc = float((clf(tx).argmax(1) == ty).double().mean())
    return clf, acc


def class_agreement(
    run_dir: str | Path | RunFolder,
    classifier: DigitClassifier,
    temperatures: tuple[float, ...] = (1.0, 0.7),
    priors: tuple[str, ...] = ("standard", "fitted"),
    num_samples: int = 200,
    data_dir: Optional[str] = None,
    verify: bool = True,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Fraction of class-k samples that ``classifier`` assigns to class k, per prior and temperature.

    Only per-class (and single-class) runs have a class to agree with.
    """
    settings, models, _ = load_run_models(run_dir, device=device)
    if settings.kind == "unconditional":
        raise ValueError(
            "class agreement needs a per-class or single-class run (trained with --per-class or --class K)"
        )
    flows = [cast(ImageFlow, frozen_or_module(m)) for m in models]  # a frozen flow keeps the flow's passes
    pre = ImagePreprocessor(settings.lam)
    out: dict[str, Any] = {}
    for prior_name in priors:
        # the fitted prior depends on the model alone: fit once per class
        fitted: Sequence[Optional[tuple[torch.Tensor, torch.Tensor]]]
        if prior_name == "fitted":
            fitted = fitted_class_priors(settings, flows, pre, data_dir=data_dir, verify=verify)
        else:
            fitted = [None] * len(flows)
        for t in temperatures:
            agree = {}
            for c, model, prior in zip(settings.classes, flows, fitted):
                assert c is not None  # a run of one or each class: an unconditional one was refused above
                gen = torch.Generator().manual_seed(seed + c)
                imgs = sample_images(model, pre, num_samples, temperature=t, prior=prior, generator=gen)
                with torch.no_grad():
                    pred = classifier(imgs.float()).argmax(1)
                agree[str(c)] = float((pred == c).double().mean())
            out[f"{prior_name}@T={t:g}"] = {"per_class": agree, "mean": sum(agree.values()) / len(agree)}
    return out

