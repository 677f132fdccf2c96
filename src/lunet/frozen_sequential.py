"""A frozen composition for fast inference: :class:`FrozenSequential` (what
:meth:`lunet.Sequential.frozen` and an LU-Net with spline activations, or with slopes learned per
group, give) folds every run of LU layers and activations as a :class:`~lunet.frozen.FrozenLUNet`,
runs each spline as a :class:`FrozenSpline` from tables made once, and copies the other parts;
:func:`frozen_of` makes the one or the other.

Conventions as for every frozen flow (:mod:`lunet.frozen`): ``forward(x) -> (y, log|det dy/dx|)`` on
rows ``(..., features)``, without autograd, from copies of the flow's weights made when it is frozen:
call ``frozen()`` again after changing the flow.
"""

from __future__ import annotations

import copy
import itertools
from typing import Iterable, Optional

import torch
from torch import nn

from lunet.base import compose_forward, compose_inverse
from lunet.checks import check_features
from lunet.density import Density
from lunet.fast.spline import spline_forward_fast, spline_inverse_fast, spline_sample_fast
from lunet.fast.spline_plain import spline_forward_plain, spline_inverse_plain
from lunet.fast.spline_tables import BinGrid, BinTables, SamplingTables
from lunet.frozen import FrozenLUNet, foldable_run, under_vmap
from lunet.spline import MonotoneSpline

__all__ = ["FrozenSpline", "FrozenSequential", "frozen_of"]


class FrozenSpline:
    """A frozen flow's copy of a :class:`~lunet.spline.MonotoneSpline`: its per-bin tables, the
    coefficients of the inverse's quadratic for sampling and the uniform lookups of its bins on both
    sides, made once, so that a pass finds each entry's bin with two
    reads and one comparison and reads each bin quantity once (:mod:`lunet.fast.spline`).

    ``forward(x)`` maps rows ``(B, features)`` to ``(y, log|det dy/dx|)``, ``inverse(y)`` back;
    under ``vmap`` and ``torch.compile`` the plain formulas run from the same knot tables.
    """

    def __init__(self, spline: MonotoneSpline) -> None:
        self.features, self.bound = spline.features, spline.bound
        self._knots = spline.tables()  # knots in x and y, slopes: (features, bins + 1) each
        self._tables = BinTables.of(*self._knots, self.bound)
        self._x_grid = BinGrid(self._knots[0], self.bound)
        self._y_grid = BinGrid(self._knots[1], self.bound)
        self._sampling = SamplingTables.of(self._tables)

    @property
    def dtype(self) -> torch.dtype:
        return self._knots[0].dtype

    @property
    def device(self) -> torch.device:
        return self._knots[0].device

    def __repr__(self) -> str:
        return f"FrozenSpline(features={self.features}, bins={self._tables.bins}, bound={self.bound:g})"

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, features) -> ``y`` (B, features), ``log|det dy/dx|`` (B,)."""
        if under_vmap() or torch.compiler.is_compiling():
            return spline_forward_plain(x, *self._knots, self.bound)
        return spline_forward_fast(x, self._tables, self._x_grid)

    __call__ = forward

    @torch.no_grad()
    def inverse(self, y: torch.Tensor, with_logdet: bool = True):
        """``y`` (B, features) -> ``x`` (B, features), exact, and ``log|det dx/dy|`` (B,) (without
        ``with_logdet``, ``x`` alone)."""
        if under_vmap() or torch.compiler.is_compiling():
            x, logdet = spline_inverse_plain(y, *self._knots, self.bound)
        elif with_logdet:
            x, logdet = spline_inverse_fast(y, self._tables, self._y_grid)
        else:
            return spline_sample_fast(y, self._tables, self._sampling, self._y_grid)
        return (x, logdet) if with_logdet else x


class FrozenSequential(Density):
    """A frozen copy of a composition's ``parts`` (a :class:`~lunet.Sequential`, an LU-Net with
    spline activations) for fast inference, without autograd; ``features``: the flow's width, which
    :meth:`log_prob` and :meth:`sample` need (None where the flow states none).

    Every run of ``[Standardize] LULinear (LeakySoftplus LULinear)*`` becomes a
    :class:`~lunet.FrozenLUNet` (one dense product per block, the scalings folded
    in); every other part is deep-copied and runs its own passes. Like every
    frozen flow it holds its own copy of the weights: later changes to the
    ``Sequential`` are not seen. ``vmap`` over it works; ``torch.func``'s
    differentiating transforms raise, as for :class:`FrozenLUNet`.
    """

    differentiable = False
    features: Optional[int]

    def __init__(self, parts: Iterable[nn.Module], features: Optional[int] = None, **tuning: int) -> None:
        parts = list(parts)
        self.features = features
        self.stages: list = []
        i = 0
        while i < len(parts):
            end = foldable_run(parts, i)
            part = parts[i]
            if end > i:
                self.stages.append(FrozenLUNet(parts[i:end], **tuning))
            elif isinstance(part, MonotoneSpline):
                end = i + 1
                self.stages.append(FrozenSpline(part))
            else:
                end = i + 1
                self.stages.append(copy.deepcopy(part).requires_grad_(False).eval())
            i = end

    def __repr__(self) -> str:
        kinds = ", ".join(type(s).__name__ for s in self.stages)
        return f"FrozenSequential({kinds}; a frozen copy: later changes to the Sequential are not seen)"

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first stage that holds floating tensors."""
        return _stage_placement(self.stages)[0]

    @property
    def device(self) -> torch.device:
        """The device of the first stage that holds floating tensors."""
        return _stage_placement(self.stages)[1]

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        under_vmap()
        check_features(x, self.features, like=torch.empty(0, dtype=self.dtype, device=self.device))
        return x.reshape(-1, x.shape[-1])

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (..., D) -> ``y``, the sum of the stages' ``log|det|`` (...)."""
        y, logdet = compose_forward(self.stages, self._rows(x))
        return y.reshape(*x.shape[:-1], y.shape[-1]), logdet.reshape(x.shape[:-1])

    __call__ = forward

    @torch.no_grad()
    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` -> ``x``, the stages' inverses in reverse order, and the sum of their ``log|det|`` (...)."""
        x, logdet = compose_inverse(self.stages, self._rows(y))
        return x.reshape(*y.shape[:-1], x.shape[-1]), logdet.reshape(y.shape[:-1])

    def _width(self) -> int:
        if self.features is None:
            raise ValueError("this frozen Sequential states no width (features): log_prob and sample need it")
        return self.features

    def _placement(self) -> tuple[torch.dtype, torch.device]:
        return self.dtype, self.device

    def _values(self, z: torch.Tensor) -> torch.Tensor:
        if under_vmap():
            return self.inverse(z)[0]
        # the values alone: no stage computes a log-det that sampling would drop
        h = z
        for stage in reversed(self.stages):
            if isinstance(stage, FrozenLUNet):
                h = stage._inverse(h)
            elif isinstance(stage, FrozenSpline):
                h = stage.inverse(h, with_logdet=False)
            else:
                h = stage.inverse(h)[0]
        return h


def _stage_placement(stages: list) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the first stage that holds a floating tensor."""
    for stage in stages:
        if isinstance(stage, (FrozenLUNet, FrozenSpline)):
            return stage.dtype, stage.device
        like = next((t for t in itertools.chain(stage.parameters(), stage.buffers()) if t.is_floating_point()), None)
        if like is not None:
            return like.dtype, like.device
    return torch.get_default_dtype(), torch.device("cpu")


def frozen_of(parts: Iterable[nn.Module], features: Optional[int] = None,
                **tuning: int) -> "FrozenLUNet | FrozenSequential":
    """A frozen copy of ``parts``: a :class:`FrozenLUNet` where they fold as one run
    (``[Standardize] LULinear (LeakySoftplus LULinear)*``, one slope per activation), else a
    :class:`FrozenSequential` that folds what it can; ``tuning`` as :class:`FrozenLUNet` takes it."""
    parts = list(parts)
    if foldable_run(parts, 0) == len(parts):
        return FrozenLUNet(parts, **tuning)
    return FrozenSequential(parts, features, **tuning)
