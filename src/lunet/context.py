"""The context side of a conditional flow: contexts checked and embedded, and the context network's
output read as each block's parameters.

A context is a vector (..., context_features), standardised by a fixed ``Standardize``; an integer
class label (...), embedded by a learned ``nn.Embedding``; or anything an embedding network of the
user's maps to (..., context_features).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch
from torch import nn

from lunet.checks import check_features, value_checks_enabled
from lunet.conditional_density import Params
from lunet.limits import check_positive_int
from lunet.spline import IDENTITY_SLOPE, knot_tables
from lunet.standardize import Standardize

__all__ = ["ContextInput", "context_network", "label_rows", "read_params"]


def context_network(context_features: int, hidden: int | Sequence[int], outputs: int) -> nn.Sequential:
    """The network of the (embedded) context: hidden layers of widths ``hidden`` (an int: two of that
    width) with SiLU (smooth, so higher derivatives exist), then a linear layer to ``outputs`` that
    starts at zero, so a new flow is the same for every context."""
    widths = (hidden, hidden) if isinstance(hidden, int) else tuple(hidden)
    layers: list[nn.Module] = []
    width_in = context_features
    for width in widths:
        layers += [nn.Linear(width_in, check_positive_int(width, "hidden")), nn.SiLU()]
        width_in = width
    last = nn.Linear(width_in, outputs)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


def read_params(out: torch.Tensor, num_blocks: int, features: int, max_log_scale: float,
                spline: Optional[tuple[int, float]]) -> Params:
    """The context network's output (..., outputs) read as a conditional LU-Net's :data:`Params`: per
    block a shift and a log-scale ``m * tanh(raw / m)`` (``m = max_log_scale``, so no context scales a
    feature by more than ``exp(m)`` per block), each (..., num_blocks, features); then, for
    ``spline = (bins, bound)``, each activation's knot tables (..., num_blocks - 1, 3, features, bins + 1)
    from its widths, heights and knot slopes (zero outputs give the identity), else None."""
    affine_width = num_blocks * 2 * features
    affine = out[..., :affine_width].unflatten(-1, (num_blocks, 2, features))
    log_scale, shift = max_log_scale * torch.tanh(affine[..., 1, :] / max_log_scale), affine[..., 0, :]
    if spline is None or num_blocks == 1:  # one block: no activation
        return log_scale, shift, None
    bins, bound = spline
    raw = out[..., affine_width:].unflatten(-1, (num_blocks - 1, features, 3 * bins - 1))
    tables = knot_tables(raw[..., :bins], raw[..., bins:2 * bins], raw[..., 2 * bins:] + IDENTITY_SLOPE, bound)
    return log_scale, shift, torch.stack(tables, dim=-3)


def label_rows(per_class: Params, labels: torch.Tensor) -> Params:
    """Each label's row of the per-class :data:`Params` ``per_class`` (num_classes, ...): labels (...)
    -> :data:`Params` (..., ...). ``index_select`` of contiguous tables rather than indexing: several
    times faster, and its backward adds each row's gradient into its class's."""
    flat = labels.reshape(-1)

    def rows(table: torch.Tensor) -> torch.Tensor:
        return table.contiguous().index_select(0, flat).view(*labels.shape, *table.shape[1:])

    log_scale, shift, knots = per_class
    return rows(log_scale), rows(shift), None if knots is None else rows(knots)


class ContextInput:
    """:meth:`embed`, :meth:`context_shape` and the context's :data:`Params` (:meth:`_params`) of a
    conditional flow, over its ``context_features``, ``num_classes`` with ``label_embedding``
    (labels), ``embedding`` (a network of raw contexts), ``context_standardize`` (vectors),
    ``reference()`` (the dtype and device contexts must share), and the ``conditioner`` network
    whose output :func:`read_params` reads for ``num_blocks`` blocks of ``features``."""

    context_features: int
    num_classes: Optional[int]
    label_embedding: Optional[nn.Embedding]
    embedding: Optional[nn.Module]
    context_standardize: Standardize
    conditioner: nn.Module
    max_log_scale: float
    spline: Optional[tuple[int, float]]

    if TYPE_CHECKING:  # the flow's sizes, as it defines them
        @property
        def features(self) -> int: ...

        @property
        def num_blocks(self) -> int: ...

    def reference(self) -> torch.Tensor:
        raise NotImplementedError

    def describe_context(self) -> str:
        """The kind of context, as messages name it."""
        return (f"{self.num_classes} classes" if self.num_classes is not None
                else "an embedding network" if self.embedding is not None
                else f"contexts of width {self.context_features}")

    def _init_context(self, context_features: int, num_classes: Optional[int], embedding: Optional[nn.Module]) -> None:
        """Checks the context's settings and makes its parts (called by the flow's ``__init__``)."""
        self.context_features = check_positive_int(context_features, "context_features")
        if num_classes is not None and embedding is not None:
            raise ValueError("give num_classes (integer labels, embedded inside) or an embedding network, not both")
        if embedding is not None and not isinstance(embedding, nn.Module):
            raise TypeError(f"embedding must be an nn.Module, got {type(embedding).__name__}")
        self.num_classes = None if num_classes is None else check_positive_int(num_classes, "num_classes")
        self.label_embedding = None if num_classes is None else nn.Embedding(num_classes, context_features)
        self.embedding = embedding
        # fitted by standardize(data, context) for vector contexts; the identity otherwise
        self.context_standardize = Standardize(context_features)

    def embed(self, c: object) -> torch.Tensor:
        """The context ``c`` checked and embedded: (..., context_features), in the flow's dtype.

        Vector contexts (..., context_features) are standardised (see :meth:`standardize`);
        labels (...) go through the label embedding, raw contexts through ``embedding``."""
        ref = self.reference()
        if self.label_embedding is not None:
            return self.label_embedding(self._labels(c, ref))
        if self.embedding is not None:
            if not isinstance(c, torch.Tensor):
                raise TypeError(f"context must be a torch.Tensor for the embedding network, got {type(c).__name__}")
            if c.is_floating_point():
                check_features(c, None, "context", like=ref)
            out = self.embedding(c)
            if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[-1] != self.context_features:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"the embedding network must return (..., {self.context_features}), got {got} "
                                 f"from a context of shape {tuple(c.shape)}")
            return out
        c = check_features(c, self.context_features, "context", like=ref)
        return self.context_standardize.forward_rows(c)[0]

    def _labels(self, c: object, ref: torch.Tensor) -> torch.Tensor:
        if isinstance(c, int) and not isinstance(c, bool):
            c = torch.tensor(c, device=ref.device)
        if not isinstance(c, torch.Tensor) or c.is_floating_point() or c.is_complex() or c.dtype == torch.bool:
            what = f"{c.dtype} tensor" if isinstance(c, torch.Tensor) else type(c).__name__
            raise TypeError(f"context must be integer class labels of shape (...) in [0, {self.num_classes}), "
                            f"got a {what}; convert labels with .long()")
        if c.device != ref.device:
            raise ValueError(f"context is on {c.device} but the model is on {ref.device}; "
                             f"move the labels with .to({str(ref.device)!r})")
        assert self.num_classes is not None  # reached only with a label embedding, which comes with num_classes
        if value_checks_enabled() and c.numel() and bool(((c < 0) | (c >= self.num_classes)).any()):
            lo, hi = int(c.min()), int(c.max())
            raise ValueError(f"context labels must lie in [0, {self.num_classes}), got values from {lo} to {hi}")
        return c

    def context_shape(self, c: object) -> torch.Size:
        """The leading (batch) shape of the context ``c``: ``c.shape`` for labels, ``c.shape[:-1]`` for
        vectors, the embedding's output's leading shape for raw contexts (one pass, no gradients)."""
        if self.label_embedding is not None:
            return self._labels(c, self.reference()).shape
        if self.embedding is not None:
            with torch.no_grad():
                return self.embed(c).shape[:-1]
        return check_features(c, self.context_features, "context", like=self.reference()).shape[:-1]

    def _params(self, c: object) -> Params:
        """The context's :data:`Params` (:func:`~lunet.context.read_params` of the context network's output).

        Labels outnumbering the classes take the network once per class and each row its class's
        parameters (:func:`~lunet.context.label_rows`): the same values, at a fraction of the work."""
        if self.num_classes is not None:
            labels = self._labels(c, self.reference())
            if labels.numel() > self.num_classes:
                return label_rows(self._class_params(), labels)
        return self._read(self.embed(c))

    def _class_params(self) -> Params:
        """The :data:`Params` of every class (num_classes, ...), in label order: the context network of
        each class's embedding (a flow of class labels only)."""
        assert self.label_embedding is not None  # called for flows of class labels only
        return self._read(self.label_embedding.weight)

    def _read(self, embedded: torch.Tensor) -> Params:
        return read_params(self.conditioner(embedded), self.num_blocks, self.features, self.max_log_scale,
                           self.spline)
