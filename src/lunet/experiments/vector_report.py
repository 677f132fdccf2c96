"""What a run on own data is measured against: the Gaussian baseline and the data's range.

Every run on own vectors fits the full-covariance Gaussian to its training rows
in closed form and keeps it, with the training rows' per-column range, in its
checkpoint (the ``"reference"`` entry of the checkpoint extra). Evaluation then
sets the flow's NLL beside the Gaussian's on the same rows, and sampling says
how many samples leave the range of the data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from lunet.baselines.gaussian import FullCovarianceGaussian

__all__ = ["Reference", "sample_report", "comparison_line", "describe_samples"]

# a sample "far outside" lies more than this many of the column's training ranges beyond it
FAR_RANGES = 1.0


@dataclass
class Reference:
    """The training rows' Gaussian fit and per-column range (``low``, ``high``: (D,) float64)."""

    gaussian: FullCovarianceGaussian
    low: torch.Tensor
    high: torch.Tensor

    @classmethod
    def fit(cls, train: torch.Tensor, fit_rows: Optional[torch.Tensor] = None) -> "Reference":
        """The range of the training rows ``train`` (N, D), N >= 2, and the Gaussian of ``fit_rows``
        (default ``train``; the rows dequantised where a run dequantises)."""
        x = train.double()
        fitted = x if fit_rows is None else fit_rows.double()
        return cls(FullCovarianceGaussian.fit(fitted), x.min(0).values, x.max(0).values)

    def entries(self) -> dict[str, torch.Tensor]:
        """As a checkpoint holds it: plain tensors."""
        return {"gaussian_mean": self.gaussian.mean, "gaussian_scale_tril": self.gaussian.scale_tril,
                "low": self.low, "high": self.high}

    @classmethod
    def from_entries(cls, entries: Any, features: int, source: str) -> Optional["Reference"]:
        """The reference a checkpoint holds (None for a run made without one); ``ValueError``
        naming ``source`` when the entries are not a sound Gaussian and range of ``features`` columns."""
        if entries is None:
            return None
        keys = ("gaussian_mean", "gaussian_scale_tril", "low", "high")
        shapes = ((features,), (features, features), (features,), (features,))
        if not isinstance(entries, dict) or any(not isinstance(entries.get(k), torch.Tensor) for k in keys):
            raise ValueError(f"{source}: its Gaussian baseline is not a set of tensors {', '.join(keys)}")
        for key, shape in zip(keys, shapes):
            t = entries[key]
            if tuple(t.shape) != shape or not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                raise ValueError(f"{source}: its Gaussian baseline's {key} is not {shape} finite numbers")
        tril = entries["gaussian_scale_tril"].double()
        if not (bool((tril.diagonal() > 0).all()) and bool((tril.triu(1) == 0).all())):
            raise ValueError(f"{source}: its Gaussian baseline's scale_tril is not lower triangular with a "
                             f"positive diagonal")
        low, high = entries["low"].double(), entries["high"].double()
        if bool((low > high).any()):
            raise ValueError(f"{source}: its record of the data's range has a low above a high")
        return cls(FullCovarianceGaussian(entries["gaussian_mean"].double(), tril), low, high)

    def nll_per_dim(self, x: torch.Tensor) -> float:
        """The Gaussian's mean NLL of rows ``x`` (N, D), nats per dimension."""
        return float(-self.gaussian.log_prob(x.double()).mean() / x.shape[1])


def sample_report(samples: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> dict[str, Any]:
    """How far ``samples`` (N, D) reach beyond the training range ``[low, high]`` (D,): the share
    of rows with a coordinate outside it, and with one more than a range beyond it (``far``)."""
    x = samples.double()
    span = (high - low).clamp_min(torch.finfo(torch.float64).tiny)
    beyond = torch.maximum(low - x, x - high).clamp_min(0) / span  # in ranges of each column
    beyond = torch.where(torch.isnan(beyond), torch.full_like(beyond, math.inf), beyond)
    per_row = beyond.max(dim=1).values
    n = max(int(x.shape[0]), 1)
    return {
        "num_samples": int(x.shape[0]),
        "outside_range_fraction": float((per_row > 0).sum()) / n,
        "far_outside_fraction": float((per_row > FAR_RANGES).sum()) / n,
        "largest_excess_ranges": float(per_row.max()) if x.shape[0] else 0.0,
    }


def describe_samples(report: dict[str, Any]) -> str:
    """One line on a :func:`sample_report`."""
    line = (f"{100 * report['outside_range_fraction']:.2f} % of {report['num_samples']:,} samples have a value "
            f"outside the training data's range, {100 * report['far_outside_fraction']:.2f} % more than one range "
            f"beyond it")
    return line


def comparison_line(flow_nll: float, gaussian_nll: float, split: str) -> str:
    """The flow's NLL beside the Gaussian's (nats/dim) on ``split``, and what to try when it is worse."""
    if flow_nll <= gaussian_nll:
        return (f"{split} NLL {flow_nll:.4f} nats/dim, the full-covariance Gaussian {gaussian_nll:.4f}: "
                f"the flow is better by {gaussian_nll - flow_nll:.4f}")
    if f"{flow_nll:.4f}" == f"{gaussian_nll:.4f}":  # a hair apart (a kept Gaussian start): not WORSE "by 0.0000"
        return f"{split} NLL {flow_nll:.4f} nats/dim, the same as the full-covariance Gaussian's: the flow is no better"
    return (f"{split} NLL {flow_nll:.4f} nats/dim is WORSE than the full-covariance Gaussian's {gaussian_nll:.4f} "
            f"(by {flow_nll - gaussian_nll:.4f}): try fewer blocks (--blocks 2), --data-init gaussian, or more rows")
