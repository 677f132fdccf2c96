"""Pictures: 2-D densities and samples, image grids, training curves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

Box = tuple[float, float, float, float]


@torch.no_grad()
def density_grid(log_prob: Callable[[torch.Tensor], torch.Tensor], box: Box, resolution: int = 200) -> np.ndarray:
    """``exp(log_prob)`` on a ``resolution``² grid over ``box``, shape (res, res), rows = y."""
    x0, x1, y0, y1 = box
    xs = torch.linspace(x0, x1, resolution, dtype=torch.float64)
    ys = torch.linspace(y0, y1, resolution, dtype=torch.float64)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    pts = torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)
    return log_prob(pts).exp().reshape(resolution, resolution).cpu().numpy()


def plot_density_2d(
    data: torch.Tensor,
    panels: Sequence[tuple[str, np.ndarray]],
    box: Box,
    path: str | Path,
    title: Optional[str] = None,
) -> Path:
    """Data scatter beside one image per ``(title, density grid)`` panel; writes a PNG."""
    fig, axes = plt.subplots(1, 1 + len(panels), figsize=(4.2 * (1 + len(panels)), 4.2))
    pts = data.cpu().numpy()
    axes[0].scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.4, color="tab:blue")
    axes[0].set_title(f"data ({len(pts)} points)")
    for ax, (name, grid) in zip(axes[1:], panels):
        ax.imshow(grid, origin="lower", extent=box, cmap="viridis", aspect="equal")
        ax.set_title(name)
    for ax in axes:
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_samples_2d(samples: torch.Tensor, data: torch.Tensor, box: Box, path: str | Path) -> Path:
    """Model samples beside the data, same axes; writes a PNG."""
    fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.2), sharex=True, sharey=True)
    for ax, pts, name, color in ((axes[0], data, "data", "tab:blue"), (axes[1], samples, "samples", "tab:orange")):
        p = pts.detach().cpu().numpy()
        ax.scatter(p[:, 0], p[:, 1], s=1, alpha=0.4, color=color)
        ax.set_title(f"{name} ({len(p)} points)")
        ax.set_xlim(box[0], box[1])
        ax.set_ylim(box[2], box[3])
        ax.set_aspect("equal")
    fig.tight_layout()
    return _save(fig, path)


def save_image_grid(
    images: torch.Tensor, path: str | Path, nrow: int = 10, row_labels: Optional[Sequence[str]] = None, title: Optional[str] = None
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
    return _save(fig, path)


def plot_training_curves(metrics_file: str | Path, path: str | Path, transform: Callable[[float], float] = lambda v: v, ylabel: str = "nats/dim") -> Path:
    """Train and validation curves from a ``metrics.jsonl``; writes a PNG."""
    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    epochs = [r["epoch"] for r in rows]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(epochs, [transform(r["train_nll_per_dim"]) for r in rows], label="train")
    ax.plot(epochs, [transform(r["val_nll_per_dim"]) for r in rows], label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
