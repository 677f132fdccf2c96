"""Pictures: 2-D densities and samples, image grids, training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from lunet.experiments.files.atomic import write_atomic  # noqa: E402
from lunet.experiments.store.folder import read_metrics

__all__ = ["log_density_grid", "LOG_DENSITY_RANGE", "plot_density_2d", "plot_samples_2d", "save_image_grid",
           "plot_training_curves", "plot_score_histograms", "save_figure", "plot_samples_beside_data"]

Box = tuple[float, float, float, float]


@torch.no_grad()
def log_density_grid(log_prob: Callable[[torch.Tensor], torch.Tensor], box: Box, resolution: int = 200) -> np.ndarray:
    """``log_prob`` on a ``resolution``² grid over ``box``, shape (res, res), rows = y."""
    x0, x1, y0, y1 = box
    xs = torch.linspace(x0, x1, resolution, dtype=torch.float64)
    ys = torch.linspace(y0, y1, resolution, dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)
    return log_prob(pts).double().reshape(resolution, resolution).cpu().numpy()


# the log-density row shows this many nats below the highest value; lower is clipped
LOG_DENSITY_RANGE = 12.0


def plot_density_2d(
    data: torch.Tensor,
    panels: Sequence[tuple[str, np.ndarray]],
    box: Box,
    path: str | Path,
    title: Optional[str] = None,
) -> Path:
    """The data, and for each ``(title, log-density grid)`` panel its density (top row) and
    log-density (bottom row); each row on one colour scale with its colour bar, so the
    panels compare directly. Writes a PNG."""
    cols = 1 + len(panels)
    fig, axes = plt.subplots(2, cols, figsize=(3.9 * cols + 0.9, 7.6), squeeze=False)
    pts = data.cpu().numpy()
    axes[0, 0].scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4, color="tab:blue")
    axes[0, 0].set_title(f"data ({len(pts)} points)")
    axes[1, 0].axis("off")
    top = max(float(np.nanmax(grid)) for _, grid in panels)
    rows = (
        ("density", lambda g: np.exp(g), 0.0, float(np.exp(top))),
        ("log-density, nats", lambda g: np.clip(g, top - LOG_DENSITY_RANGE, None), top - LOG_DENSITY_RANGE, top),
    )
    for r, (label, show, low, high) in enumerate(rows):
        image = None
        for ax, (name, grid) in zip(axes[r, 1:], panels):
            image = ax.imshow(show(grid), origin="lower", extent=box, cmap="viridis", aspect="equal",
                              vmin=low, vmax=high)
            ax.set_title(f"{name}: {label}", fontsize=10)
        assert image is not None  # there is a panel: ``top`` took the largest of them
        fig.colorbar(image, ax=list(axes[r, 1:]), shrink=0.85, label=label)
    for ax in axes.flat:
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_samples_2d(samples: torch.Tensor, data: torch.Tensor, box: Box, path: str | Path) -> Path:
    """Model samples beside the data, on the same axes (``box``, fixed to the data's range),
    each titled with how many points fall outside them; writes a PNG."""
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.2), sharex=True, sharey=True)
    for ax, pts, name, color in ((axes[0], data, "data", "tab:blue"), (axes[1], samples, "samples", "tab:orange")):
        p = pts.detach().cpu().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.4, color=color)
        outside = int(np.sum((p[:, 0] < box[0]) | (p[:, 0] > box[1]) | (p[:, 1] < box[2]) | (p[:, 1] > box[3])))
        ax.set_title(f"{name} ({len(p)} points" + (f", {outside} outside the axes)" if outside else ")"))
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
        ax.set_aspect("equal")
    fig.tight_layout()
    return save_figure(fig, path)


def save_image_grid(
    images: torch.Tensor,
    path: str | Path,
    nrow: int = 10,
    row_labels: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Path:
    """Grey images (N, H, W) with values in [0, 1] as a PNG grid of ``nrow`` columns."""
    imgs = images.detach().cpu().clamp(0, 1).numpy()
    n, h, w = imgs.shape
    rows = (n + nrow - 1) // nrow
    canvas = np.ones((rows * (h + 2) + 2, nrow * (w + 2) + 2))
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[2 + r * (h + 2) : 2 + r * (h + 2) + h, 2 + c * (w + 2) : 2 + c * (w + 2) + w] = imgs[i]
    fig, ax = plt.subplots(figsize=(nrow * 0.6 + (0.8 if row_labels else 0), rows * 0.6 + (0.4 if title else 0)))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    if row_labels:
        ax.set_yticks([2 + r * (h + 2) + h / 2 for r in range(len(row_labels))])
        ax.set_yticklabels(row_labels, fontsize=7)
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_training_curves(metrics_file: str | Path, path: str | Path, key: str, label: str) -> Path:
    """Train and validation curves of the figure ``train_<key>``, ``val_<key>`` from a ``metrics.jsonl``
    (rows without it, written by an older version, and lines that are no rows are left out); writes a PNG."""
    rows, _ = read_metrics(metrics_file)  # a damaged line is no reason to fail a run that trained
    rows = [r for r in rows if all(isinstance(r.get(f"{split}_{key}"), (int, float)) for split in ("train", "val"))]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    epochs = [r["epoch"] for r in rows]
    ax.plot(epochs, [r[f"train_{key}"] for r in rows], marker="." if len(rows) < 30 else None, label="train")
    ax.plot(epochs, [r[f"val_{key}"] for r in rows], marker="." if len(rows) < 30 else None, label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(label)
    ax.legend()
    fig.tight_layout()
    return save_figure(fig, path)


def plot_score_histograms(
    scores: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]],
    report: dict,
    path: str | Path,
    bins: int = 60,
) -> Path:
    """One row per model and one panel per score: histograms of the in- and out-of-distribution
    scores on shared bins (the central 99.8 % of both), the AUROC in each title; writes a PNG.

    ``scores``: ``{model: {score: (in, out)}}``; ``report``: from :func:`lunet.experiments.evaluation.ood.ood_run`."""
    models = list(scores)
    names = list(next(iter(scores.values())))
    fig, axes = plt.subplots(len(models), len(names), figsize=(4.2 * len(names), 3.2 * len(models)), squeeze=False)
    for r, model in enumerate(models):
        for c, name in enumerate(names):
            ax = axes[r, c]
            inside, outside = (t.double().cpu().numpy() for t in scores[model][name])
            both = np.concatenate([inside, outside])
            both = both[np.isfinite(both)]
            low, high = np.quantile(both, [0.001, 0.999])
            edges = np.linspace(low, high if high > low else low + 1, bins + 1)
            for values, label, color in ((inside, report["dataset"], "tab:blue"),
                                         (outside, report["against"], "tab:orange")):
                ax.hist(np.clip(values, edges[0], edges[-1]), bins=edges, density=True, alpha=0.55, color=color,
                        label=f"{label} test ({len(values):,})")
            metrics = report["models"][model]["metrics"][name]
            ax.set_title(f"{report['models'][model]['label']}\n{report['scores'][name]}: AUROC {metrics['auroc']:.3f}",
                         fontsize=9)
            ax.set_xlabel("score (higher: more out-of-distribution)", fontsize=8)
            ax.set_yticks([])
            if r == 0 and c == 0:
                ax.legend(fontsize=8)
    fig.suptitle(f"{report['dataset']} {report['kind'].replace('_', '-')} run against {report['against']}")
    fig.tight_layout()
    return save_figure(fig, path)


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` in the format its suffix names, atomically and never through a link."""
    path = Path(path)
    try:
        write_atomic(path, lambda f: fig.savefig(f, format=path.suffix[1:].lower() or None, dpi=110))
    finally:
        plt.close(fig)
    return path


def plot_samples_beside_data(data: torch.Tensor, samples: torch.Tensor, path: str | Path,
                             names: Optional[Sequence[str]] = None, max_columns: int = 4,
                             max_points: int = 2000) -> Path:
    """The training rows beside the model's samples, for the first ``max_columns`` columns: each
    column's histogram on the diagonal (data and samples overlaid, on the data's range widened
    by half of it) and pairwise scatter plots off it (data below, samples above). Writes a picture."""
    k = min(max_columns, data.shape[1])
    x, s = data[:max_points, :k].double().cpu().numpy(), samples[:max_points, :k].double().cpu().numpy()
    names = list(names[:k]) if names is not None else [f"column {j}" for j in range(k)]
    low, high = x.min(0), x.max(0)
    pad = 0.5 * np.maximum(high - low, 1e-12)
    fig, axes = plt.subplots(k, k, figsize=(2.6 * k + 0.6, 2.6 * k + 0.4), squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = axes[i, j]
            if i == j:
                bins = np.linspace(low[j] - pad[j], high[j] + pad[j], 41)
                ax.hist(x[:, j], bins=bins, density=True, alpha=0.5, color="tab:blue", label="data")
                ax.hist(np.clip(s[:, j], bins[0], bins[-1]), bins=bins, density=True, alpha=0.5,
                        color="tab:orange", label="samples")
            else:
                pts, color = (x, "tab:blue") if i > j else (s, "tab:orange")
                ax.scatter(pts[:, j], pts[:, i], s=1, alpha=0.4, color=color)
                ax.set_xlim(low[j] - pad[j], high[j] + pad[j])
                ax.set_ylim(low[i] - pad[i], high[i] + pad[i])
            if i == k - 1:
                ax.set_xlabel(names[j])
            if j == 0:
                ax.set_ylabel(names[i])
    axes[0, 0].legend(loc="upper right", fontsize="small")
    fig.suptitle(f"training data (blue, below the diagonal) beside {s.shape[0]:,} samples (orange, above); "
                 f"{k} of {data.shape[1]} columns", fontsize="medium")
    fig.tight_layout()
    return save_figure(fig, path)
