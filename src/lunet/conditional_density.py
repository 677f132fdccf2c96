"""The density face a conditional flow and its frozen copy share: ``log_prob(x, c)``, ``sample(shape, c)``
and the distribution ``p(. | c)`` for a fixed context, written once over the flow's passes.

A conditional flow provides ``forward(x, c) -> (z, log|det dz/dx|)``, ``inverse_rows``, ``features``,
``reference()``, ``context_shape(c)`` and ``_params(c)``, the context's :data:`Params`; rows and the
context's parameters meet in a :class:`RowPlan`, by :func:`broadcast_rows`, or for class labels with
spline activations by :func:`group_rows`, which sorts the rows by label so that each label's knots
serve its rows at once (one pass of the unconditional spline's kernels over the labels' stacked
tables).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, NamedTuple, Optional, Sequence, cast, overload

import torch
from torch import nn

from lunet.checks import check_features, check_temperature, plain_ops_wanted, sample_shape_of, value_checks_enabled
from lunet.distributions import FlowDistributionBase
from lunet.fast.spline_plain import spline_forward_plain, spline_inverse_plain
from lunet.latent import LOG_2PI, latent_draws, standard_normal_log_prob
from lunet.spline import spline_pass

__all__ = ["Params", "RowGroups", "RowPlan", "ConditionalDensity", "broadcast_rows", "labelled_rows", "group_rows",
           "spline_rows", "ConditionalFlowDistribution"]

# A context's parameters, each with the context's leading shape: log-scales and shifts
# (..., num_blocks, D), and for spline activations the knot tables (..., num_blocks - 1, 3, D, K + 1)
# (knots in x, knots in y, slopes there), None for the leaky softplus.
Params = tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]


class RowGroups(NamedTuple):
    """Rows sorted by class label (:func:`group_rows`): group ``g`` is the next ``counts[g]`` rows,
    of label ``labels[g]``, whose knot tables are entry ``g`` of the knots (G, ...)."""

    labels: list[int]
    counts: list[int]


class RowPlan(NamedTuple):
    """Inputs and contexts as the passes take them: ``rows`` (B, D); ``params``, the context's
    :data:`Params` as rows (B, ...), or (1, ...) for one context shared by every row; the broadcast
    leading shape ``batch``. With ``groups`` (:func:`group_rows`): the rows sorted by label, the
    knot tables one per group, and ``order`` (B,) the place of each sorted row in the batch."""

    rows: torch.Tensor
    params: Params
    batch: torch.Size
    groups: Optional[RowGroups] = None
    order: Optional[torch.Tensor] = None

    def restore(self, out: torch.Tensor, logdet: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A pass's rows ``out`` (B, D') and ``logdet`` (B,) back in the batch's order and shape."""
        if self.order is not None:
            back = torch.empty_like(self.order)
            back[self.order] = torch.arange(len(self.order), device=self.order.device)
            out, logdet = out.index_select(0, back), logdet.index_select(0, back)
        return out.view(*self.batch, out.shape[-1]), logdet.reshape(self.batch)


class ConditionalDensity:
    """``log_prob``, ``sample`` and ``distribution`` of a conditional flow and of its frozen copy, over
    their ``forward``, ``inverse_rows``, ``_params`` (the context's :data:`Params`) and ``reference``."""

    if TYPE_CHECKING:
        # what the flow and its frozen copy provide, as each of them defines it
        @property
        def features(self) -> int: ...

        @overload
        def forward(self, x: torch.Tensor, c: None = None) -> ConditionalFlowDistribution: ...

        @overload
        def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

        def forward(
            self, x: torch.Tensor, c: Optional[torch.Tensor] = None
        ) -> tuple[torch.Tensor, torch.Tensor] | ConditionalFlowDistribution: ...

        __call__ = forward

        def inverse_rows(
            self, z: torch.Tensor, log_scale: torch.Tensor, shift: torch.Tensor, knots: Optional[torch.Tensor] = None,
            groups: Optional[RowGroups] = None,
        ) -> tuple[torch.Tensor, torch.Tensor]: ...

        spline: Optional[tuple[int, float]]
        num_classes: Optional[int]

        def _labels(self, c: object, ref: torch.Tensor) -> torch.Tensor: ...

        def rsample(
            self, sample_shape: int | Sequence[int], c: torch.Tensor, temperature: float = 1.0,
            generator: Optional[torch.Generator] = None,
        ) -> torch.Tensor: ...

        def reference(self) -> torch.Tensor: ...

        def context_shape(self, c: object) -> torch.Size: ...

        def _params(self, c: object) -> Params: ...

    def log_prob(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``log p(x | c)`` in nats under the standard normal latent; ``x`` (..., features) and ``c``
        broadcast to leading shape (...) -> (...)."""
        z, logdet = self.forward(x, c)
        return standard_normal_log_prob(z) + logdet

    def sample(
        self, sample_shape: int | Sequence[int], c: torch.Tensor, temperature: float = 1.0,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Draws of ``x ~ p(. | c)``, shape ``sample_shape + context batch shape + (features,)`` (an
        int ``n`` means ``(n,)``); latent std ``temperature``; no gradients (the flow's ``rsample`` keeps them)."""
        with torch.no_grad():
            return self._draw(sample_shape, c, temperature, generator)

    def _draw(self, sample_shape: int | Sequence[int], c: torch.Tensor, temperature: float,
              generator: Optional[torch.Generator]) -> torch.Tensor:
        labels = self._grouped_labels(c)
        params = self._params(c) if labels is None else None
        context_shape = labels.shape if labels is not None else cast(Params, params)[0].shape[:-2]
        batch = sample_shape_of(sample_shape) + context_shape
        ref = self.reference()
        z, _ = latent_draws(batch, self.features, temperature, ref.dtype, ref.device, generator)
        draws = z.view(*batch, self.features)
        plan = (RowPlan(*broadcast_rows(draws, cast(Params, params), "draws")) if labels is None
                else group_rows(draws, labels, self._params, "draws"))
        x, logdet = self.inverse_rows(plan.rows, *plan.params, groups=plan.groups)
        return plan.restore(x, logdet)[0]

    def _rows(self, x: torch.Tensor, c: object, name: str) -> RowPlan:
        """``x`` (..., features) checked, and with the context's parameters as the passes take them."""
        check_features(x, self.features, name, like=self.reference())
        labels = self._grouped_labels(c)
        if labels is None:
            return RowPlan(*broadcast_rows(x, self._params(c), name))
        return group_rows(x, labels, self._params, name)

    def _grouped_labels(self, c: object) -> Optional[torch.Tensor]:
        """The labels ``c`` (checked) where the passes go label by label: class labels with spline
        activations, whose knots every row of a label shares; None where they go row by row
        (other contexts, the leaky softplus, and inside ``torch.func`` transforms and ``torch.compile``,
        which take the plain formulas of a table per row without data-dependent shapes)."""
        if self.spline is None or self.num_classes is None or plain_ops_wanted() or torch.compiler.is_compiling():
            return None
        return self._labels(c, self.reference())

    def distribution(
        self, c: torch.Tensor, temperature: float = 1.0, validate_args: Optional[bool] = None
    ) -> "ConditionalFlowDistribution":
        """``p(. | c)`` as a ``torch.distributions.Distribution``: ``batch_shape`` the context's leading
        shape, ``event_shape (features,)``, latent ``N(0, temperature^2 I)``; it reads the current
        weights on every call (a frozen flow's: no ``rsample``). ``flow(c)`` is the same."""
        return ConditionalFlowDistribution(self, c, temperature, validate_args=validate_args)


def broadcast_rows(x: torch.Tensor, params: Params, name: str) -> tuple[torch.Tensor, Params, torch.Size]:
    """``x`` (..., D) and the context's :data:`Params` broadcast over their leading shapes, as rows."""
    c_lead = params[0].shape[:-2]
    batch = _batch_shape(x, c_lead, name)
    rows = x.expand(*batch, x.shape[-1]).reshape(-1, x.shape[-1])
    n = len(c_lead)
    if c_lead.numel() == 1:
        # one context for every row: its parameters broadcast in the elementwise ops, uncopied
        return rows, cast(Params, tuple(None if p is None else p.reshape(1, *p.shape[n:]) for p in params)), batch
    return rows, cast(Params, tuple(None if p is None else p.expand(*batch, *p.shape[n:]).reshape(-1, *p.shape[n:])
                                    for p in params)), batch


def _batch_shape(x: torch.Tensor, context_shape: torch.Size, name: str) -> torch.Size:
    """The leading shape ``x`` (..., D) and a context of leading shape ``context_shape`` broadcast to;
    ``ValueError`` naming ``name`` where they do not."""
    try:
        return torch.broadcast_shapes(x.shape[:-1], context_shape)
    except RuntimeError:
        raise ValueError(f"{name}'s leading shape {tuple(x.shape[:-1])} and the context's {tuple(context_shape)} "
                         f"do not broadcast against each other") from None


def labelled_rows(x: torch.Tensor, labels: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Size]:
    """``x`` (..., D) and class ``labels`` (...) broadcast over their leading shapes: the rows (B, D),
    each row's label (B,) and the broadcast leading shape."""
    batch = _batch_shape(x, labels.shape, name)
    return x.expand(*batch, x.shape[-1]).reshape(-1, x.shape[-1]), labels.expand(batch).reshape(-1), batch


def group_rows(x: torch.Tensor, labels: torch.Tensor, params_of: Callable[[torch.Tensor], Params],
               name: str, per_row: bool = True) -> RowPlan:
    """``x`` (..., D) and class ``labels`` (...) broadcast over their leading shapes, as rows sorted
    by label: the :class:`RowPlan` whose knot tables are one per label present, ``params_of(unique
    labels)``, and whose log-scales and shifts are each row's (``per_row=False``: one per label
    present, as the knots). One label for every row gives that label's tables (1, ...) unsorted."""
    rows, flat, batch = labelled_rows(x, labels, name)
    if labels.numel() == 1 and rows.shape[0]:  # one label for every row: nothing to sort
        present = labels.reshape(1)
        return RowPlan(rows, params_of(present), batch, RowGroups(present.tolist(), [rows.shape[0]]))
    present, group, counts = torch.unique(flat, sorted=True, return_inverse=True, return_counts=True)
    if present.numel() == 0:
        return RowPlan(rows, params_of(present), batch)
    if present.numel() == 1:  # one group as it stands, the label's parameters (1, ...) broadcast over the rows
        return RowPlan(rows, params_of(present), batch, RowGroups(present.tolist(), [rows.shape[0]]))
    log_scale, shift, knots = params_of(present)
    order = torch.argsort(group, stable=True)
    if per_row:
        sorted_group = group.index_select(0, order)
        log_scale, shift = log_scale.index_select(0, sorted_group), shift.index_select(0, sorted_group)
    return RowPlan(rows.index_select(0, order), (log_scale, shift, knots), batch,
                   RowGroups(present.tolist(), counts.tolist()), order)


def spline_rows(
    h: torch.Tensor, knots: torch.Tensor, spline: Optional[tuple[int, float]], inverse: bool = False,
    groups: Optional[RowGroups] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A spline activation (or its inverse) of a flow of spline size ``spline = (bins, bound)``, each
    row with its own knot tables ``knots`` (B or 1, 3, D, bins + 1) (one block's of the context's
    :data:`Params`, taken by ``unbind``): rows ``h`` (B, D) -> the values (B, D) and ``log|det|``
    (B,); with ``groups``, tables (G, ...) of which table ``g`` serves the rows of group ``g``.

    One context for every row (tables (1, ...)) is an unconditional spline, and takes its passes
    (:func:`~lunet.spline.spline_pass`: the fast ones where autograd allows), as do groups of
    rows, all at once; a table per row the plain differentiable formulas. The tables are split by
    ``unbind``, whose backward stacks the gradients, where indexing would scatter each into zeros."""
    assert spline is not None  # knot tables are a spline flow's
    if groups is not None:
        return spline_pass(h, *_three(knots.unbind(1)), spline[1], inverse, groups.counts)
    if knots.shape[0] == 1:
        return spline_pass(h, *_three(knots[0].unbind(0)), spline[1], inverse)
    return (spline_inverse_plain if inverse else spline_forward_plain)(h, *_three(knots.unbind(-3)), spline[1])


def _three(tables: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Knots in x, in y and the slopes there, from the three tables ``unbind`` gave."""
    xk, yk, dk = tables
    return xk, yk, dk


class ConditionalFlowDistribution(FlowDistributionBase):
    """``p(. | c)`` of a :class:`~lunet.ConditionalLUNet` or its frozen copy for a fixed context ``c``: ``flow(c)`` or
    ``flow.distribution(c)``.

    ``batch_shape`` is the context's leading shape, ``event_shape`` is ``(features,)``.
    ``log_prob`` takes values (..., features) whose leading shape broadcasts with the batch
    shape and returns ``log p(x | c)`` (...); ``sample`` and ``rsample`` return ``sample_shape +
    batch_shape + (features,)``. It holds the flow and the context (not copies) and computes
    from the current weights on every call. ``validate_args`` as for
    :class:`~lunet.FlowDistribution`: off, nothing is checked, lunet's value checks included.
    """

    def __init__(
        self, flow: ConditionalDensity, context: torch.Tensor, temperature: float = 1.0,
        validate_args: Optional[bool] = None,
    ) -> None:
        self.flow = flow
        self.context = context
        self.temperature = check_temperature(temperature, flow.reference().dtype)
        self.has_rsample = isinstance(flow, nn.Module)
        super().__init__(batch_shape=flow.context_shape(context), event_shape=torch.Size([flow.features]),
                         validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log p(value | c)`` in nats, (..., features) -> (...) broadcast with ``batch_shape``."""
        if self._validate_args and value_checks_enabled():
            self._validate_sample(value)
        with self._checks():
            z, logdet = self.flow(value, self.context)
        t = self.temperature
        if t == 1.0:
            return standard_normal_log_prob(z) + logdet
        d = self.flow.features
        return -0.5 * (torch.linalg.vecdot(z, z) / t**2 + d * LOG_2PI) - d * math.log(t) + logdet

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> torch.Tensor:
        """Draws ``sample_shape + batch_shape + (features,)``, differentiable in the flow's weights
        (``NotImplementedError`` over a frozen flow, which computes without autograd)."""
        with self._checks():
            return self.flow.rsample(sample_shape, self.context, self.temperature)

    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> torch.Tensor:
        """Draws ``sample_shape + batch_shape + (features,)``, without gradients."""
        with self._checks():
            return self.flow.sample(sample_shape, self.context, self.temperature)

    def __repr__(self) -> str:
        return (f"ConditionalFlowDistribution(features={self.flow.features}, batch_shape={tuple(self.batch_shape)}, "
                f"temperature={self.temperature:g})")
