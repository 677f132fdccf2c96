"""A frozen conditional LU-Net (:meth:`lunet.ConditionalLUNet.frozen`): density, inverse and
sampling from fixed weights without autograd, one dense product per block whatever the contexts."""

from __future__ import annotations

import copy
import threading
from typing import TYPE_CHECKING, Iterable, NamedTuple, Optional, Sequence, Union, cast, overload

import torch
from torch import nn

from lunet.checks import check_features, plain_ops_wanted, sample_shape_of
from lunet.conditional_density import (
    ConditionalDensity,
    ConditionalFlowDistribution,
    Params,
    RowGroups,
    group_rows,
    labelled_rows,
    spline_rows,
)
from lunet.context import label_rows
from lunet.fast import native
from lunet.fast.activation import negated_forward, scaled_forward
from lunet.fast.spline import grouped_passes, labelled_passes
from lunet.fast.spline_tables import BinTables
from lunet.frozen import FrozenLUNet, under_vmap
from lunet.functional import leaky_softplus, leaky_softplus_inverse, leaky_softplus_log_derivative, solve_scaled
from lunet.latent import latent_draws

if TYPE_CHECKING:
    from lunet.conditional import ConditionalLUNet
    from lunet.layers import LULinear

__all__ = ["scale_rows", "RowLabels", "Rows", "GATHERED_SHAPES", "gathered", "LabelAffine", "per_class_tables",
           "FoldedPasses", "FrozenConditionalLUNet"]


def scale_rows(h: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, groups: Optional[Rows],
               inverse: bool = False) -> torch.Tensor:
    """``h * scale + shift``, in place, or (``inverse``) ``(h - shift) * scale``, a new tensor: rows
    ``h`` (B, D) and ``scale``, ``shift`` (B or 1, D), or with ``groups`` one per group (G, D), each
    applied to its group's consecutive rows (where per-row copies of them would cost more than the
    work); with :class:`RowLabels` the scales and shifts are the rows' own."""
    if not isinstance(groups, RowGroups) or scale.shape[0] in (1, h.shape[0]):
        return (h - shift) * scale if inverse else h.mul_(scale).add_(shift)
    h = h.clone() if inverse else h
    for part, s, t in zip(h.split(groups.counts), scale, shift):
        part.sub_(t).mul_(s) if inverse else part.mul_(s).add_(t)
    return h


class RowLabels(NamedTuple):
    """Rows in the batch's order, each with its class label (B,) int64 (checked in range): the compiled
    spline loops read each row's tables by it."""

    labels: torch.Tensor


# how the passes' rows come: grouped by label, or each with its label
Rows = Union[RowGroups, RowLabels]


# Each thread's buffers for the rows' scales and shifts, kept between calls (a few shapes): a fresh
# buffer of a large batch costs the allocator's page faults at every call, a kept one nothing. Their
# contents never outlive a pass.
_GATHERED = threading.local()
GATHERED_SHAPES = 8


def gathered(table: torch.Tensor, labels: torch.Tensor, slot: int) -> torch.Tensor:
    """``table`` (num_blocks, num_classes, D) read at ``labels`` (B,): (num_blocks, B, D), written
    into this thread's kept buffer ``slot`` of that shape (valid until its next use)."""
    kept: dict = getattr(_GATHERED, "kept", None) or {}
    key = (slot, table.shape[0], labels.shape[0], table.shape[2], table.dtype, table.device)
    buffer = kept.get(key)
    if buffer is None:
        if len(kept) >= GATHERED_SHAPES:
            kept.clear()
        buffer = kept[key] = table.new_empty(table.shape[0], labels.shape[0], table.shape[2])
        _GATHERED.kept = kept
    return torch.index_select(table, 1, labels, out=buffer)


class LabelAffine(NamedTuple):
    """The context maps of every class, formed once: scales ``exp(log_scale)``, their inverses,
    shifts and negated shifts, each block-major (num_blocks, num_classes, D), so that each block's
    rows come out contiguous, and each class's sum of log-scales (num_classes,)."""

    scale: torch.Tensor
    inv_scale: torch.Tensor
    shift: torch.Tensor
    neg_shift: torch.Tensor
    log_scale_sum: torch.Tensor

    @classmethod
    def of(cls, log_scale: torch.Tensor, shift: torch.Tensor) -> "LabelAffine":
        """From the classes' log-scales and shifts (num_classes, num_blocks, D)."""
        def block_major(t: torch.Tensor) -> torch.Tensor:
            return t.transpose(0, 1).contiguous()

        return cls(block_major(torch.exp(log_scale)), block_major(torch.exp(-log_scale)), block_major(shift),
                   block_major(-shift), log_scale.sum(dim=(-2, -1)))

    @staticmethod
    def by_class(table: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """A table's rows of ``labels`` (G,), class-major (G, num_blocks, D), contiguous: the rows' reads
        from it (``index_select``) take a slow path over a transposed view."""
        return table.index_select(1, labels).transpose(0, 1).contiguous()


def per_class_tables(
    flow: ConditionalLUNet,
) -> tuple[Optional[Params], Optional[LabelAffine], Optional[list[BinTables]]]:
    """For a flow of class labels: every class's :data:`Params` (num_classes, ...), the same as
    :class:`LabelAffine`, and with splines each block's per-bin tables of every class, stacked (a row
    of label ``c`` reads part ``c``); None for what the flow does not have. A label's parameters are
    the same at every call, so a frozen flow forms them once."""
    if flow.label_embedding is None:
        return None, None, None
    params = cast(Params, tuple(None if p is None else p.contiguous() for p in flow._class_params()))
    knots = params[2]
    tables = None
    if knots is not None and flow.spline is not None:
        tables = [BinTables.stacked(knots[:, i, 0], knots[:, i, 1], knots[:, i, 2], flow.spline[1])
                  for i in range(knots.shape[1])]
    return params, LabelAffine.of(params[0], params[1]), tables


class FoldedPasses:
    """The passes of a frozen conditional flow with leaky-softplus activations: the frozen unconditional flow
    ``shared`` of the same LU layers lends its folded products (:meth:`~lunet.frozen.FrozenLUNet._forward_plan`,
    which return negated pre-activations but the last, and :meth:`~lunet.frozen.FrozenLUNet._inverse_plan`),
    and the context's affine maps sit between them and its fused activations."""

    def __init__(self, shared: FrozenLUNet) -> None:
        self.shared = shared

    def forward(
        self, x: torch.Tensor, scale: Sequence[torch.Tensor], neg_shift: Sequence[torch.Tensor],
        log_scale_sum: torch.Tensor, exact: Optional[bool] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``x`` (B, D), each block's scales and negated shifts (B or 1, D) and the rows' sums of
        log-scales (B or 1,) -> ``z`` (B, D), ``log|det dz/dx|`` (B,). ``exact``: the activations'
        exact formulas rather than the fast ones (which redo the batch exactly where out of range);
        by default where the frozen flow runs free of host syncs."""
        exact = self.shared.sync_free if exact is None else exact
        layers, alphas, const = self.shared._forward_plan()
        logdet = log_scale_sum.add(const)
        u = layers[0](x)
        q, scratch, in_range = torch.empty_like(u), torch.empty_like(u), None
        for i, (layer, a) in enumerate(zip(layers[1:], alphas)):
            # u holds -(x A^T + b) of block i: -(pre-activation) = u s - t
            v = torch.addcmul(neg_shift[i], u, scale[i], out=scratch)
            if exact:
                g, ld = scaled_forward(v.neg_(), a)
                torch.neg(g, out=q)
            else:
                ld, ok = negated_forward(v, a, out=q, scratch=u)
                in_range = ok if in_range is None else in_range.logical_and_(ok)
            logdet = logdet + ld
            layer(q, out=u)
        if not exact and in_range is not None and not bool(in_range):
            return self.forward(x, scale, neg_shift, log_scale_sum, exact=True)
        last = len(layers) - 1
        return u.mul_(scale[last]).sub_(neg_shift[last]), logdet.expand(x.shape[0])

    def inverse(
        self, z: torch.Tensor, inv_scale: Sequence[torch.Tensor], shift: Sequence[torch.Tensor],
        log_scale_sum: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``z`` (B, D), each block's inverse scales and shifts (B or 1, D) and the rows' sums of
        log-scales (B or 1,) -> ``x`` (B, D), ``log|det dx/dz|`` (B,): the context's maps undone before
        each folded inverse product, and the tabled activation inverses."""
        layers, alphas, tables = self.shared._inverse_plan()
        last = len(layers) - 1
        # scratch buffers pay from a moderate batch on
        work: Optional[dict[str, torch.Tensor]] = {} if z.shape[0] >= 64 else None
        h = layers[0]((z - shift[last]).mul_(inv_scale[last]))
        logdet = None
        for k, (layer, a, table) in enumerate(zip(layers[1:], alphas, tables)):
            x = solve_scaled(h, a, work, table=table)  # overwrites h
            ld = leaky_softplus_log_derivative(x, a).sum(dim=-1)
            logdet = ld if logdet is None else logdet.add_(ld)
            i = last - 1 - k  # the block whose context map is undone next
            h = layer(x.sub_(shift[i]).mul_(inv_scale[i]), out=h)
        const = self.shared._inverse_log_det_constant() - log_scale_sum
        return h, (const if logdet is None else const - logdet).expand(z.shape[0])


class FrozenConditionalLUNet(ConditionalDensity):
    """A frozen copy of a :class:`ConditionalLUNet` for fast inference, made by
    :meth:`ConditionalLUNet.frozen`: the same ``forward(x, c)``, ``inverse(z, c)``, ``log_prob``,
    ``sample`` and ``distribution(c)`` (``flow(c)``), without autograd.

    Every block's dense ``A = L U`` and ``A^{-1}`` (formed in float64 from the triangular factors)
    are computed once, so each pass costs one dense product per block whatever the contexts; the
    context side (label embedding, embedding network, context network) is a copy in eval mode.
    It never reads the flow again: call ``frozen()`` again after training further.
    """

    features: int

    def __init__(self, flow: ConditionalLUNet) -> None:
        with torch.no_grad():
            for block in cast("Iterable[LULinear]", flow.blocks):
                block.check_invertible()
            self._flow = copy.deepcopy(flow).eval().requires_grad_(False)
            blocks = cast("Iterable[LULinear]", self._flow.blocks)
            self.weights, self.inverses, self.biases = [], [], []
            for block in blocks:
                lower, upper = block.matrix_l().double(), block.matrix_u().double()
                eye = torch.eye(lower.shape[0], dtype=torch.float64, device=lower.device)
                l_inv = torch.linalg.solve_triangular(lower, eye, upper=False, unitriangular=True)
                inverse = torch.linalg.solve_triangular(upper, l_inv, upper=True)
                self.weights.append((lower @ upper).to(block.lu.dtype).t().contiguous())  # x A^T = x @ this
                self.inverses.append(inverse.to(block.lu.dtype).t().contiguous())
                self.biases.append(block.bias.detach().clone())
            standardize = self._flow.input_standardize
            self.mean, self.std = standardize.mean.clone(), standardize.std.clone()
            self.log_abs_det = sum(block.log_abs_det() for block in blocks) - torch.log(self.std).sum()
            # the frozen unconditional flow of the same LU layers lends its folded matrices: the context's
            # affine maps sit between its products and its activations (the leaky softplus's; splines
            # whose knots change with the context run block by block)
            self._folded: Optional[FoldedPasses] = None
            if self._flow.spline is None:
                flow_parts: list[nn.Module] = [self._flow.input_standardize]
                for i, block in enumerate(blocks):
                    flow_parts += [block] if i == 0 else [self._flow.activation, block]
                self._folded = FoldedPasses(FrozenLUNet(flow_parts))
            self._label_params, self._label_affine, self._label_tables = per_class_tables(self._flow)
        self.alpha = self._flow.activation._fixed_alpha
        self.spline = self._flow.spline
        self.features = self._flow.features
        self.context_features = self._flow.context_features
        self.num_classes = self._flow.num_classes

    @property
    def dtype(self) -> torch.dtype:
        return self.std.dtype

    @property
    def device(self) -> torch.device:
        return self.std.device

    def reference(self) -> torch.Tensor:
        """The tensor whose dtype and device inputs and vector contexts must share."""
        return self.std

    def context_shape(self, c: object) -> torch.Size:
        """The context's leading (batch) shape, as :meth:`ConditionalLUNet.context_shape`."""
        return self._flow.context_shape(c)

    def forward_rows(
        self, x: torch.Tensor, log_scale: torch.Tensor, shift: torch.Tensor, knots: Optional[torch.Tensor] = None,
        groups: Optional[RowGroups] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`ConditionalLUNet.forward_rows`: the frozen unconditional flow's folded products
        (:meth:`~lunet.frozen.FrozenLUNet._forward_plan`, which return negated pre-activations
        but the last) with the context's affine maps between them and its fused activations."""
        if under_vmap() or self._folded is None:
            return self.plain_forward_rows(x, log_scale, shift, knots, groups)
        return self._folded.forward(x, torch.exp(log_scale).unbind(1), shift.neg().unbind(1),
                                    log_scale.sum(dim=(-2, -1)))

    def plain_forward_rows(
        self, x: torch.Tensor, log_scale: torch.Tensor, shift: torch.Tensor, knots: Optional[torch.Tensor] = None,
        groups: Optional[RowGroups] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward_rows` in plain ops, block by block (under ``torch.func.vmap``, and for splines)."""
        return self._scaled_forward_rows(x, torch.exp(log_scale), shift, log_scale.sum(dim=(-2, -1)), knots, groups)

    def _scaled_forward_rows(
        self, x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, log_scale_sum: torch.Tensor,
        knots: Optional[torch.Tensor] = None, groups: Optional[Rows] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`plain_forward_rows` from the scales ``exp(log_scale)`` and the sums of log-scales (B or 1,);
        ``groups`` may be :class:`RowLabels` (per-row scales and shifts, no knots) for a flow of labels."""
        h = (x - self.mean) / self.std
        logdet = self.log_abs_det + log_scale_sum
        last = len(self.weights) - 1
        for i, (weight, bias) in enumerate(zip(self.weights, self.biases)):
            h = scale_rows(torch.addmm(bias, h, weight), scale[:, i], shift[:, i], groups)
            if i < last and (knots is not None or isinstance(groups, RowLabels)):
                h, ld = self._spline_rows(h, None if knots is None else knots[:, i], i, groups)
                logdet = logdet + ld
            elif i < last:
                logdet = logdet + leaky_softplus_log_derivative(h, self.alpha).sum(dim=-1)
                h = leaky_softplus(h, self.alpha)
        return h, logdet.expand(x.shape[0])

    def inverse_rows(
        self, z: torch.Tensor, log_scale: torch.Tensor, shift: torch.Tensor, knots: Optional[torch.Tensor] = None,
        groups: Optional[RowGroups] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`ConditionalLUNet.inverse_rows`: the context's affine maps undone before each of
        the frozen unconditional flow's folded inverse products
        (:meth:`~lunet.frozen.FrozenLUNet._inverse_plan`), and its tabled activation inverses."""
        if under_vmap() or self._folded is None:
            return self.plain_inverse_rows(z, log_scale, shift, knots, groups)
        return self._folded.inverse(z, torch.exp(-log_scale).unbind(1), shift.unbind(1), log_scale.sum(dim=(-2, -1)))

    def _label_pass(self, x: torch.Tensor, labels: torch.Tensor, name: str,
                    inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The forward (or inverse) pass of ``x`` (..., D) given class ``labels`` (...) checked, each
        row's scales and shifts read from its class's tables (:class:`LabelAffine`) rather than
        exponentiated per row; with splines, each row's tables read by its label in the compiled loops,
        else the rows grouped by label."""
        affine = self._label_affine
        assert affine is not None  # taken by flows of class labels alone
        check_features(x, self.features, name, like=self.std)
        scales = affine.inv_scale if inverse else affine.scale
        stacked = self._label_tables
        if self._folded is not None or (stacked is not None and native.usable(stacked[0].x0) is not None):
            rows, flat, batch = labelled_rows(x, labels, name)
            flat = flat.to(torch.int64).contiguous()  # the compiled loops read one label after another
            sums = affine.log_scale_sum.index_select(0, flat)  # refuses a label out of range, before any loop
            if self._folded is not None:
                # the folded forward adds the shift to the negated pre-activation: it reads the negated shifts
                shifts = affine.shift if inverse else affine.neg_shift
                passes = self._folded.inverse if inverse else self._folded.forward
                out, logdet = passes(rows, gathered(scales, flat, 0).unbind(0), gathered(shifts, flat, 1).unbind(0),
                                     sums)
            else:  # splines by the compiled loops, which read each row's tables by its label: no sort into groups
                scaled = self._scaled_inverse_rows if inverse else self._scaled_forward_rows
                out, logdet = scaled(rows, gathered(scales, flat, 0).transpose(0, 1),
                                     gathered(affine.shift, flat, 1).transpose(0, 1), sums, None, RowLabels(flat))
            return out.view(*batch, self.features), logdet.view(batch)
        knots = cast(Params, self._label_params)[2]  # None for one block, which has no activation
        plan = group_rows(x, labels, lambda present: (affine.by_class(scales, present),
                                                      affine.by_class(affine.shift, present),
                                                      None if knots is None else knots[present]), name, per_row=False)
        groups = plan.groups or RowGroups([], [])  # no groups: an empty batch
        present = torch.tensor(groups.labels, dtype=torch.long, device=self.std.device)
        counts = torch.tensor(groups.counts, dtype=torch.long, device=self.std.device)
        sums = affine.log_scale_sum[present].repeat_interleave(counts)
        scaled = self._scaled_inverse_rows if inverse else self._scaled_forward_rows
        return plan.restore(*scaled(plan.rows, *plan.params[:2], sums, plan.params[2], plan.groups))

    def _by_label_tables(self) -> bool:
        """Whether the passes read each class's tables (:meth:`_label_pass`): class labels, outside
        ``torch.func`` transforms and ``torch.compile``."""
        return (self._label_affine is not None and not under_vmap() and not plain_ops_wanted()
                and not torch.compiler.is_compiling())

    def plain_inverse_rows(
        self, z: torch.Tensor, log_scale: torch.Tensor, shift: torch.Tensor, knots: Optional[torch.Tensor] = None,
        groups: Optional[RowGroups] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`inverse_rows` in plain ops, block by block (under ``torch.func.vmap``, and for splines)."""
        return self._scaled_inverse_rows(z, torch.exp(-log_scale), shift, log_scale.sum(dim=(-2, -1)), knots, groups)

    def _scaled_inverse_rows(
        self, z: torch.Tensor, inv_scale: torch.Tensor, shift: torch.Tensor, log_scale_sum: torch.Tensor,
        knots: Optional[torch.Tensor] = None, groups: Optional[Rows] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`plain_inverse_rows` from the inverse scales ``exp(-log_scale)`` and the sums of
        log-scales (B or 1,)."""
        h, logdet = z, -(self.log_abs_det + log_scale_sum)
        last = len(self.weights) - 1
        for i in range(last, -1, -1):
            if i < last and (knots is not None or isinstance(groups, RowLabels)):
                h, ld = self._spline_rows(h, None if knots is None else knots[:, i], i, groups, inverse=True)
                logdet = logdet + ld
            elif i < last:
                h = leaky_softplus_inverse(h, self.alpha)
                logdet = logdet - leaky_softplus_log_derivative(h, self.alpha).sum(dim=-1)
            h = (scale_rows(h, inv_scale[:, i], shift[:, i], groups, inverse=True) - self.biases[i]) @ self.inverses[i]
        return torch.addcmul(self.mean, h, self.std), logdet.expand(z.shape[0])

    def _spline_rows(self, h: torch.Tensor, knots: Optional[torch.Tensor], block: int, groups: Optional[Rows],
                     inverse: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The spline activation after ``block``, of knot tables ``knots`` ((B, 1 or G), 3, D, bins + 1)
        (:func:`~lunet.conditional_density.spline_rows`), with each label's tables made once where
        the rows come grouped by label; with :class:`RowLabels`, each row through its label's tables by
        the compiled loops."""
        stacked = self._label_tables
        if isinstance(groups, RowLabels):
            assert stacked is not None  # rows come with their labels only to flows of labels and splines
            return labelled_passes(h, stacked[block], groups.labels, inverse)
        assert knots is not None  # the tables of a flow of splines
        if groups is None or stacked is None or under_vmap():
            return spline_rows(h, knots, self.spline, inverse, groups)
        return grouped_passes(h, stacked[block], groups.counts, groups.labels, inverse)

    @overload
    def forward(self, x: torch.Tensor, c: None = None) -> ConditionalFlowDistribution: ...

    @overload
    def forward(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def forward(
        self, x: torch.Tensor, c: Optional[torch.Tensor] = None
    ) -> tuple[torch.Tensor, torch.Tensor] | ConditionalFlowDistribution:
        """``(z, log|det dz/dx|)`` as :meth:`ConditionalLUNet.forward`; ``self(c)``: the distribution."""
        return self.distribution(x) if c is None else self._pass(x, c, inverse=False)

    __call__ = forward

    def inverse(self, z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, log|det dx/dz|)`` as :meth:`ConditionalLUNet.inverse`."""
        return self._pass(z, c, inverse=True)

    @torch.no_grad()
    def _pass(self, x: torch.Tensor, c: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if self._by_label_tables():
            return self._label_pass(x, self._labels(c, self.std), "input", inverse)
        plan = self._rows(x, c, "input")
        rows_pass = self.inverse_rows if inverse else self.forward_rows
        return plan.restore(*rows_pass(plan.rows, *plan.params, groups=plan.groups))

    def _draw(self, sample_shape: int | Sequence[int], c: torch.Tensor, temperature: float,
              generator: Optional[torch.Generator]) -> torch.Tensor:
        if not self._by_label_tables():
            return super()._draw(sample_shape, c, temperature, generator)
        labels = self._labels(c, self.std)
        batch = sample_shape_of(sample_shape) + labels.shape
        z, _ = latent_draws(batch, self.features, temperature, self.std.dtype, self.std.device, generator)
        return self._label_pass(z.view(*batch, self.features), labels, "draws", inverse=True)[0]

    def _params(self, c: object) -> Params:
        if self._label_params is None:
            return self._flow._params(c)
        return label_rows(self._label_params, self._flow._labels(c, self.std))

    def _labels(self, c: object, ref: torch.Tensor) -> torch.Tensor:
        """The class labels ``c`` checked, as the flow checks them."""
        return self._flow._labels(c, ref)

    def rsample(self, *args: object, **kwargs: object) -> torch.Tensor:
        """Refused: a frozen flow computes without autograd; use :meth:`sample`, or the flow itself."""
        raise NotImplementedError("a frozen flow (flow.frozen()) computes without autograd, so its draws carry no "
                                  "gradient: use sample(), or the flow itself for rsample()")

    def __repr__(self) -> str:
        return (f"FrozenConditionalLUNet(features={self.features}, context_features={self.context_features}, "
                f"num_blocks={len(self.weights)}{'' if self.spline is None else ', spline activations'}, "
                f"a frozen copy: later changes to the flow are not seen)")
