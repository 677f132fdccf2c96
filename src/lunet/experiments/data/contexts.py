"""The condition of a run on own data: how its context file is read, and its checks against the data.

A run of ``p(x | c)`` (``lunet train --data X --context C``) reads its contexts as
another file of rows, one context row per data row. The rules are chosen once,
from the training contexts, and recorded in ``run.json``, so that evaluation and
sampling read every context file as training did:

- ``labels``: one column of whole numbers, class labels ``0 .. num_classes - 1``
  (``num_classes`` is one more than the largest training label), embedded inside
  the flow;
- ``vectors``: any numbers, standardised (no Jacobian: the context is not
  modelled) before the flow's context network.

``"auto"`` takes one column of whole numbers from 0 to below
:data:`~lunet.experiments.config.presets.MAX_AUTO_CLASSES` for labels, anything else
for vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from lunet.experiments.config.errors import SettingError
from lunet.experiments.config.presets import CONTEXT_KINDS, MAX_AUTO_CLASSES, MAX_LABEL_EMBEDDING

__all__ = ["ContextRules", "check_rows"]


def check_rows(context: torch.Tensor, data: torch.Tensor | int, context_name: str, data_name: str) -> None:
    """``ValueError`` naming both when ``context`` and ``data`` (rows, or their number) do not hold one
    row each for the other."""
    m, n = context.shape[0], data if isinstance(data, int) else data.shape[0]
    if m != n:
        raise ValueError(f"{context_name} has {m:,} row{'' if m == 1 else 's'}, {data_name} has {n:,}: "
                         f"give one context row per data row")


@dataclass
class ContextRules:
    """The context's ``width`` (columns as given), its ``kind`` (``"labels"`` or ``"vectors"``), the
    number of classes of labels (None for vectors) and the header's names (or None)."""

    width: int
    kind: str
    num_classes: Optional[int] = None
    names: Optional[list[str]] = None

    @classmethod
    def choose(cls, context: torch.Tensor, kind: str = "auto", names: Optional[list[str]] = None,
               name: str = "context") -> "ContextRules":
        """The rules of the training contexts ``context`` (N, width) float64: ``kind`` one of
        :data:`~lunet.experiments.config.presets.CONTEXT_KINDS`; labels number their classes from the
        largest training label. ``SettingError`` naming ``name`` for labels that are not whole
        numbers from 0 in one column, and for a constant column of vectors."""
        if kind not in CONTEXT_KINDS:
            raise ValueError(f"context_kind must be one of {CONTEXT_KINDS}, got {kind!r}")
        width = context.shape[1]
        whole = bool((context == context.round()).all()) and bool((context >= 0).all())
        if kind == "auto":
            kind = "labels" if width == 1 and whole and float(context.max()) < MAX_AUTO_CLASSES else "vectors"
        if kind == "labels":
            if width != 1:
                raise SettingError("{name} has {width} columns; class labels are one column of whole numbers "
                                   "(give {context_kind} vectors for contexts of several numbers)",
                                   name=name, width=width)
            _check_labels(context, name, None)
            return cls(width, "labels", int(context.max()) + 1, names)
        spread = context.max(dim=0).values > context.min(dim=0).values
        if not bool(spread.all()):
            column = int((~spread).nonzero()[0, 0])
            shown = f"{names[column]!r}" if names else f"column {column}"
            raise SettingError("{name}: context {shown} holds one value in every training row, so it tells the rows "
                               "nothing apart; drop it from the contexts", name=name, shown=shown)
        return cls(width, "vectors", None, names)

    @property
    def features(self) -> int:
        """The flow's ``context_features``: the context's width, or the labels' embedding width."""
        return self.width if self.num_classes is None else min(self.num_classes, MAX_LABEL_EMBEDDING)

    def check(self, context: torch.Tensor, name: str) -> torch.Tensor:
        """``context`` (N, width) float64 checked against the run's rules: its width, and labels whole
        numbers of the run's classes; ``ValueError`` naming ``name`` and the figure. Returns it."""
        if context.shape[1] != self.width:
            raise ValueError(f"{name} has {context.shape[1]} column{'' if context.shape[1] == 1 else 's'} per row "
                             f"but the run's contexts have {self.width}")
        if self.kind == "labels":
            _check_labels(context, name, self.num_classes)
        return context

    def to_model(self, context: torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Context rows (B, width) float64 -> the flow's contexts: labels (B,) int64, vectors (B, width)
        in ``dtype``, on ``device``."""
        if self.kind == "labels":
            return context[:, 0].to(device=device, dtype=torch.int64)
        return context.to(device=device, dtype=dtype)

    def design(self, context: torch.Tensor) -> torch.Tensor:
        """The regressors of the conditional Gaussian (N, P) float64: labels one-hot (P = num_classes),
        vectors as they are (P = width)."""
        if self.kind == "labels":
            assert self.num_classes is not None  # labels always number their classes
            return torch.nn.functional.one_hot(context[:, 0].long(), self.num_classes).double()
        return context.double()

    @property
    def design_width(self) -> int:
        if self.kind == "labels":
            assert self.num_classes is not None  # labels always number their classes
            return self.num_classes
        return self.width

    def describe(self) -> str:
        """A line for the console on how the contexts are read."""
        if self.kind == "labels":
            assert self.num_classes is not None  # labels always number their classes
            return (f"contexts: class labels 0..{self.num_classes - 1} (one column of whole numbers), embedded in "
                    f"{self.features} dimensions")
        return f"contexts: vectors of width {self.width}, standardised before the context network"

    def entries(self) -> dict[str, Any]:
        """As ``run.json`` holds them."""
        return {"width": self.width, "kind": self.kind, "num_classes": self.num_classes, "names": self.names}

    @classmethod
    def from_entries(cls, entries: Any) -> "ContextRules":
        """The rules ``run.json`` holds; ``ValueError`` saying what is wrong."""
        if not isinstance(entries, dict) or set(entries) != {"width", "kind", "num_classes", "names"}:
            raise ValueError(f"context must be a mapping of width, kind, num_classes and names, got {entries!r}")
        width, kind, classes, names = (entries[k] for k in ("width", "kind", "num_classes", "names"))
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"context.width must be a positive integer, got {width!r}")
        if kind not in ("labels", "vectors"):
            raise ValueError(f"context.kind must be 'labels' or 'vectors', got {kind!r}")
        if kind == "labels" and not (width == 1 and isinstance(classes, int) and not isinstance(classes, bool)
                                     and classes >= 1):
            raise ValueError(f"context of labels must be one column with a positive num_classes, got width {width!r} "
                             f"and num_classes {classes!r}")
        if kind == "vectors" and classes is not None:
            raise ValueError(f"context of vectors has no num_classes, got {classes!r}")
        if names is not None and not (isinstance(names, list) and len(names) == width
                                      and all(isinstance(n, str) for n in names)):
            raise ValueError(f"context.names must be None or {width} strings")
        return cls(width, kind, classes, names)


def _check_labels(context: torch.Tensor, name: str, num_classes: Optional[int]) -> None:
    """``ValueError`` naming ``name``, the row and the value of the first label that is not a whole
    number in ``0 .. num_classes - 1`` (any whole number from 0 without ``num_classes``)."""
    labels = context[:, 0]
    bad = (labels != labels.round()) | (labels < 0)
    if num_classes is not None:
        bad |= labels >= num_classes
    if bool(bad.any()):
        row = int(bad.nonzero()[0, 0])
        classes = f"the run's classes 0..{num_classes - 1}" if num_classes is not None else "whole numbers from 0"
        raise ValueError(f"{name}: class labels must be {classes}; row {row} holds {float(labels[row]):g} "
                         f"({int(bad.sum()):,} such row{'' if int(bad.sum()) == 1 else 's'})")
