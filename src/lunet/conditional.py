"""A conditional LU-Net: one flow ``p(x | c)`` for every context ``c``.

The ``L`` and ``U`` of each block are shared by every context; what depends on the context is
cheap and elementwise. After each LU layer a per-feature log-scale ``s_i(c)`` and shift
``t_i(c)``, given by one small network of the (embedded) context, act on the features, and an
elementwise activation ``f_i`` follows every block but the last::

    h_i = f_i(exp(s_i(c)) * (L_i U_i h_{i-1} + b_i) + t_i(c))

``f_i`` is the leaky softplus (fixed slope), or with ``activation="spline"`` a monotone
rational-quadratic spline per feature whose knots the same context network gives, so that the
context bends each coordinate as well as moving and scaling it. The inverse stays exact (two
triangular solves per block, the closed-form elementwise inverses) and the log-determinant exact
for every context: ``sum_i (log|det L_i U_i| + sum_j s_ij(c)) + sum log f_i'``.

Conventions as for every lunet flow: the data side maps to the latent side in ``forward``;
inputs ``x`` (..., features) and contexts ``c`` (..., context_features) broadcast against each
other as torch broadcasts, and log-dets have the broadcast leading shape.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Mapping, Optional, Sequence, cast, overload

import torch
from torch import nn

from lunet.base import check_module_state
from lunet.checks import check_batch
from lunet.conditional_density import ConditionalDensity, ConditionalFlowDistribution, RowGroups, spline_rows
from lunet.context import ContextInput, context_network
from lunet.flow import ACTIVATIONS, LUNet
from lunet.frozen_conditional import FrozenConditionalLUNet
from lunet.layers import LeakySoftplus, LULinear
from lunet.limits import check_positive_int
from lunet.spline import check_spline_size
from lunet.standardize import Standardize

__all__ = ["ConditionalLUNet"]


class ConditionalLUNet(ConditionalDensity, ContextInput, nn.Module):
    """LU-Net of ``p(x | c)``: shared LU layers, a per-feature affine map of the context after each,
    and an activation after each but the last (the leaky softplus, or a spline the context shapes).

    Args:
        features: width ``D`` of the data vectors.
        context_features: width of the context vectors ``c`` (..., context_features); with
            ``num_classes`` the width of the labels' embedding, with ``embedding`` the width of
            the embedding network's output.
        num_blocks: LU layers, each followed by its context's shift and log-scale, and by the
            activation but the last.
        hidden: widths of the context network's hidden layers (an int: two layers of that width).
        num_classes: contexts are integer class labels of shape (...) in ``[0, num_classes)``,
            embedded by an ``nn.Embedding(num_classes, context_features)`` learned with the flow.
        embedding: any ``nn.Module`` mapping raw contexts (..., anything) to
            (..., context_features), trained with the flow (for images, long series, sets).
        alpha: the leaky softplus's slope, fixed (unused by splines).
        activation: ``"leaky_softplus"``, or ``"spline"``: per feature a monotone rational-quadratic
            spline of ``bins`` bins on ``[-bound, bound]`` (the identity outside, as
            :class:`~lunet.spline.MonotoneSpline`) whose knots and slopes the context network gives
            (``3 * bins - 1`` outputs per feature and activation).
        diag, init, init_scale: as for :class:`~lunet.LULinear`.
        max_log_scale: ``m``: no context scales a feature by more than ``exp(m)`` per block
            (:func:`~lunet.context.read_params`: a smooth bound, so training cannot blow a block up).

    The context network's last layer starts at zero, so a new flow is the unconditional LU-Net of its
    LU layers for every context (with splines: its LU layers alone, the splines the identity).
    ``flow(x, c)`` is ``forward(x, c)``, ``(z, log|det dz/dx|)``; ``flow(c)`` is ``p(. | c)``
    (:meth:`distribution`), as zuko's flows do.
    """

    max_log_scale: float
    input_standardize: Standardize
    blocks: nn.ModuleList
    activation: LeakySoftplus
    conditioner: nn.Sequential

    def __init__(
        self,
        features: int,
        context_features: int,
        num_blocks: int,
        hidden: int | Sequence[int] = 64,
        num_classes: Optional[int] = None,
        embedding: Optional[nn.Module] = None,
        alpha: float = 0.1,
        diag: str = "exp",
        init: str = "random",
        init_scale: float = 0.1,
        max_log_scale: float = 3.0,
        activation: str = "leaky_softplus",
        bins: int = 8,
        bound: float = 5.0,
    ) -> None:
        super().__init__()
        features = check_positive_int(features, "features")
        check_positive_int(num_blocks, "num_blocks")
        self._init_context(context_features, num_classes, embedding)
        if isinstance(max_log_scale, bool) or not isinstance(max_log_scale, numbers.Real) or not (
            math.isfinite(max_log_scale) and max_log_scale > 0
        ):
            raise ValueError(f"max_log_scale must be a positive finite number, got {max_log_scale!r}")
        self.max_log_scale = float(max_log_scale)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        # the spline's size, None for the leaky softplus
        self.spline: Optional[tuple[int, float]] = check_spline_size(bins, bound) if activation == "spline" else None
        self.input_standardize = Standardize(features)
        self.blocks = nn.ModuleList(
            LULinear(features, diag=diag, init=init, init_scale=init_scale) for _ in range(num_blocks)
        )
        self.activation = LeakySoftplus(alpha)
        spline_width = 0 if self.spline is None else (num_blocks - 1) * features * (3 * self.spline[0] - 1)
        self.conditioner = context_network(context_features, hidden, num_blocks * 2 * features + spline_width)

    # -- sizes and placement -------------------------------------------------
    @property
    def features(self) -> int:
        return self.input_standardize.features

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def reference(self) -> torch.Tensor:
        """The tensor whose dtype and device inputs and vector contexts must share."""
        return self.input_standardize.std

    def num_parameters(self) -> int:
        """Trainable parameters: LU layers, the context network and any embedding."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @torch.no_grad()
    def standardize(self, data: torch.Tensor, context: Optional[torch.Tensor] = None) -> "ConditionalLUNet":
        """Fix the input standardisation to the mean and std of ``data`` (N, features), as
        :meth:`lunet.LUNet.standardize` does (its Jacobian is part of every likelihood); given
        ``context`` (N, context_features) of vector contexts, also scale the contexts the same way
        before the context network (no Jacobian: the context is not modelled)."""
        check_batch(data, self.features, "data")
        self.input_standardize.fit(data)
        if context is not None:
            if self.num_classes is not None or self.embedding is not None:
                raise ValueError("a context standardisation applies to vector contexts, not to labels or an "
                                 "embedding network's input")
            check_batch(context, self.context_features, "context")
            self.context_standardize.fit(context)
        return self

    @torch.no_grad()
    def init_gaussian(self, data: torch.Tensor, context: Optional[torch.Tensor] = None, shift: float = 5.0,
                      ridge: float = 1e-3) -> "ConditionalLUNet":
        """Start as the full-covariance Gaussian of ``data`` (N, features), N > features, for every
        context: the input standardisation and LU layers of :meth:`lunet.LUNet.init_gaussian` (the
        first block whitens, the others are the identity, the activations start in their nearly
        linear branch), with the context network still at zero. ``context`` (N, context_features)
        of vector contexts also fixes the context standardisation, as :meth:`standardize` does."""
        first = cast(LULinear, self.blocks[0])
        spline: dict[str, Any] = ({} if self.spline is None
                                  else {"activation": "spline", "bins": self.spline[0], "bound": self.spline[1]})
        start = LUNet(self.features, self.num_blocks, alpha=self.activation._fixed_alpha, diag=first.diag_mode,
                      init="identity", **spline).to(self.reference())
        start.init_gaussian(data, shift, ridge)
        self.input_standardize.load_state_dict(start.input_standardize.state_dict())
        for mine, theirs in zip(self.blocks, start.blocks):
            mine.load_state_dict(theirs.state_dict())
        if context is not None:
            self.standardize(data, context)  # the same input standardisation again, and the contexts'
        return self

    # -- stored weights ------------------------------------------------------
    def check_state(self, state: Mapping[str, Any], prefix: str = "", strict: bool = True) -> None:
        """``ValueError`` in one line naming the entry when ``state`` (this flow's weights after ``prefix``)
        is not a set this flow takes (:func:`~lunet.base.check_module_state`); :meth:`load_state_dict`
        and lunet's checkpoint loads check this before they copy anything."""
        check_module_state(self, state, prefix, strict, what=self._describe())

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict`` after :meth:`check_state`, so a refused state changes no weight."""
        self.check_state(state_dict, strict=strict)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def _describe(self) -> str:
        context = self.describe_context()
        blocks = f"{self.num_blocks} block{'' if self.num_blocks == 1 else 's'}"
        spline = "" if self.spline is None else f", spline activations of {self.spline[0]} bins"
        return f"features {self.features}, {blocks}, {context}{spline}"

    # -- the maps ------------------------------------------------------------
    @overload
    def forward(self, x: torch.Tensor, c: None = None) -> ConditionalFlowDistribution: ...
    @overload
    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward(
        self, x: torch.Tensor, c: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor] | "ConditionalFlowDistribution":
        """``flow(x, c)``: ``x`` (..., features) and ``c`` broadcast to leading shape (...) ->
        ``z`` (..., features), ``log|det dz/dx|`` (...).

        ``flow(c)``, with one argument: the distribution ``p(. | c)`` (:meth:`distribution`)."""
        if c is None:
            return self.distribution(x)
        plan = self._rows(x, c, "input")
        return plan.restore(*self.forward_rows(plan.rows, *plan.params, groups=plan.groups))

    def inverse(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` (..., features) and ``c`` broadcast to leading shape (...) -> ``x`` (..., features),
        exact (triangular solves, closed-form elementwise inverses), and ``log|det dx/dz|`` (...)."""
        plan = self._rows(z, c, "input")
        return plan.restore(*self.inverse_rows(plan.rows, *plan.params, groups=plan.groups))

    def forward_rows(
        self, x: torch.Tensor, log_scale: torch.Tensor, shift: torch.Tensor, knots: Optional[torch.Tensor] = None,
        groups: Optional[RowGroups] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Checked rows ``x`` (B, D), the context's log-scales and shifts (B or 1, num_blocks, D) and
        spline knot tables (B or 1, num_blocks - 1, 3, D, bins + 1) or None -> ``z`` (B, D),
        ``log|det dz/dx|`` (B,). With ``groups`` (a :class:`~lunet.conditional_density.RowPlan`'s),
        knot tables (G, ...), one per group of the rows, sorted by label."""
        h, logdet = self.input_standardize.forward_rows(x)
        # each block's part by unbind, whose backward stacks the gradients where indexing would
        # scatter each into a tensor of zeros
        scale, shifts = torch.exp(log_scale).unbind(1), shift.unbind(1)
        by_block = None if knots is None else knots.unbind(1)
        last = self.num_blocks - 1
        for i, block in enumerate(cast("Iterable[LULinear]", self.blocks)):
            h, ld = block.forward_rows(h)
            logdet = logdet + ld
            h = torch.addcmul(shifts[i], h, scale[i])
            if i < last:
                if by_block is None:
                    h, ld = self.activation.forward_rows(h)
                else:
                    h, ld = spline_rows(h, by_block[i], self.spline, groups=groups)
                logdet = logdet + ld
        logdet = logdet + log_scale.sum(dim=(-2, -1))
        return h, logdet.expand(x.shape[0])

    def inverse_rows(
        self, z: torch.Tensor, log_scale: torch.Tensor, shift: torch.Tensor, knots: Optional[torch.Tensor] = None,
        groups: Optional[RowGroups] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The inverse of :meth:`forward_rows`: ``x`` (B, D) and ``log|det dx/dz|`` (B,)."""
        inv_scale, shifts = torch.exp(-log_scale).unbind(1), shift.unbind(1)
        h, logdet = z, -log_scale.sum(dim=(-2, -1))
        by_block = None if knots is None else knots.unbind(1)
        last = self.num_blocks - 1
        for i in range(last, -1, -1):
            if i < last:
                if by_block is None:
                    h, ld = self.activation.inverse_rows(h)
                else:
                    h, ld = spline_rows(h, by_block[i], self.spline, inverse=True, groups=groups)
                logdet = logdet + ld
            h = (h - shifts[i]) * inv_scale[i]
            h, ld = cast(LULinear, self.blocks[i]).inverse_rows(h)
            logdet = logdet + ld
        h, ld = self.input_standardize.inverse_rows(h)
        return h, (logdet + ld).expand(z.shape[0])

    # -- the density and draws (log_prob, sample, distribution: _ConditionalDensity) -----------
    def rsample(
        self, sample_shape: int | Sequence[int], c: torch.Tensor, temperature: float = 1.0,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """:meth:`sample`, reparameterised: differentiable in the weights, the context network, an
        embedding and a floating context."""
        return self._draw(sample_shape, c, temperature, generator)

    def frozen(self) -> FrozenConditionalLUNet:
        """A frozen copy for fast inference without autograd (:class:`~lunet.FrozenConditionalLUNet`): later
        changes to this flow are not seen. ``ValueError`` when a block is not invertible."""
        return FrozenConditionalLUNet(self)

    def extra_repr(self) -> str:
        context = (f"num_classes={self.num_classes}" if self.num_classes is not None
                   else "embedding" if self.embedding is not None else "vectors")
        spline = "" if self.spline is None else f", activation=spline, bins={self.spline[0]}, bound={self.spline[1]:g}"
        return (f"features={self.features}, context_features={self.context_features}, "
                f"num_blocks={self.num_blocks}, context={context}{spline}")
