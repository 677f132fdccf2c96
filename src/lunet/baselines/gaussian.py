"""The full-covariance Gaussian: the simplest likelihood model, fitted in closed form."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.distributions import MultivariateNormal

from lunet.checks import check_batch, sample_shape_of

__all__ = ["FullCovarianceGaussian"]


class FullCovarianceGaussian(nn.Module):
    """``N(mean, scale_tril scale_trilᵀ)`` over vectors of ``D`` features.

    Args:
        mean: (D,).
        scale_tril: (D, D) lower-triangular Cholesky factor of the covariance.

    Build it from data with :meth:`fit`. It has no trainable parameters; the
    mean and factor are buffers, so ``.to()`` and ``state_dict()`` carry them.
    """

    mean: torch.Tensor
    scale_tril: torch.Tensor

    def __init__(self, mean: torch.Tensor, scale_tril: torch.Tensor) -> None:
        super().__init__()
        d = mean.shape[-1]
        if mean.dim() != 1 or scale_tril.shape != (d, d):
            raise ValueError(
                f"mean must be (D,) and scale_tril (D, D), got {tuple(mean.shape)} and {tuple(scale_tril.shape)}"
            )
        self.register_buffer("mean", mean)
        self.register_buffer("scale_tril", scale_tril)

    @classmethod
    def fit(cls, data: torch.Tensor, ridge: float = 1e-6) -> "FullCovarianceGaussian":
        """The maximum-likelihood fit to ``data`` (N, D), with ``ridge`` times each feature's own variance
        added to the covariance's diagonal (the mean variance for a constant feature), so that the
        fit does not depend on the features' scales and constant ones keep it positive definite; float64."""
        if not isinstance(data, torch.Tensor) or data.dim() != 2:
            shape = tuple(data.shape) if isinstance(data, torch.Tensor) else type(data).__name__
            raise ValueError(f"data must be a tensor of shape (N, D), got {shape}")
        check_batch(data, data.shape[1], "data")
        if data.shape[0] < 2:
            raise ValueError(f"fitting a Gaussian needs at least 2 rows, got {data.shape[0]}")
        x = data.double()
        cov = torch.cov(x.T).reshape(x.shape[1], x.shape[1])
        var = cov.diagonal()
        floor = var.mean().clamp_min(1e-12)
        cov = cov + torch.diag(ridge * torch.where(var > 0, var, floor))
        return cls(x.mean(0), torch.linalg.cholesky(cov))

    @property
    def distribution(self) -> MultivariateNormal:
        return MultivariateNormal(self.mean, scale_tril=self.scale_tril, validate_args=False)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log N(x; mean, Σ)`` in nats, (..., D) -> (...), in the buffers' dtype."""
        return self.distribution.log_prob(x.to(self.mean.dtype))

    def sample(self, sample_shape: int | Sequence[int] = ()) -> torch.Tensor:
        """Draws of shape ``sample_shape + (D,)`` (an int ``n`` means ``(n,)``)."""
        return self.distribution.sample(sample_shape_of(sample_shape))
