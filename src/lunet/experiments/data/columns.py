"""How a run on own data treats its columns: names, constant columns dropped, integer columns dequantised.

The rules are chosen once from the training rows and recorded in the run's
``run.json``, so that evaluation and sampling treat every file as training did:

- ``names``: the training CSV's header, written again at the top of sample CSVs;
- ``dropped``: columns constant over the training rows, dropped when the run is
  asked to (``--drop-constant``) and given back their value in every sample;
- ``integer``: columns that hold whole numbers only. They are dequantised: the
  flow models ``x + u``, ``u ~ U[0, 1)``, whose likelihood bounds the discrete
  one from below, and samples are rounded down to whole numbers again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from lunet.experiments.config.presets import DEQUANTIZE_CHOICES

__all__ = ["ColumnRules"]

# a column of whole numbers is dequantised only when its values span at most this many
# integers per row: beyond it the unit noise is nothing beside the spread (a count of
# thousands, an identifier), and the column is modelled as it is
MAX_LEVELS_PER_ROW = 1.0


@dataclass
class ColumnRules:
    """The columns of the data as given (``width``), those dropped with their constant value, the
    integer ones (indices into the data as given), and the header's names (or None)."""

    width: int
    dropped: dict[int, float] = field(default_factory=dict)
    integer: list[int] = field(default_factory=list)
    names: Optional[list[str]] = None

    @classmethod
    def choose(cls, train: torch.Tensor, drop_constant: bool = False, dequantize: str = "auto",
               names: Optional[list[str]] = None) -> "ColumnRules":
        """The rules for training rows ``train`` (N, width), N >= 2: constant columns dropped if
        ``drop_constant``; with ``dequantize="auto"`` every other column of whole numbers whose
        values span no more integers than there are rows is dequantised."""
        if dequantize not in DEQUANTIZE_CHOICES:
            raise ValueError(f"dequantize must be one of {DEQUANTIZE_CHOICES}, got {dequantize!r}")
        x = train.double()
        constant = (x == x[0]).all(dim=0)
        dropped = {j: float(x[0, j]) for j in constant.nonzero().flatten().tolist()} if drop_constant else {}
        integer: list[int] = []
        if dequantize == "auto":
            whole = (x == x.round()).all(dim=0)
            span = x.max(dim=0).values - x.min(dim=0).values
            levels_fit = span <= MAX_LEVELS_PER_ROW * x.shape[0]
            integer = [j for j in (whole & levels_fit).nonzero().flatten().tolist() if j not in dropped]
        return cls(x.shape[1], dropped, integer, names)

    @property
    def kept(self) -> list[int]:
        """The columns the flow models, in order."""
        return [j for j in range(self.width) if j not in self.dropped]

    @property
    def features(self) -> int:
        """The flow's width: the columns kept."""
        return self.width - len(self.dropped)

    def to_model(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of the data as given (N, width) -> the columns the flow models (N, features)."""
        return x[:, self.kept] if self.dropped else x

    def noise_mask(self) -> Optional[torch.Tensor]:
        """(features,) float64, 1 in the dequantised columns of the flow's input, else None if there are none."""
        if not self.integer:
            return None
        kept = self.kept
        return torch.tensor([1.0 if j in self.integer else 0.0 for j in kept], dtype=torch.float64)

    def dequantized(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The flow's input rows ``x`` (N, features) with U[0, 1) noise added to each integer column:
        drawn from ``generator``, or without one a function of the row's own values alone (so that
        a row scores the same wherever it stands and whatever is scored with it)."""
        mask = self.noise_mask()
        if mask is None:
            return x
        if generator is None:
            noise = row_keyed_uniform(x.double())
        else:
            noise = torch.rand(x.shape, generator=generator, dtype=torch.float64)
        return x + (noise * mask).to(x.dtype)

    def to_data(self, samples: torch.Tensor) -> torch.Tensor:
        """The flow's samples (N, features) -> rows like the data's (N, width): integer columns
        rounded down, dropped columns given their value back."""
        out = samples.double().clone()
        mask = self.noise_mask()
        if mask is not None:
            out = torch.where(mask.bool(), out.floor(), out)
        if not self.dropped:
            return out
        full = torch.empty(out.shape[0], self.width, dtype=out.dtype)
        full[:, self.kept] = out
        for j, value in self.dropped.items():
            full[:, j] = value
        return full

    def describe(self) -> list[str]:
        """Lines for the console on what the rules do, empty when they do nothing."""
        lines = []
        if self.dropped:
            shown = ", ".join(f"{self.column_name(j)} (= {v:g})" for j, v in sorted(self.dropped.items()))
            lines.append(f"dropped {len(self.dropped)} constant column(s): {shown}; samples give them their value")
        if self.integer:
            more = ", ..." if len(self.integer) > 8 else ""
            shown = ", ".join(self.column_name(j) for j in self.integer[:8]) + more
            lines.append(f"dequantised {len(self.integer)} column(s) of whole numbers ({shown}): the flow models "
                         f"x + U[0, 1) there, and samples are rounded down")
        return lines

    def column_name(self, j: int) -> str:
        """How messages name column ``j`` of the data as given: its header name, or its index."""
        return f"{self.names[j]!r}" if self.names else f"column {j}"

    def entries(self) -> dict[str, Any]:
        """As ``run.json`` holds them (JSON: keys of ``dropped`` as pairs)."""
        return {"width": self.width, "dropped": [[j, v] for j, v in sorted(self.dropped.items())],
                "integer": list(self.integer), "names": self.names}

    @classmethod
    def from_entries(cls, entries: Any, features: int) -> "ColumnRules":
        """The rules ``run.json`` holds, for a flow of width ``features``; ``ValueError`` saying what is wrong."""
        if not isinstance(entries, dict):
            raise ValueError(f"columns must be a mapping of width, dropped, integer and names, got {entries!r}")
        width, dropped, integer, names = (entries.get(k) for k in ("width", "dropped", "integer", "names"))
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"columns.width must be a positive integer, got {width!r}")
        if not (isinstance(dropped, list) and all(
                isinstance(p, list) and len(p) == 2 and isinstance(p[0], int) and not isinstance(p[0], bool)
                and 0 <= p[0] < width and isinstance(p[1], (int, float)) and not isinstance(p[1], bool)
                for p in dropped)) or len({p[0] for p in dropped}) != len(dropped):
            raise ValueError("columns.dropped must list distinct [column, value] pairs of columns of the data")
        if not (isinstance(integer, list) and all(isinstance(j, int) and not isinstance(j, bool)
                                                  and 0 <= j < width for j in integer)):
            raise ValueError("columns.integer must list columns of the data")
        if names is not None and not (isinstance(names, list) and len(names) == width
                                      and all(isinstance(n, str) for n in names)):
            raise ValueError(f"columns.names must be None or {width} strings")
        rules = cls(width, {int(j): float(v) for j, v in dropped}, list(integer), names)
        if set(rules.integer) & set(rules.dropped) or rules.features != features:
            raise ValueError(f"columns keep {rules.features} columns for a flow of width {features}, or name a "
                             f"dropped column as an integer one")
        return rules


_MASK31 = (1 << 31) - 1


def _mix(z: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer hash of int64 ``z`` (entries in [0, 2^31)), elementwise: products stay below
    2^62, so nothing overflows."""
    z = ((z ^ (z >> 15)) * 0x2C1B3C6D) & _MASK31
    z = ((z ^ (z >> 12)) * 0x297A2D39) & _MASK31
    return z ^ (z >> 15)


def row_keyed_uniform(x: torch.Tensor) -> torch.Tensor:
    """Numbers in [0, 1) of ``x``'s shape (N, D) float64, each a hash of its row's values and its
    column: the same row gives the same numbers wherever it stands."""
    bits = x.contiguous().view(torch.int64)
    words = _mix((bits & _MASK31) ^ _mix((bits >> 31) & _MASK31))
    columns = torch.arange(x.shape[1], dtype=torch.int64)
    key = _mix((_mix(words + columns * 0x9E3779B) & _MASK31).sum(dim=1, keepdim=True) & _MASK31)
    return _mix((key + (columns + 1) * 0x3C6EF372) & _MASK31).double() / 2**31
