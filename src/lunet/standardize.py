"""``Standardize``: the fixed elementwise map ``(x - mean) / std``, fitted to data."""

from __future__ import annotations

import math
import numbers
from typing import Mapping, Optional

import torch

from lunet.base import Transform
from lunet.checks import check_features
from lunet.limits import check_positive_int

__all__ = ["Standardize"]


class Standardize(Transform):
    """The fixed elementwise map ``y = (x - mean) / std``, ``log|det| = -sum_i log std_i``.

    ``mean`` and ``std`` (features,) are buffers (they follow ``.to()`` and are
    saved in ``state_dict``), not parameters; :meth:`fit` sets them from data.
    """

    features: int
    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = check_positive_int(features, "features")
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))

    @torch.no_grad()
    def fit(self, data: torch.Tensor, min_std: Optional[float] = None) -> "Standardize":
        """Set ``mean`` and ``std`` from ``data`` (..., features), at least two rows.

        Each feature is scaled by its own spread, whatever its scale: scaling a
        feature of the data by ``c`` shifts every log-density by ``-log|c|``, to rounding.
        A feature that holds one value in every row has no spread to scale by, and
        raises a ValueError that names it (drop it from the data). ``min_std``, if
        given, floors every std instead: a spread chosen by the caller, not measured.
        """
        check_features(data, self.features, "data")
        if min_std is not None and (
            isinstance(min_std, bool) or not isinstance(min_std, numbers.Real)
            or not (math.isfinite(min_std) and min_std > 0)
        ):
            raise ValueError(f"min_std must be a positive finite number or None, got {min_std!r}")
        rows = data.reshape(-1, self.features)
        if rows.shape[0] < 2:
            raise ValueError(
                f"fitting a standardisation needs at least 2 rows to measure a spread, got {rows.shape[0]}"
            )
        lo, hi = torch.aminmax(rows, dim=0)
        if min_std is None:
            _refuse_features(lo == hi, "constant", "every row holds one value, so there is no spread to "
                             "standardise by; drop such features from the data")
        # each column over a power of two at its largest magnitude (exact), so that the
        # squares in the std neither overflow nor underflow at any scale
        scale = torch.ldexp(torch.ones_like(lo), torch.frexp(torch.maximum(lo.abs(), hi.abs())).exponent)
        scaled = rows / scale
        mean = (scaled.mean(dim=0) * scale).to(self.mean.dtype)
        std = (scaled.std(dim=0) * scale).to(self.std.dtype)
        if min_std is not None:
            std.clamp_min_(min_std)
        unheld = ~((std > 0) & torch.isfinite(std))
        _refuse_features(unheld, "out of range", f"the spread is beyond what {self.std.dtype} holds")
        self.mean.copy_(mean)
        self.std.copy_(std)
        return self

    @torch.no_grad()
    def restricted(self, part: slice) -> "Standardize":
        """A new ``Standardize`` for the features in ``part``, with copies of their mean and std."""
        mean = self.mean[part]
        restricted = Standardize(mean.shape[0]).to(mean)
        restricted.mean.copy_(mean)
        restricted.std.copy_(self.std[part])
        return restricted

    def reference(self) -> torch.Tensor:
        return self.std

    def check_state(self, state: Mapping[str, torch.Tensor], prefix: str = "") -> None:
        """``ValueError`` unless every spread in ``state`` is positive and its reciprocal finite:
        the map divides by it and takes its log."""
        std = state.get(prefix + "std")
        if std is None or not std.is_floating_point():
            return
        bad = ~((std > 0) & torch.isfinite(1.0 / std))
        if bool(bad.any()):
            first, count = int(torch.nonzero(bad.reshape(-1))[0]), int(bad.sum())
            raise ValueError(f"{prefix}std holds {count} spread{'s' if count > 1 else ''} that "
                             f"{'are' if count > 1 else 'is'} not a positive number to divide by (the first, of "
                             f"feature {first}, is {float(std.reshape(-1)[first]):g})")

    def forward_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, features) -> ``(x - mean) / std``, ``-sum_i log std_i`` (0-dim, the same for every row)."""
        inv_std = 1.0 / self.std
        return torch.addcmul(-self.mean * inv_std, x, inv_std), -torch.log(self.std).sum()

    def inverse_rows(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` (B, features) -> ``y std + mean``, ``sum_i log std_i`` (0-dim)."""
        return torch.addcmul(self.mean, y, self.std), torch.log(self.std).sum()

    def extra_repr(self) -> str:
        return f"features={self.features}"


def _refuse_features(bad: torch.Tensor, what: str, why: str) -> None:
    """Raise a ValueError naming the features flagged in ``bad`` (features,), if any: they are
    ``what``, because ``why``."""
    if bool(bad.any()):
        index = torch.nonzero(bad).flatten().tolist()
        shown = ", ".join(str(i) for i in index[:10]) + (", ..." if len(index) > 10 else "")
        if len(index) == 1:
            raise ValueError(f"feature {shown} (counting from 0) of the data is {what}: {why}")
        raise ValueError(
            f"features {shown} ({len(index)} of {bad.numel()}, counting from 0) of the data are {what}: {why}"
        )
