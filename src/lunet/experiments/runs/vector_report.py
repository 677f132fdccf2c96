"""What a run on own data is measured against: the Gaussian baseline and the data's range.

Every run on own vectors fits the full-covariance Gaussian to its training rows
in closed form and keeps it, with the training rows' per-column range, in its
checkpoint (the ``"reference"`` entry of the checkpoint extra). Evaluation then
sets the flow's NLL beside the Gaussian's on the same rows, and sampling says
how many samples leave the range of the data.

A run of ``p(x | c)`` sets its flow beside the conditional Gaussian: the
linear-Gaussian regression of ``x`` on the context (one-hot for class labels),
``x | c ~ N(mean + (c - mean_c) B, Σ)``, fitted in closed form, whose
coefficients ``B`` the reference keeps beside the Gaussian of the residuals.
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
    """The training rows' Gaussian fit and per-column range (``low``, ``high``: (D,) float64); for a
    conditional run also the regression coefficients ``coef`` (P, D) on the context's regressors
    (:meth:`~lunet.experiments.data.contexts.ContextRules.design`) and their training mean ``design_mean`` (P,)."""

    gaussian: FullCovarianceGaussian
    low: torch.Tensor
    high: torch.Tensor
    coef: Optional[torch.Tensor] = None
    design_mean: Optional[torch.Tensor] = None

    @classmethod
    def fit(cls, train: torch.Tensor, fit_rows: Optional[torch.Tensor] = None,
            design: Optional[torch.Tensor] = None) -> "Reference":
        """The range of the training rows ``train`` (N, D), N >= 2, and the Gaussian of ``fit_rows``
        (default ``train``; the rows dequantised where a run dequantises); given the context's
        regressors ``design`` (N, P), the Gaussian of the rows given them (a ridge of 10⁻⁶ times each
        regressor's variance keeps one-hot labels and collinear contexts solvable)."""
        x = train.double()
        fitted = x if fit_rows is None else fit_rows.double()
        coef = design_mean = None
        if design is not None:
            design = design.double()
            design_mean = design.mean(0)
            centred = design - design_mean
            gram = centred.T @ centred
            ridge = 1e-6 * gram.diagonal().clamp_min(torch.finfo(torch.float64).tiny)
            coef = torch.linalg.solve(gram + torch.diag(ridge), centred.T @ (fitted - fitted.mean(0)))
            fitted = fitted - centred @ coef
        return cls(FullCovarianceGaussian.fit(fitted), x.min(0).values, x.max(0).values, coef, design_mean)

    def entries(self) -> dict[str, torch.Tensor]:
        """As a checkpoint holds it: plain tensors."""
        entries: dict[str, torch.Tensor] = {"gaussian_mean": self.gaussian.mean,
                                            "gaussian_scale_tril": self.gaussian.scale_tril,
                                            "low": self.low, "high": self.high}
        if self.coef is not None:
            assert self.design_mean is not None  # fitted and read together with coef
            entries.update(gaussian_coef=self.coef, design_mean=self.design_mean)
        return entries

    @classmethod
    def from_entries(cls, entries: Any, features: int, source: str,
                     design_width: Optional[int] = None) -> Optional["Reference"]:
        """The reference a checkpoint holds (None for a run made without one); ``ValueError``
        naming ``source`` when the entries are not a sound Gaussian and range of ``features`` columns,
        with regression coefficients on ``design_width`` regressors exactly when that is given."""
        if entries is None:
            return None
        keys: tuple[str, ...] = ("gaussian_mean", "gaussian_scale_tril", "low", "high")
        shapes: tuple[tuple[int, ...], ...] = ((features,), (features, features), (features,), (features,))
        if design_width is not None:
            keys += ("gaussian_coef", "design_mean")
            shapes += ((design_width, features), (design_width,))
        if not isinstance(entries, dict) or any(not isinstance(entries.get(k), torch.Tensor) for k in keys):
            raise ValueError(f"{source}: its Gaussian baseline is not a set of tensors {', '.join(keys)}")
        if design_width is None and "gaussian_coef" in entries:
            raise ValueError(f"{source}: its Gaussian baseline is conditional, but the run models no context")
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
        coef = entries["gaussian_coef"].double() if design_width is not None else None
        design_mean = entries["design_mean"].double() if design_width is not None else None
        return cls(FullCovarianceGaussian(entries["gaussian_mean"].double(), tril), low, high, coef, design_mean)

    @property
    def name(self) -> str:
        """How lines name the baseline: the full-covariance Gaussian, or the conditional one."""
        return "the full-covariance Gaussian" if self.coef is None else "the conditional Gaussian (linear in c)"

    def nll_per_dim(self, x: torch.Tensor, design: Optional[torch.Tensor] = None) -> float:
        """The Gaussian's mean NLL of rows ``x`` (N, D), nats per dimension; for a conditional
        reference given the context's regressors ``design`` (N, P)."""
        x = x.double()
        if self.coef is not None:
            assert design is not None and self.design_mean is not None  # a conditional reference needs both
            x = x - (design.double() - self.design_mean) @ self.coef
        return float(-self.gaussian.log_prob(x).mean() / x.shape[1])


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


def comparison_line(flow_nll: float, gaussian_nll: float, split: str,
                    baseline: str = "the full-covariance Gaussian") -> str:
    """The flow's NLL beside the Gaussian's (nats/dim) on ``split``, and what to try when it is worse;
    ``baseline`` names the Gaussian (:attr:`Reference.name`)."""
    if flow_nll <= gaussian_nll:
        return (f"{split} NLL {flow_nll:.4f} nats/dim, {baseline} {gaussian_nll:.4f}: "
                f"the flow is better by {gaussian_nll - flow_nll:.4f}")
    if f"{flow_nll:.4f}" == f"{gaussian_nll:.4f}":  # a hair apart (a kept Gaussian start): not WORSE "by 0.0000"
        return f"{split} NLL {flow_nll:.4f} nats/dim, the same as {baseline}'s: the flow is no better"
    return (f"{split} NLL {flow_nll:.4f} nats/dim is WORSE than {baseline}'s {gaussian_nll:.4f} "
            f"(by {flow_nll - gaussian_nll:.4f}): try fewer blocks (--blocks 2), --data-init gaussian, or more rows")
