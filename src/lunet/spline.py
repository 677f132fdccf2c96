"""A monotone elementwise spline with an exact inverse: a richer activation for LU-Net.

``MonotoneSpline`` maps each feature by its own monotone rational-quadratic
spline on ``[-bound, bound]`` (Gregory and Delbourgo's rational quadratics, as
in neural spline flows) and by the identity outside, so that the tails are
linear and the map is a bijection of the real line. The inverse solves one
quadratic per entry in closed form: exact to float precision, with no
iteration. Training passes run :class:`lunet.fast.spline_training.SplineForward` (a
written-out backward), passes without autograd the fast no-graph kernels of
:mod:`lunet.fast.spline`; higher derivatives and ``torch.func`` transforms take the
plain differentiable formulas of :mod:`lunet.fast.spline_plain`.

Conventions as for every lunet transform: inputs ``(..., features)``,
``forward(x) -> (y, log|det dy/dx|)``, ``inverse(y) -> (x, log|det dx/dy|)``,
log-dets of shape ``x.shape[:-1]``.
"""

from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
from torch import nn
from torch.nn import functional as F

from lunet.base import Transform
from lunet.checks import plain_ops_wanted
from lunet.fast.spline import grouped_passes, spline_forward_fast, spline_inverse_fast
from lunet.fast.spline_plain import spline_forward_plain, spline_inverse_plain
from lunet.fast.spline_tables import BinTables, group_of_rows
from lunet.fast.spline_training import SplineForward
from lunet.limits import check_positive_int

__all__ = ["MIN_BIN", "MIN_SLOPE", "MIN_BOUND", "MAX_BOUND", "MAX_SLOPE", "IDENTITY_SLOPE", "check_spline_size",
           "knot_tables", "spline_pass", "MonotoneSpline"]

# The smallest bin width, height and knot slope, as fractions: they keep every
# bin's rational quadratic well conditioned whatever the raw parameters do.
MIN_BIN = 1e-3
MIN_SLOPE = 1e-3
# The widest and narrowest interval a spline may act on, and the steepest knot slope a stored
# spline may hold: the inverse squares products of the bound and the slopes, which beyond these
# could overflow float32 (at a bound of 1e18, they do) and make samples NaN.
MIN_BOUND = 1e-6
MAX_BOUND = 1e6
MAX_SLOPE = 1e6
# the raw knot slope at which a slope is 1 (softplus(s) + MIN_SLOPE == 1): with equal bins, the identity
IDENTITY_SLOPE = math.log(math.expm1(1 - MIN_SLOPE))


def _knots(raw: torch.Tensor, bound: float) -> torch.Tensor:
    """Knot positions (features, bins + 1) from unnormalised bin sizes (features, bins):
    increasing from ``-bound`` to ``bound`` exactly, every bin at least ``MIN_BIN`` of the span."""
    bins = raw.shape[-1]
    # softmax written out: torch's kernel along a last dimension of a few bins costs more than
    # these small ops together
    e = torch.exp(raw - raw.amax(dim=-1, keepdim=True).detach())
    sizes = MIN_BIN + (1 - MIN_BIN * bins) * (e / e.sum(dim=-1, keepdim=True))
    inner = (2 * bound) * torch.cumsum(sizes, dim=-1)[..., :-1] - bound
    ends = inner.new_full((*inner.shape[:-1], 1), bound)
    return torch.cat([-ends, inner, ends], dim=-1)


def knot_tables(
    widths: torch.Tensor, heights: torch.Tensor, slopes: torch.Tensor, bound: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Knots in x and y and the slopes there, each (..., n, K + 1), from unnormalised bin widths and
    heights (..., n, K) and raw inner knot slopes (..., n, K - 1); the end slopes are 1."""
    inner = MIN_SLOPE + F.softplus(slopes)
    one = inner.new_ones(*inner.shape[:-1], 1)
    return _knots(widths, bound), _knots(heights, bound), torch.cat([one, inner, one], dim=-1)


def spline_pass(
    values: torch.Tensor, xk: torch.Tensor, yk: torch.Tensor, dk: torch.Tensor, bound: float, inverse: bool = False,
    counts: Optional[list[int]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The spline of knot tables ``xk``, ``yk``, ``dk`` (n, K + 1) at ``values`` (B, n), or its inverse:
    the outputs (B, n) and ``log|det|`` (B,), by the fastest pass that serves the call. Inside a
    ``torch.func`` transform, which takes plain ops and not the written-out backward, or under
    ``torch.compile``, which fuses the plain formulas itself: the plain formulas. A forward pass
    under autograd: :class:`~lunet.fast.spline_training.SplineForward`. An inverse pass with a
    gradient wanted: the plain formulas. Otherwise the no-autograd kernels.

    With ``counts``: tables (G, n, K + 1) of ``G`` splines, spline ``g`` for the next ``counts[g]``
    rows of ``values`` (:func:`_grouped_pass`)."""
    if counts is not None:
        return _grouped_pass(values, xk, yk, dk, bound, inverse, counts)
    if plain_ops_wanted() or torch.compiler.is_compiling():
        return (spline_inverse_plain if inverse else spline_forward_plain)(values, xk, yk, dk, bound)
    if inverse:
        if torch.is_grad_enabled() and (values.requires_grad or xk.requires_grad):
            return spline_inverse_plain(values, xk, yk, dk, bound)
        return spline_inverse_fast(values, BinTables.of(xk, yk, dk, bound), knots=yk)
    if torch.is_grad_enabled():
        return SplineForward.apply(values, xk, yk, dk, bound)
    return spline_forward_fast(values, BinTables.of(xk, yk, dk, bound), knots=xk)


def _grouped_pass(
    values: torch.Tensor, xk: torch.Tensor, yk: torch.Tensor, dk: torch.Tensor, bound: float, inverse: bool,
    counts: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`spline_pass` of ``G`` splines over sorted groups of rows: the tables of all stacked
    once (:meth:`~lunet.fast.spline_tables.BinTables.stacked`) and each group's rows through the kernels,
    its bins counted among its own knots, or under autograd one :class:`SplineForward` for every
    group; where plain ops are wanted, or an inverse keeps a graph, the plain formulas with each
    row's tables."""
    if plain_ops_wanted() or torch.compiler.is_compiling() or (
            inverse and torch.is_grad_enabled() and (values.requires_grad or xk.requires_grad)):
        group = group_of_rows(counts, values.device)
        plain = spline_inverse_plain if inverse else spline_forward_plain
        return plain(values, xk[group], yk[group], dk[group], bound)
    if not inverse and torch.is_grad_enabled():
        return SplineForward.apply(values, xk, yk, dk, bound, counts)
    return grouped_passes(values, BinTables.stacked(xk, yk, dk, bound), counts, list(range(len(counts))), inverse)


def check_spline_size(bins: int, bound: float) -> tuple[int, float]:
    """``(bins, bound)`` checked: ``ValueError`` naming the setting when a spline could not have them."""
    bins = check_positive_int(bins, "bins")
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not MIN_BOUND <= bound <= MAX_BOUND:
        raise ValueError(f"bound must lie in [{MIN_BOUND:g}, {MAX_BOUND:g}], where the spline and its inverse "
                         f"stay finite in float32, got {bound!r}")
    if bins * MIN_BIN >= 1:
        raise ValueError(f"bins must be below {int(1 / MIN_BIN)}, got {bins}")
    return bins, float(bound)


class MonotoneSpline(Transform):
    """Per-feature monotone rational-quadratic spline on ``[-bound, bound]``, the identity outside.

    Args:
        features: number of features; each has its own spline.
        bins: bins per spline (``3 * bins - 1`` parameters per feature).
        bound: the spline acts on ``[-bound, bound]``, ``MIN_BOUND <= bound <= MAX_BOUND``; slopes
            at both ends are 1, so the map joins the identity tails with a continuous derivative.

    Starts as the identity (equal bins, unit slopes). ``log|det|`` is the sum over features
    of ``log`` of the spline's derivative, which lies in ``[MIN_SLOPE, ...)``: never zero.
    """

    features: int

    def __init__(self, features: int, bins: int = 8, bound: float = 5.0) -> None:
        super().__init__()
        self.features = check_positive_int(features, "features")
        self.bins, self.bound = check_spline_size(bins, bound)
        self.widths = nn.Parameter(torch.zeros(features, bins))
        self.heights = nn.Parameter(torch.zeros(features, bins))
        self.slopes = nn.Parameter(torch.full((features, bins - 1), IDENTITY_SLOPE))

    def _tables(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Knots in x and y (features, bins + 1) and slopes at the knots (features, bins + 1)."""
        return knot_tables(self.widths.to(like.dtype), self.heights.to(like.dtype), self.slopes.to(like.dtype),
                           self.bound)

    def reference(self) -> torch.Tensor:
        return self.widths

    def check_state(self, state: Mapping[str, torch.Tensor], prefix: str = "") -> None:
        """``ValueError`` naming the entry when the knot slopes in ``state`` (this spline's weights,
        as ``state_dict()`` names them after ``prefix``) exceed :data:`MAX_SLOPE`; any finite
        widths and heights make valid bins."""
        raw = state.get(prefix + "slopes")
        if raw is None or raw.numel() == 0:
            return
        steepest = float(raw.double().max())
        if MIN_SLOPE + F.softplus(torch.tensor(steepest)).item() > MAX_SLOPE:
            raise ValueError(f"{prefix}slopes holds a knot slope parameter of {steepest:g}, steeper than the "
                             f"{MAX_SLOPE:g} at which the spline's inverse stays finite")

    def forward_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, features) -> ``y`` (B, features), ``log|det dy/dx|`` (B,)."""
        return spline_pass(x, *self._tables(x), self.bound)

    def inverse_rows(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` (B, features) -> ``x`` (B, features), exact (one quadratic per entry),
        and ``log|det dx/dy|`` (B,)."""
        return spline_pass(y, *self._tables(y), self.bound, inverse=True)

    def tables(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Detached copies of the knot tables: knots in x and y and the slopes there, each
        (features, bins + 1), in the spline's dtype."""
        with torch.no_grad():
            xk, yk, dk = self._tables(self.widths)
            return xk.clone(), yk.clone(), dk.clone()

    @torch.no_grad()
    def restricted(self, part: slice) -> "MonotoneSpline":
        """A new spline module for the features in ``part``, with copies of their splines."""
        widths = self.widths[part]
        spline = MonotoneSpline(widths.shape[0], self.bins, self.bound).to(widths)
        for name in ("widths", "heights", "slopes"):
            getattr(spline, name).copy_(getattr(self, name)[part])
        return spline

    def extra_repr(self) -> str:
        return f"features={self.features}, bins={self.bins}, bound={self.bound:g}"
