"""Frozen affine maps ``h -> h W + c``: the products of a frozen flow, split among the
threads when a batch of a few rows would leave all but one core idle."""

from __future__ import annotations

import functools
from typing import Optional

import torch

__all__ = ["SPLIT_BELOW_ROWS", "SPLIT_MIN_BYTES", "as_frozen_affine_weight", "FrozenAffine"]

# A frozen product of fewer rows than this, on the CPU, whose matrix is larger than
# one core's L2 cache, splits its output columns among the threads (`FrozenAffine`).
# `benchmarks/speed_variants.py` times the split against one product on 2 cores
# with 1 MiB of L2 each: at width 784 it pays most at batches 1 to 16 and draws
# level at 256 rows; at width 640 it is about level, at 512 (1 MiB) it loses.
SPLIT_BELOW_ROWS = 128
SPLIT_MIN_BYTES = 1 << 20


def as_frozen_affine_weight(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight`` (n_in, n_out) cast to ``dtype``, as the transposed view of a contiguous
    (n_out, n_in) matrix: the layout :class:`FrozenAffine` takes."""
    return weight.t().to(dtype).contiguous().t()


@functools.lru_cache(maxsize=64)
def _split_count(n_out: int, threads: int) -> int:
    """The most column shares, at most one per thread, that divide ``n_out`` evenly."""
    return max(k for k in range(1, max(threads, 1) + 1) if n_out % k == 0)


class FrozenAffine:
    """``h -> h W + c`` for a frozen weight ``W`` (n_in, n_out) and bias ``c`` (n_out,):
    call with ``h`` (B, n_in) -> (B, n_out), into ``out`` if given (then without
    autograd). Autograd reaches ``h`` and ``c``, never ``W``. ``W`` is fastest in the
    layout of :func:`as_frozen_affine_weight` (any layout gives the same result).

    A batch of a few rows makes the product one pass over the matrix, which a
    single core would run. On the CPU, below ``split_below_rows`` rows and for a
    matrix over ``split_min_bytes``, each thread takes an equal share of the
    output columns instead: the shares are the batch of one ``baddbmm``. The
    split's view of ``W`` is made once per thread count, not per call: at batch 1,
    making it cost about a fifth of the product.
    """

    __slots__ = ("weight", "bias", "split_below_rows", "_splittable", "_split")

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor,
        split_below_rows: int = SPLIT_BELOW_ROWS, split_min_bytes: int = SPLIT_MIN_BYTES,
    ) -> None:
        self.weight, self.bias = weight.detach(), bias
        self.split_below_rows = split_below_rows
        self._splittable = weight.device.type == "cpu" and weight.numel() * weight.element_size() > split_min_bytes
        self._split: Optional[tuple[int, torch.Tensor]] = None

    def _split_weight(self, shares: int) -> torch.Tensor:
        """``W`` cut into ``shares`` equal blocks of output columns: (shares, n_in, n_out / shares)."""
        if self._split is None or self._split[0] != shares:
            w = self.weight
            self._split = (shares, w.t().reshape(shares, w.shape[1] // shares, w.shape[0]).transpose(1, 2))
        return self._split[1]

    def __call__(self, h: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        rows, n_out = h.shape[0], self.weight.shape[1]
        shares = 1
        if self._splittable and 0 < rows < self.split_below_rows:
            shares = _split_count(n_out, torch.get_num_threads())
        if shares == 1:
            return torch.addmm(self.bias, h, self.weight, out=out)
        width = n_out // shares
        args = (self.bias.reshape(shares, 1, width), h.expand(shares, rows, h.shape[1]), self._split_weight(shares))
        if rows == 1:  # (shares, 1, width) is the row itself
            if out is None:
                return torch.baddbmm(*args).view(1, n_out)
            torch.baddbmm(*args, out=out.view(shares, 1, width))
            return out
        parts = torch.baddbmm(*args).transpose(0, 1)
        if out is None:
            return parts.reshape(rows, n_out)
        out.view(rows, shares, width).copy_(parts)
        return out
