"""Frozen flows for fast inference: an LU-Net's density and sampling from folded matrices
(:class:`FrozenLUNet`), the runs of LU layers and activations it folds, and what every frozen flow
shares (:func:`under_vmap`, :func:`frozen_or_module`). A frozen Sequential, whose LU runs fold
the same way, is in :mod:`lunet.frozen_sequential`.

:meth:`lunet.LUNet.frozen` and :meth:`lunet.Sequential.frozen` make them. A frozen flow copies the flow's weights
when it is made and never reads the flow again, so no later change of the flow
(an optimiser step, ``load_state_dict``, an edit through ``.data``, a move to
another device or dtype) can make it serve results for weights that are no
longer the flow's own: call ``frozen()`` again after such changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Optional

import torch
from torch import nn

from lunet.checks import check_features
from lunet.density import Density
from lunet.fast.activation import negated_forward, scaled_forward
from lunet.fast.affine import SPLIT_BELOW_ROWS, SPLIT_MIN_BYTES, FrozenAffine, as_frozen_affine_weight
from lunet.functional import (
    cached_inverse_table,
    leaky_softplus,
    leaky_softplus_inverse,
    leaky_softplus_log_derivative,
    solve_scaled,
    table_step,
)
from lunet.layers import LeakySoftplus, LULinear, lu_affine, lu_affine_inverse
from lunet.standardize import Standardize

__all__ = ["foldable_run", "FrozenBlock", "FrozenLUNet", "under_vmap", "frozen_or_module"]


@dataclass(frozen=True)
class FrozenBlock:
    """A frozen flow's copy of one LU layer: ``L`` (n, n) unit lower triangular, ``U`` (n, n) upper
    triangular, the bias ``b`` (n,) and ``log|det A|`` (0-dim), in the layer's dtype."""

    lower: torch.Tensor
    upper: torch.Tensor
    bias: torch.Tensor
    log_abs_det: torch.Tensor

    @staticmethod
    @torch.no_grad()
    def of(layer: LULinear) -> "FrozenBlock":
        layer.check_invertible()
        return FrozenBlock(layer.matrix_l().detach().clone(), layer.matrix_u().detach().clone(),
                           layer.bias.detach().clone(), layer.log_abs_det().detach().clone())

    def weight64(self) -> torch.Tensor:
        """``A = L U`` (n, n) in float64, as exact as the factors."""
        return self.lower.double() @ self.upper.double()

    def inverse64(self) -> torch.Tensor:
        """``A^{-1} = U^{-1} L^{-1}`` (n, n) in float64 by two triangular solves."""
        l64 = self.lower.double()
        eye = torch.eye(l64.shape[0], dtype=torch.float64, device=l64.device)
        l_inv = torch.linalg.solve_triangular(l64, eye, upper=False, unitriangular=True)
        return torch.linalg.solve_triangular(self.upper.double(), l_inv, upper=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x A^T + b`` (B, n) in plain ops."""
        return lu_affine(x, self.lower, self.upper, self.bias)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """``(y - b) A^{-T}`` (B, n) by two triangular solves."""
        return lu_affine_inverse(y, self.lower, self.upper, self.bias)


class FrozenLUNet(Density):
    """The density and sampling passes of an :class:`~lunet.LUNet` with its weights as they were
    when it was frozen, without autograd.

    Each block's ``A = L U`` and its inverse are formed once (in float64, then
    cast to the flow's dtype), and the elementwise scalings around them (the
    input standardisation, the activation's ``1 - a``, the inverse table's node
    spacing) are folded into those matrices: a pass costs one dense product per
    block plus the activations. The same conventions as :class:`~lunet.LUNet`:
    ``forward`` maps ``x`` (..., features) to ``(z, log|det dz/dx|)``.

    ``flow``: an LU-Net, or a :class:`~lunet.Sequential` or list of parts of the same pattern
    (``[Standardize] LULinear (LeakySoftplus LULinear)*``). ``split_below_rows`` and
    ``split_min_bytes`` tune the products (:class:`~lunet.fast.affine.FrozenAffine`), not the results.

    ``sync_free`` (on for a frozen flow off the CPU): the density pass reads nothing back to the
    host, so it never waits for the device and compiles or captures as one graph; off, it takes a
    cheaper activation and reads back one flag per batch, whether that stayed exact (if not, the
    batch is redone). Under ``torch.func.vmap`` it runs plain passes from its copy of the weights
    (the same map, unfolded); ``grad``, ``jacrev``, ``jvp`` and ``jacfwd`` raise ``RuntimeError``
    (no autograd: their derivatives would be zero).
    """

    differentiable = False

    def __init__(
        self,
        flow: Iterable[nn.Module],
        split_below_rows: int = SPLIT_BELOW_ROWS,
        split_min_bytes: int = SPLIT_MIN_BYTES,
    ) -> None:
        self._split = {"split_below_rows": split_below_rows, "split_min_bytes": split_min_bytes}
        parts = list(flow)
        if foldable_run(parts, 0) != len(parts):
            kinds = ", ".join(type(p).__name__ for p in parts)
            raise ValueError(f"FrozenLUNet folds [Standardize] LULinear (LeakySoftplus LULinear)*, not {kinds}")
        # Copies of the weights, as plain tensors (and each slope as a number): the plans below
        # are built from them, lazily, and nothing outside can reach them.
        self._blocks = [FrozenBlock.of(p) for p in parts if isinstance(p, LULinear)]
        self._alphas = [float(p.alpha.detach()) for p in parts if isinstance(p, LeakySoftplus)]
        ref = self._blocks[0].bias
        if isinstance(parts[0], Standardize):
            self._mean, self._std = parts[0].mean.detach().clone(), parts[0].std.detach().clone()
        else:
            self._mean, self._std = torch.zeros_like(ref), torch.ones_like(ref)
        self._forward_plan_cache: Optional[tuple] = None
        self._inverse_plan_cache: Optional[tuple] = None
        # off the CPU the elementwise work the fast activation saves is cheap, and a wait is not
        self.sync_free = self.device.type != "cpu"

    @property
    def features(self) -> int:
        return self._std.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self._std.dtype

    @property
    def device(self) -> torch.device:
        return self._std.device

    def __repr__(self) -> str:
        return (f"FrozenLUNet(features={self.features}, num_blocks={len(self._blocks)}, dtype={self.dtype}, "
                f"device={self.device}; a frozen copy: later changes to the flow are not seen)")

    # -- the passes ------------------------------------------------------------
    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (..., features) -> ``z`` (..., features), ``log|det dz/dx|`` (...)."""
        check_features(x, self.features, like=self._std)
        rows = x.reshape(-1, self.features)
        z, logdet = self._plain_forward(rows) if under_vmap() else self._forward(rows)
        return z.view(x.shape), logdet.reshape(x.shape[:-1])

    __call__ = forward

    @torch.no_grad()
    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` (..., features) -> ``x`` (..., features), the inverse of :meth:`forward`, and
        ``log|det dx/dz|`` (...)."""
        check_features(z, self.features, like=self._std)
        rows = z.reshape(-1, self.features)
        inverse = self._plain_inverse if under_vmap() else self._inverse
        x, logdet = inverse(rows, with_logdet=True)
        return x.view(z.shape), logdet.reshape(z.shape[:-1])

    def _placement(self) -> tuple[torch.dtype, torch.device]:
        return self.dtype, self.device

    def _values(self, z: torch.Tensor) -> torch.Tensor:
        return self._plain_inverse(z) if under_vmap() else self._inverse(z)

    def _plain_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The density pass in plain ops from the unfolded weights (under ``vmap``)."""
        h = torch.addcmul(-self._mean / self._std, x, 1.0 / self._std)
        const = -torch.log(self._std).sum() + sum(block.log_abs_det for block in self._blocks)
        logdet = const.expand(x.shape[0])
        for i, block in enumerate(self._blocks):
            h = block.forward(h)
            if i < len(self._alphas):
                a = self._alphas[i]
                logdet = logdet + leaky_softplus_log_derivative(h, a).sum(dim=-1)
                h = leaky_softplus(h, a)
        return h, logdet

    def _plain_inverse(self, z: torch.Tensor, with_logdet: bool = False):
        """The sampling pass in plain ops from the unfolded weights (under ``vmap``)."""
        const = torch.log(self._std).sum() - sum(block.log_abs_det for block in self._blocks)
        logdet = const.expand(z.shape[0])
        h = z
        for i in reversed(range(len(self._blocks))):
            if i < len(self._alphas):
                a = self._alphas[i]
                h = leaky_softplus_inverse(h, a)
                logdet = logdet - leaky_softplus_log_derivative(h, a).sum(dim=-1)
            h = self._blocks[i].inverse(h)
        x = torch.addcmul(self._mean, h, self._std)
        return (x, logdet) if with_logdet else x

    def _forward(self, x: torch.Tensor, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The density pass from the folded matrices of :meth:`_forward_plan`.

        Each activation runs as :func:`~lunet.fast.activation.negated_forward`; should
        a pre-activation leave its exact range, the batch is redone with
        ``exact=True`` (:func:`~lunet.fast.activation.scaled_forward`). With
        ``sync_free`` (off the CPU) every batch runs exactly at once, with nothing
        read back. Two scratch buffers serve every activation, and every product
        after the first writes into the first one's output.
        """
        exact = exact or self.sync_free
        layers, alphas, const = self._forward_plan()
        u = layers[0](x)
        if not alphas:
            return u, const.expand(x.shape[0])
        q, scratch = torch.empty_like(u), torch.empty_like(u)
        logdet, in_range = None, None
        for layer, a in zip(layers[1:], alphas):
            if exact:
                g, ld = scaled_forward(u.neg_(), a)
                torch.neg(g, out=q)
            else:
                ld, ok = negated_forward(u, a, out=q, scratch=scratch)
                in_range = ok if in_range is None else in_range.logical_and_(ok)
            logdet = ld if logdet is None else logdet.add_(ld)
            layer(q, out=u)
        if not exact and not bool(in_range):
            return self._forward(x, exact=True)
        assert logdet is not None  # alphas is not empty
        return u, logdet.add_(const)

    def _inverse(self, z: torch.Tensor, with_logdet: bool = False):
        """The sampling pass from the folded matrices of :meth:`_inverse_plan`: ``x`` (B, features),
        and with ``with_logdet`` also ``log|det dx/dz|`` (B,)."""
        layers, alphas, tables = self._inverse_plan()
        h = layers[0](z)
        # the activations' scratch buffers, made once per pass; for a small batch their
        # bookkeeping costs more than the allocations it saves
        work: Optional[dict[str, torch.Tensor]] = {} if z.shape[0] >= 64 else None
        logdet = None
        for layer, a, table in zip(layers[1:], alphas, tables):
            x = solve_scaled(h, a, work, table=table)  # overwrites h, whose buffer then takes the product
            if with_logdet:
                ld = leaky_softplus_log_derivative(x, a).sum(dim=-1)
                logdet = ld if logdet is None else logdet.add_(ld)
            h = layer(x, out=h)
        if not with_logdet:
            return h
        const = self._inverse_log_det_constant()
        return h, (const.expand(z.shape[0]) if logdet is None else const - logdet)

    def _inverse_log_det_constant(self) -> torch.Tensor:
        """``log|det dx/dz|`` without the activations' part: ``sum log std - sum_blocks log|det A|`` (0-dim)."""
        const = torch.log(self._std.double()).sum() - sum(block.log_abs_det.double() for block in self._blocks)
        return const.to(self.dtype)

    # -- the folded matrices -------------------------------------------------------
    def _forward_plan(self) -> tuple[list[FrozenAffine], list[float], torch.Tensor]:
        """The density pass: layer ``i`` mapping ``h -> h W_i + c_i`` (W_i (features, features),
        c_i (features,)), the slope of each activation, and the constant part of the log-det (0-dim).

        The elementwise scaling in front of each layer is folded into its
        matrix: the input standardisation into the first
        (``W_0 = diag(1/std) A_0^T``, ``c_0 = b_0 - (mean/std) A_0^T``), and the
        factor ``1 - a`` that :func:`~lunet.fast.activation.scaled_forward` leaves out
        into the next (``W_i = (1 - a) A_i^T``); their log-dets join the
        constant. So are the signs of :func:`~lunet.fast.activation.negated_forward`:
        every layer but the last returns its output negated, and every layer
        but the first takes its input negated.
        """
        if self._forward_plan_cache is None:
            self._forward_plan_cache = self._build_forward_plan()
        return self._forward_plan_cache

    def _inverse_plan(self) -> tuple[list[FrozenAffine], list[float], list[tuple]]:
        """The sampling pass: layers in the order applied, the inverse of
        block ``n - 1 - k`` mapping ``h -> h W_k + c_k``, the slope of
        the activation each layer but the last feeds, and that activation's
        inverse table (held here, so that a compiled pass finds it made).

        Each of those layers returns its output divided by the inverse table's
        node spacing ``h`` (a power of two, so exactly), which
        :func:`lunet.functional.solve_scaled` takes; the last returns
        ``x std + mean``, the standardisation undone.
        """
        if self._inverse_plan_cache is None:
            self._inverse_plan_cache = self._build_inverse_plan()
        return self._inverse_plan_cache

    def _build_forward_plan(self) -> tuple[list[FrozenAffine], list[float], torch.Tensor]:
        dtype = self.dtype
        scale = 1.0 / self._std.double()
        shift = -self._mean.double() * scale
        const = -torch.log(self._std.double()).sum()
        layers, alphas = [], []
        last = len(self._blocks) - 1
        for i, block in enumerate(self._blocks):
            a_t = block.weight64().t()
            sign_out = 1.0 if i == last else -1.0
            sign = sign_out if i == 0 else -sign_out
            weight = as_frozen_affine_weight((sign * scale)[:, None] * a_t, dtype)
            layers.append(FrozenAffine(weight, (sign_out * (block.bias.double() + shift @ a_t)).to(dtype),
                                       **self._split))
            const = const + block.log_abs_det.double()
            if i < len(self._alphas):
                a = self._alphas[i]
                alphas.append(a)
                scale = torch.full_like(scale, 1.0 - a)
                shift = torch.zeros_like(shift)
                const = const + self.features * math.log1p(-a)
        return layers, alphas, const.to(dtype)

    def _build_inverse_plan(self) -> tuple[list[FrozenAffine], list[float], list[tuple]]:
        dtype = self.dtype
        layers, alphas = [], []
        for i in reversed(range(len(self._blocks))):
            block = self._blocks[i]
            weight = block.inverse64().t()  # A^{-T}
            shift = -(block.bias.double() @ weight)
            if i > 0:
                a = self._alphas[i - 1]
                alphas.append(a)
                scale = 1.0 / table_step(a)
                weight, shift = weight * scale, shift * scale
            else:
                std = self._std.double()
                weight, shift = weight * std, shift * std + self._mean.double()
            layers.append(FrozenAffine(as_frozen_affine_weight(weight, dtype), shift.to(dtype), **self._split))
        tables = [cached_inverse_table(a, dtype, self.device) for a in alphas]
        return layers, alphas, tables


def foldable_run(parts: list, start: int) -> int:
    """The end (exclusive) of the longest run from ``start`` that a :class:`~lunet.FrozenLUNet`
    can fold: an optional ``Standardize``, then ``LULinear (LeakySoftplus LULinear)*`` of one
    width, each activation with one slope (not one learned per group); ``start`` itself when
    there is none."""
    i = start
    width = None
    if i < len(parts) and isinstance(parts[i], Standardize):
        width, i = parts[i].features, i + 1
    if not (i < len(parts) and isinstance(parts[i], LULinear) and width in (None, parts[i].features)):
        return start
    width, i = parts[i].features, i + 1
    while (
        i + 1 < len(parts) and isinstance(parts[i], LeakySoftplus) and parts[i].alpha.numel() == 1  # one slope to fold
        and isinstance(parts[i + 1], LULinear) and parts[i + 1].features == width
    ):
        i += 2
    return i


def under_vmap() -> bool:
    """Whether a frozen flow's pass runs inside ``torch.func.vmap``: it then takes its private
    replica's plain passes (the same weights, unfolded), as its own write into buffers that
    ``vmap``'s batched tensors cannot fill.

    Raises ``RuntimeError`` inside the transforms that differentiate (``grad``, ``jacrev``,
    ``jvp``, ``jacfwd``): a frozen flow computes without autograd, and their derivatives
    through it would be zero, not the flow's.
    """
    if not torch._C._are_functorch_transforms_active():
        return False
    vmap = torch._C._functorch.TransformType.Vmap
    if any(level.key() != vmap for level in torch._C._functorch.get_interpreter_stack() or ()):
        raise RuntimeError(
            "a frozen flow (flow.frozen()) computes without autograd: torch.func's grad, jacrev, jvp and jacfwd "
            "through it would give zero derivatives; differentiate the flow itself. vmap over a frozen flow works"
        )
    return True


def frozen_or_module(model: object) -> object:
    """``model.frozen()`` (a fast frozen copy of the current weights) where the model offers one,
    else the model itself: what density and sampling code that holds the weights fixed calls."""
    frozen = getattr(model, "frozen", None)
    return frozen() if callable(frozen) else model
