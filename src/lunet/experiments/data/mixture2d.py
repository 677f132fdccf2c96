"""The paper's 2-D toy: an isotropic Gaussian mixture with a known density."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from lunet.checks import check_batch

__all__ = ["GaussianMixture2D"]


def _default_centers() -> list[tuple[float, float]]:
    return [(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)]


@dataclass(frozen=True)
class GaussianMixture2D:
    """Equal-weight mixture of isotropic 2-D Gaussians (default: four blobs, std 0.2)."""

    centers: list[tuple[float, float]] = field(default_factory=_default_centers)
    std: float = 0.2

    def _centers(self, like: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.centers, dtype=like.dtype, device=like.device)

    def sample(self, num_samples: int, seed: int = 0) -> torch.Tensor:
        """``num_samples`` points (num_samples, 2) in float32, reproducible from ``seed``."""
        g = torch.Generator().manual_seed(seed)
        centers = torch.tensor(self.centers, dtype=torch.float64)
        which = torch.randint(len(self.centers), (num_samples,), generator=g)
        points = centers[which] + self.std * torch.randn(num_samples, 2, generator=g, dtype=torch.float64)
        return points.float()

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x)`` in nats, (B, 2) -> (B,)."""
        check_batch(x, 2)
        d2 = (x.unsqueeze(1) - self._centers(x)).pow(2).sum(dim=2)
        log_comp = -0.5 * d2 / self.std**2 - math.log(2 * math.pi * self.std**2)
        return torch.logsumexp(log_comp, dim=1) - math.log(len(self.centers))

    def bounding_box(self, margin_stds: float = 8.0) -> tuple[float, float, float, float]:
        """``(xmin, xmax, ymin, ymax)`` holding all but a negligible part of the mass."""
        c = torch.tensor(self.centers)
        m = margin_stds * self.std
        return (float(c[:, 0].min()) - m, float(c[:, 0].max()) + m, float(c[:, 1].min()) - m, float(c[:, 1].max()) + m)

    def entropy(self, grid: int = 1500) -> float:
        """Differential entropy in nats by midpoint quadrature over :meth:`bounding_box`."""
        x0, x1, y0, y1 = self.bounding_box()
        xs = torch.linspace(x0, x1, grid + 1, dtype=torch.float64)
        ys = torch.linspace(y0, y1, grid + 1, dtype=torch.float64)
        xm, ym = (xs[1:] + xs[:-1]) / 2, (ys[1:] + ys[:-1]) / 2
        cell = float((xs[1] - xs[0]) * (ys[1] - ys[0]))
        total = 0.0
        for row in torch.split(xm, 250):
            pts = torch.cartesian_prod(row, ym)
            lp = self.log_prob(pts)
            total += float(-(lp.exp() * lp).sum()) * cell
        return total
