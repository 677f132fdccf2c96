"""Out-of-distribution detection with exact likelihoods.

An image run scores the test set of its own data set (in-distribution) and of
another one (out-of-distribution). Every score is oriented so that a higher
value means "more likely out-of-distribution", and is judged by the AUROC, the
AUPR (out-of-distribution as the positive class) and the false-positive rate
at 95 % true-positive rate. Three scores per model:

- ``bits_per_dim``: the negative log-likelihood, bits/dim;
- ``complexity``: bits/dim minus the image's zlib-compressed length in bits per
  dimension, the likelihood corrected for how simple the image is;
- ``typicality``: ``|bits/dim − m|``, where ``m`` is the mean bits/dim of the
  validation images of the run's own training file, a two-sided test of
  whether the image lies in the model's typical set.

A full-covariance Gaussian fitted to the same training images, in the same
logit space, is scored alongside as the baseline.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, cast

import torch

from lunet.baselines.gaussian import FullCovarianceGaussian
from lunet.experiments.config.presets import IMAGE_DATASETS, NUM_CLASSES
from lunet.experiments.data.mnist import load_dataset, train_val_split
from lunet.experiments.data.preprocess import ImagePreprocessor, bits_per_dim
from lunet.experiments.evaluation.evaluate import ImageDensity, image_log_probs
from lunet.experiments.runs.images import class_subset, load_run_models
from lunet.experiments.store.folder import RunFolder
from lunet.flow import ClassConditionalFlow

if TYPE_CHECKING:
    from lunet.baselines.realnvp import RealNVP
    from lunet.flow import LUNet

__all__ = ["SCORES", "SCORED_MODELS", "TPR_LEVEL", "SEED", "auroc", "aupr", "fpr_at_tpr", "detection_metrics",
           "compressed_bits_per_dim", "image_bits_per_dim", "image_scores", "class_log_prior",
           "fit_gaussian", "ood_run"]

SCORES = {
    "bits_per_dim": "bits/dim",
    "complexity": "bits/dim − zlib bits/dim",
    "typicality": "|bits/dim − validation mean|",
}
# the models whose scores are compared: the run's and the Gaussian fitted beside it
SCORED_MODELS = {"run": "the run's model", "gaussian": "full-covariance Gaussian"}
TPR_LEVEL = 0.95
SEED = 0  # dequantisation noise of the scored images


# --- detection metrics --------------------------------------------------------------


def _pooled(in_scores: torch.Tensor, out_scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Distinct score values in decreasing order, with how many in- and out-scores take each."""
    for name, s in (("in_scores", in_scores), ("out_scores", out_scores)):
        if not isinstance(s, torch.Tensor) or s.dim() != 1 or s.numel() == 0:
            raise ValueError(f"{name} must be a non-empty 1-D tensor, got {getattr(s, 'shape', type(s).__name__)}")
        if bool(torch.isnan(s).any()):
            raise ValueError(f"{name} holds {int(torch.isnan(s).sum())} NaN score(s)")
    values, inverse = torch.unique(torch.cat([in_scores, out_scores]).double(), return_inverse=True)
    n_in = in_scores.numel()
    in_counts = torch.bincount(inverse[:n_in], minlength=values.numel()).double()
    out_counts = torch.bincount(inverse[n_in:], minlength=values.numel()).double()
    return values.flip(0), in_counts.flip(0), out_counts.flip(0)


def auroc(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """Area under the ROC curve, out-of-distribution positive: ``P(s_out > s_in) + ½ P(s_out = s_in)``.

    Computed from the rank sum (Mann–Whitney U) with tied scores given their mean rank.
    """
    values, in_counts, out_counts = _pooled(in_scores, out_scores)
    in_above = in_counts.cumsum(0) - in_counts  # in-scores strictly above each value
    pairs_won = (out_counts * (in_counts.sum() - in_above - in_counts)).sum()  # out above in
    pairs_tied = (out_counts * in_counts).sum()
    return float((pairs_won + 0.5 * pairs_tied) / (in_counts.sum() * out_counts.sum()))


def aupr(in_scores: torch.Tensor, out_scores: torch.Tensor) -> float:
    """Average precision, out-of-distribution positive: ``Σ_k (R_k − R_{k−1}) P_k`` over the
    distinct thresholds, taken in decreasing order (tied scores enter together)."""
    _, in_counts, out_counts = _pooled(in_scores, out_scores)
    tp, fp = out_counts.cumsum(0), in_counts.cumsum(0)
    precision = tp / (tp + fp)
    recall_gain = out_counts / out_counts.sum()
    return float((recall_gain * precision).sum())


def fpr_at_tpr(in_scores: torch.Tensor, out_scores: torch.Tensor, tpr: float = TPR_LEVEL) -> float:
    """The fraction of in-distribution scores at or above the highest threshold that flags at
    least ``tpr`` of the out-of-distribution scores."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr must lie in (0, 1], got {tpr!r}")
    _, in_counts, out_counts = _pooled(in_scores, out_scores)
    reached = out_counts.cumsum(0) >= tpr * out_counts.sum() - 1e-9
    first = int(reached.nonzero()[0])
    return float(in_counts[: first + 1].sum() / in_counts.sum())


def detection_metrics(in_scores: torch.Tensor, out_scores: torch.Tensor) -> dict[str, float]:
    """AUROC, AUPR, FPR at 95 % TPR and each side's mean score."""
    return {
        "auroc": auroc(in_scores, out_scores),
        "aupr": aupr(in_scores, out_scores),
        "fpr_at_95_tpr": fpr_at_tpr(in_scores, out_scores),
        "in_mean": float(in_scores.double().mean()),
        "out_mean": float(out_scores.double().mean()),
    }


# --- scores -------------------------------------------------------------------------


def compressed_bits_per_dim(pixels: torch.Tensor) -> torch.Tensor:
    """Length of each image's 8-bit pixels under zlib (level 9), in bits per dimension, (N, D) -> (N,)."""
    if not isinstance(pixels, torch.Tensor) or pixels.dim() != 2 or pixels.dtype != torch.uint8:
        raise ValueError(f"pixels must be a uint8 tensor of shape (N, D), got {getattr(pixels, 'dtype', type(pixels))} "
                         f"{tuple(getattr(pixels, 'shape', ()))}")
    rows = pixels.contiguous().numpy()
    lengths = [len(zlib.compress(row.tobytes(), 9)) for row in rows]
    return torch.tensor(lengths, dtype=torch.float64) * 8 / pixels.shape[1]


def image_bits_per_dim(
    model: ImageDensity, pixels: torch.Tensor, pre: ImagePreprocessor, seed: int = SEED
) -> torch.Tensor:
    """Bits/dim of each image under ``model`` (one dequantisation draw), (N, D) -> (N,) float64."""
    return bits_per_dim(image_log_probs(model, pixels, pre, seed=seed)[0], pre.num_dims)


def image_scores(in_bpd: torch.Tensor, out_bpd: torch.Tensor, in_pixels: torch.Tensor, out_pixels: torch.Tensor,
                 reference_bpd: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every score of :data:`SCORES` for the in- and out-of-distribution images, from their bits/dim."""
    return {
        "bits_per_dim": (in_bpd, out_bpd),
        "complexity": (in_bpd - compressed_bits_per_dim(in_pixels), out_bpd - compressed_bits_per_dim(out_pixels)),
        "typicality": ((in_bpd - reference_bpd).abs(), (out_bpd - reference_bpd).abs()),
    }


def class_log_prior(labels: torch.Tensor) -> torch.Tensor:
    """``log p(c)`` (C,) from the class frequencies of the training labels."""
    counts = torch.bincount(labels, minlength=NUM_CLASSES).double()
    return (counts / counts.sum()).log()


def fit_gaussian(pixels: torch.Tensor, pre: ImagePreprocessor, seed: int = SEED) -> FullCovarianceGaussian:
    """The full-covariance Gaussian of the dequantised, logit-transformed ``pixels``: the baseline."""
    logits, _ = pre.to_model_space(pixels, torch.Generator().manual_seed(seed), dtype=torch.float64)
    return FullCovarianceGaussian.fit(logits)


# --- a run against another data set ----------------------------------------------------


def ood_run(
    run_dir: str | Path | RunFolder,
    against: str,
    data_dir: Optional[str] = None,
    against_data_dir: Optional[str] = None,
    verify: bool = True,
    limit: Optional[int] = None,
    device: str = "cpu",
) -> tuple[dict[str, Any], dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]]:
    """Score the run's test set against ``against``'s test set; returns the report and the scores.

    The report holds, per model (``run``, ``gaussian``) and score, the metrics of
    :func:`detection_metrics`; the scores are ``{model: {score: (in, out)}}``. A
    per-class run scores the mixture ``log Σ_c p(x|c) p(c)``, ``p(c)`` the training
    class frequencies; a single-class run's distribution is its class (its test images,
    and the Gaussian and the typicality reference of its training images). ``limit``
    keeps the first ``limit`` test images of each set.
    """
    if against not in IMAGE_DATASETS:
        raise ValueError(f"--against must be one of {IMAGE_DATASETS}, got {against!r}")
    settings, models, _ = load_run_models(run_dir, device=device)
    if settings.kind == "conditional":
        raise ValueError("out-of-distribution scores take unconditional, single-class and per-class runs; "
                         "this run is one conditional LU-Net (trained with --conditional)")
    if against == settings.dataset:
        raise ValueError(f"--against {against} is the run's own data set; choose the other one")
    train_images, train_labels = load_dataset(settings.dataset, "train", data_dir=data_dir, verify=verify)
    in_images, in_labels = load_dataset(settings.dataset, "test", data_dir=data_dir, verify=verify)
    out_images, _ = load_dataset(against, "test", data_dir=against_data_dir, verify=verify)
    if out_images.shape[1] != in_images.shape[1]:
        raise ValueError(f"{against} images have {out_images.shape[1]} pixels, {settings.dataset} images "
                         f"{in_images.shape[1]}: the model cannot score them")
    (fit_x, fit_y), (val_x, val_y) = train_val_split(train_images, train_labels)
    if settings.kind == "class":  # a one-class model: its class is the distribution
        in_images = class_subset(in_images, in_labels, settings.class_label)[0]
        fit_x = class_subset(fit_x, fit_y, settings.class_label)[0]
        val_x = class_subset(val_x, val_y, settings.class_label)[0]
    if limit is not None:
        in_images, out_images = in_images[:limit], out_images[:limit]
    pre = ImagePreprocessor(settings.lam, num_dims=in_images.shape[1])
    flows = cast("list[LUNet | RealNVP]", models)  # only a conditional run's models come as LabelledFlow
    if settings.kind == "per_class":
        model: ImageDensity = ClassConditionalFlow(flows, class_log_prior(fit_y)).to(device).eval()
    else:
        model = flows[0]
    scored: dict[str, ImageDensity] = {"run": model, "gaussian": fit_gaussian(fit_x, pre).to(device)}
    scores: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
    report: dict[str, Any] = {
        "dataset": settings.dataset,
        "kind": settings.kind,
        "against": against,
        "num_in": int(in_images.shape[0]),
        "num_out": int(out_images.shape[0]),
        "lam": settings.lam,
        "scores": dict(SCORES),
        "models": {},
    }
    for name, m in scored.items():
        reference = float(image_bits_per_dim(m, val_x, pre, seed=SEED + 1).mean())
        in_bpd, out_bpd = image_bits_per_dim(m, in_images, pre), image_bits_per_dim(m, out_images, pre)
        scores[name] = image_scores(in_bpd, out_bpd, in_images, out_images, reference)
        report["models"][name] = {
            "label": SCORED_MODELS[name],
            "validation_bits_per_dim": reference,
            "metrics": {s: detection_metrics(*pair) for s, pair in scores[name].items()},
        }
    return report, scores
