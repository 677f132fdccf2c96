"""Composition of invertible transforms: ``Sequential``, ``Inverse`` and the fixed ``Standardize``.

Every transform here, like :class:`~lunet.LULinear`, :class:`~lunet.LeakySoftplus`
and :class:`~lunet.LUNet`, is an ``nn.Module`` that maps the data side to the
latent side: ``forward(x) -> (y, log|det dy/dx|)`` and ``inverse(y) -> (x,
log|det dx/dy|)``, inputs ``(..., features)`` with any leading dimensions and
log-dets of shape ``x.shape[:-1]``. Any module that keeps this contract,
a coupling layer of your own for instance, composes with them.
"""

from __future__ import annotations

import math
import numbers
from typing import TYPE_CHECKING, Iterable, Optional

import torch
from torch import nn

from lunet.checks import check_features, check_positive_int

if TYPE_CHECKING:
    from lunet.frozen import FrozenSequential


def compose_forward(parts: Iterable, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``parts`` in order on ``x``; returns the output and the sum of their log-dets."""
    logdet = None
    for part in parts:
        x, ld = part(x)
        logdet = ld if logdet is None else logdet + ld  # out of place: a part may return an expanded view
    return x, logdet


def compose_inverse(parts: list, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the inverses of ``parts`` in reverse order on ``y``; returns the input and the sum of their log-dets."""
    logdet = None
    for part in reversed(parts):
        y, ld = part.inverse(y)
        logdet = ld if logdet is None else logdet + ld
    return y, logdet


class Sequential(nn.Module):
    """``t_n ∘ ... ∘ t_1``: ``forward`` runs the transforms in order and adds their log-dets,
    ``inverse`` runs their inverses in reverse order.

    Example::

        flow = Sequential(LULinear(4), LeakySoftplus(), LULinear(4))
        z, logdet = flow(torch.randn(10, 4))     # (10, 4), (10,)
        x, inverse_logdet = flow.inverse(z)      # inverse_logdet == -logdet
    """

    def __init__(self, *transforms: nn.Module) -> None:
        super().__init__()
        if not transforms:
            raise ValueError("Sequential needs at least one transform")
        self.transforms = nn.ModuleList(transforms)

    def __iter__(self) -> Iterable[nn.Module]:
        return iter(self.transforms)

    def __len__(self) -> int:
        return len(self.transforms)

    def __getitem__(self, index: int) -> nn.Module:
        return self.transforms[index]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (..., D) -> ``y`` (..., D'), the sum of the parts' ``log|det|`` (...)."""
        return compose_forward(self.transforms, x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` -> ``x``, the parts' inverses in reverse order, and the sum of their ``log|det|`` (...)."""
        return compose_inverse(list(self.transforms), y)

    def frozen(self, **tuning: int) -> "FrozenSequential":
        """A snapshot for fast inference: runs of LU layers and activations folded as
        :meth:`lunet.LUNet.frozen` folds them, other parts copied (see
        :class:`~lunet.frozen.FrozenSequential`); ``tuning`` as for :meth:`lunet.LUNet.frozen`."""
        from lunet.frozen import FrozenSequential

        return FrozenSequential(self, **tuning)


class Inverse(nn.Module):
    """``t^{-1}`` as a transform: its ``forward`` is ``t.inverse`` and its ``inverse`` is ``t``.
    Shares ``t``'s parameters."""

    def __init__(self, transform: nn.Module) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform.inverse(x)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(y)


class Standardize(nn.Module):
    """The fixed elementwise map ``y = (x - mean) / std``, ``log|det| = -sum_i log std_i``.

    ``mean`` and ``std`` (features,) are buffers (they follow ``.to()`` and are
    saved in ``state_dict``), not parameters; :meth:`fit` sets them from data.
    """

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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_features(x, self.features, like=self.std)
        return (x - self.mean) / self.std, (-torch.log(self.std).sum()).expand(x.shape[:-1])

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_features(y, self.features, like=self.std)
        return torch.addcmul(self.mean, y, self.std), torch.log(self.std).sum().expand(y.shape[:-1])

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
