"""The two invertible building blocks of LU-Net.

Conventions: inputs have shape ``(..., n)``, any leading batch dimensions and
the ``n`` features last. Every module maps the data side to the latent side in
``forward`` and returns ``(output, log|det J|)`` with the log-determinant per
row, shape ``x.shape[:-1]``; ``inverse`` maps back and returns
``(input, log|det J^{-1}|)`` likewise.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import nn

from lunet.checks import check_features, check_positive_int
from lunet.functional import (
    SLOPE_MIN,
    leaky_softplus,
    leaky_softplus_inverse,
    leaky_softplus_log_derivative,
    softplus,
)

DIAG_MODES = ("raw", "exp")
INIT_MODES = ("identity", "random")


# A frozen product of fewer rows than this, on the CPU, whose matrix is larger than
# one core's L2 cache, splits its output columns among the threads (`FrozenAffine`).
# `benchmarks/speed_variants.py` times the split against one product on 2 cores
# with 1 MiB of L2 each: at width 784 it pays most at batches 1 to 16 and draws
# level at 256 rows; at width 640 it is about level, at 512 (1 MiB) it loses.
SPLIT_BELOW_ROWS = 128
SPLIT_MIN_BYTES = 1 << 20


def output_major(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
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
    layout of :func:`output_major` (any layout gives the same result).

    A batch of a few rows makes the product one pass over the matrix, which a
    single core would run. On the CPU, below ``SPLIT_BELOW_ROWS`` rows and for a
    matrix over ``SPLIT_MIN_BYTES``, each thread takes an equal share of the
    output columns instead: the shares are the batch of one ``baddbmm``. The
    split's view of ``W`` is made once per thread count, not per call: at batch 1,
    making it cost about a fifth of the product.
    """

    __slots__ = ("weight", "bias", "_splittable", "_split")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight, self.bias = weight.detach(), bias
        self._splittable = weight.device.type == "cpu" and weight.numel() * weight.element_size() > SPLIT_MIN_BYTES
        self._split: tuple[int, Optional[torch.Tensor]] = (1, None)

    def _split_weight(self, shares: int) -> torch.Tensor:
        """``W`` cut into ``shares`` equal blocks of output columns: (shares, n_in, n_out / shares)."""
        if self._split[0] != shares:
            w = self.weight
            self._split = (shares, w.t().reshape(shares, w.shape[1] // shares, w.shape[0]).transpose(1, 2))
        return self._split[1]

    def __call__(self, h: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        rows, n_out = h.shape[0], self.weight.shape[1]
        shares = 1
        if self._splittable and 0 < rows < SPLIT_BELOW_ROWS:
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


# The training path halves each triangle recursively while the halves are whole
# and at least this wide, and skips every block that is zero: at width 784
# (three levels, leaves of 98) that is 9/16 of the dense flops of each product.
# The blocks of one level are equal and evenly spaced, so each level is one
# batched product over strided views of the operands, and one mask product
# serves all the diagonal leaves: a few large calls instead of many small ones.
BLOCK_LEAF = 64


def _block_depth(n: int) -> int:
    """How many times the (n, n) triangles are halved (0: a single masked block)."""
    depth = 0
    while n % (2 << depth) == 0 and n // (2 << depth) >= BLOCK_LEAF:
        depth += 1
    return depth


def _batch_view(t: torch.Tensor, count: int, rows: int, cols: int, start: tuple[int, int], step: tuple[int, int]) -> torch.Tensor:
    """``count`` blocks of ``t`` (2-D), each (rows, cols), the first at ``start``
    (row, column) and each next one ``step`` further: one (count, rows, cols) view."""
    rs, cs = t.stride()
    offset = t.storage_offset() + start[0] * rs + start[1] * cs
    return t.as_strided((count, rows, cols), (step[0] * rs + step[1] * cs, rs, cs), offset)


def _levels(n: int, depth: int, lower: bool):
    """The off-diagonal blocks of a lower (or upper) (n, n) triangle halved ``depth``
    times, level by level: ``(count, size, row, col)``, the first block at
    ``(row, col)`` and each next one ``2 size`` further along the diagonal."""
    for level in range(depth):
        size = n >> (level + 1)
        yield (1 << level, size, size, 0) if lower else (1 << level, size, 0, size)


def _diagonal_leaves(m: torch.Tensor, depth: int) -> torch.Tensor:
    """The 2^depth diagonal blocks of ``m`` (n, n), the leaves of the halving: one
    (2^depth, n / 2^depth, n / 2^depth) view."""
    leaf = m.shape[0] >> depth
    return _batch_view(m, 1 << depth, leaf, leaf, (0, 0), (leaf, leaf))


def _triangular_matmul(out, a, m, leaves, lower: bool, beta: float, depth: int) -> None:
    """``out = beta * out + a @ T`` in place for the lower (or upper) triangular ``T``
    that is ``m`` (n, n) off its diagonal blocks and ``leaves`` (the masked diagonal
    blocks, as from :func:`_diagonal_leaves`) on them; the blocks of ``T`` that are
    zero are skipped. ``a``, ``out``: (B, n)."""
    n, b = m.shape[0], a.shape[0]
    leaf = n >> depth
    # first, so that beta scales each column block once
    _batch_view(out, 1 << depth, b, leaf, (0, 0), (0, leaf)).baddbmm_(
        _batch_view(a, 1 << depth, b, leaf, (0, 0), (0, leaf)), leaves, beta=beta
    )
    for count, size, row, col in _levels(n, depth, lower):
        _batch_view(out, count, b, size, (0, col), (0, 2 * size)).baddbmm_(
            _batch_view(a, count, b, size, (0, row), (0, 2 * size)),
            _batch_view(m, count, size, size, (row, col), (2 * size, 2 * size)),
        )


def _triangular_outer(out, p, q, mask, lower: bool, accumulate: bool, depth: int) -> None:
    """The lower (or upper) triangle of ``p^T @ q``, masked, written into ``out`` (n, n);
    the other triangle's off-diagonal blocks are left untouched, and with
    ``accumulate`` the masked diagonal leaves are added to what ``out`` holds."""
    n, b = out.shape[0], p.shape[0]
    leaf, leaves = n >> depth, 1 << depth
    product = torch.bmm(
        _batch_view(p, leaves, b, leaf, (0, 0), (0, leaf)).transpose(1, 2),
        _batch_view(q, leaves, b, leaf, (0, 0), (0, leaf)),
    )
    diagonal = _diagonal_leaves(out, depth)
    if accumulate:
        diagonal.addcmul_(product, mask[:leaf, :leaf])
    else:
        torch.mul(product, mask[:leaf, :leaf], out=diagonal)
    for count, size, row, col in _levels(n, depth, lower):
        _batch_view(out, count, size, size, (row, col), (2 * size, 2 * size)).baddbmm_(
            _batch_view(p, count, b, size, (0, row), (0, 2 * size)).transpose(1, 2),
            _batch_view(q, count, b, size, (0, col), (0, 2 * size)),
            beta=0,
        )


class _TriangularAffine(torch.autograd.Function):
    """``y = x A^T + b`` with ``A = L U`` taken from the packed ``lu``, (B, n) -> (B, n).

    Two products with the triangles cost 4Bn^2 flops against 2n^3 + 2Bn^2 for
    forming ``L U`` first: cheaper for every batch B < n. With
    ``h = x U^T = x Us^T + x * d`` (``Us``, ``Ls`` the strict triangles):
    ``y = h + h Ls^T + b``.

    Every product, forward and backward, is a blocked triangular one (see
    ``BLOCK_LEAF``) that reads ``lu`` in place: no masked copy of a triangle
    is made beyond its diagonal blocks, cut once in the forward pass and saved
    for the backward (both triangles' together: 2 / 2^depth of a matrix, a
    quarter at width 784), and the gradient of ``lu`` is assembled in place
    from its two triangles. First derivatives
    only: differentiating the backward pass again raises torch's
    once-differentiable error.
    """

    @staticmethod
    def forward(ctx, x, lu, d, bias, lower_mask, upper_mask):
        ctx.depth = depth = _block_depth(lu.shape[0])
        # The masked diagonal blocks of both triangles, cut once from lu itself (a
        # row-major read) and shared with the backward pass, which needs them untransposed.
        leaves, leaf = _diagonal_leaves(lu, depth), lu.shape[0] >> depth
        strict_lower, strict_upper = leaves * lower_mask[:leaf, :leaf], leaves * upper_mask[:leaf, :leaf]
        lu_t = lu.t()
        h = torch.empty_like(x)
        _triangular_matmul(h, x, lu_t, strict_upper.transpose(1, 2), lower=True, beta=0, depth=depth)  # x Us^T
        h.addcmul_(x, d)
        y = h + bias
        _triangular_matmul(y, h, lu_t, strict_lower.transpose(1, 2), lower=False, beta=1, depth=depth)  # + h Ls^T
        ctx.save_for_backward(x, d, h, lu, lower_mask, upper_mask, strict_lower, strict_upper)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        x, d, h, lu, lower_mask, upper_mask, strict_lower, strict_upper = ctx.saved_tensors
        need_x, need_lu, need_d, need_b = ctx.needs_input_grad[:4]
        depth = ctx.depth
        gh = gy.clone()  # dL/dh = gy (I + Ls)
        _triangular_matmul(gh, gy, lu, strict_lower, lower=True, beta=1, depth=depth)
        g_lu = g_x = None
        if need_lu:
            # strictly lower part from gy^T h, strictly upper part from gh^T x
            g_lu = torch.empty_like(lu)
            _triangular_outer(g_lu, gy, h, lower_mask, lower=True, accumulate=False, depth=depth)
            _triangular_outer(g_lu, gh, x, upper_mask, lower=False, accumulate=True, depth=depth)
        if need_x:
            g_x = torch.mul(gh, d)
            _triangular_matmul(g_x, gh, lu, strict_upper, lower=False, beta=1, depth=depth)  # + gh Us
        g_d = (gh * x).sum(0) if need_d else None
        g_b = gy.sum(0) if need_b else None
        return g_x, g_lu, g_d, g_b, None, None


class LULinear(nn.Module):
    """Invertible affine map ``y = L U x + b``.

    ``L`` is unit lower triangular and ``U`` upper triangular; both are learned
    separately. Like LAPACK's packed LU, one ``(n, n)`` parameter ``lu`` holds
    the free entries of both: strictly below the diagonal those of ``L``,
    strictly above it those of ``U``; ``diag`` holds ``U``'s diagonal. Masks
    cut the triangles out in every forward pass, so no optimiser step can leak
    outside them, and the optimiser updates n^2 entries per layer, not 2 n^2.

    Args:
        dim: width ``n``.
        diag: ``"raw"`` stores ``U_ii`` directly (the paper's choice, invertible
            while no entry is zero); ``"exp"`` stores ``U_ii = sign_i * exp(s_i)``,
            which can never reach zero.
        init: ``"identity"`` starts at ``A = I``; ``"random"`` perturbs the
            identity by off-diagonal entries of standard deviation
            ``init_scale / sqrt(n)`` (which keeps ``A`` well conditioned) and
            draws random signs for ``diag(U)``.
        init_scale: size of the random perturbation.

    Every call computes from the current weights: the forward pass by
    blocked triangular products, the inverse by two triangular solves. Fast
    inference from frozen weights is :meth:`lunet.LUNet.frozen`'s job.
    """

    def __init__(self, dim: int, diag: str = "exp", init: str = "random", init_scale: float = 0.1) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        if diag not in DIAG_MODES:
            raise ValueError(f"diag must be one of {DIAG_MODES}, got {diag!r}")
        if init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
        self.diag_mode = diag
        self.lu = nn.Parameter(torch.zeros(dim, dim))
        # raw: the diagonal of U itself; exp: log|U_ii|, with the sign in a buffer.
        self.diag = nn.Parameter(torch.ones(dim) if diag == "raw" else torch.zeros(dim))
        self.register_buffer("diag_sign", torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        # Float masks multiply ~3x faster than torch.tril/triu on CPU, and only
        # on contiguous operands: hence one mask per triangle.
        self.register_buffer("strict_lower_mask", torch.ones(dim, dim).tril(-1), persistent=False)
        self.register_buffer("strict_upper_mask", torch.ones(dim, dim).triu(1), persistent=False)
        if init == "random":
            std = init_scale / math.sqrt(dim)
            with torch.no_grad():
                self.lu.normal_(0.0, std).fill_diagonal_(0.0)
                # Random signs on diag(U): with all signs positive (and neither
                # parametrisation lets a sign flip during training) every layer
                # preserves orientation and a 1-D net can only be convex.
                signs = torch.randint(0, 2, (dim,)).float() * 2 - 1
                if diag == "raw":
                    self.diag.mul_(signs)
                else:
                    self.diag_sign.copy_(signs)

    # -- the factors -------------------------------------------------------
    def diagonal_u(self) -> torch.Tensor:
        """The diagonal of ``U``, shape ``(n,)``."""
        if self.diag_mode == "raw":
            return self.diag
        return self.diag_sign * torch.exp(self.diag)

    def matrix_l(self) -> torch.Tensor:
        """``L`` as a dense ``(n, n)`` unit lower triangular matrix."""
        eye = torch.eye(self.dim, dtype=self.lu.dtype, device=self.lu.device)
        return self.lu * self.strict_lower_mask + eye

    def matrix_u(self) -> torch.Tensor:
        """``U`` as a dense ``(n, n)`` upper triangular matrix."""
        return self.lu * self.strict_upper_mask + torch.diag(self.diagonal_u())

    def weight(self) -> torch.Tensor:
        """The dense weight ``A = L U``, shape ``(n, n)``."""
        return self.matrix_l() @ self.matrix_u()

    def log_abs_det(self) -> torch.Tensor:
        """``log|det A| = sum_i log|U_ii|`` as a scalar tensor."""
        if self.diag_mode == "raw":
            return torch.log(torch.abs(self.diag)).sum()
        return self.diag.sum()

    def num_parameters(self, kind: str = "free") -> int:
        """Trainable parameter count: ``"free"`` = n^2 + n (what is learned),
        ``"stored"`` = 2 n^2 + n (dense L and U plus bias, as the paper counts)."""
        n = self.dim
        if kind == "free":
            return n * n + n
        if kind == "stored":
            return 2 * n * n + n
        raise ValueError(f"kind must be 'free' or 'stored', got {kind!r}")

    # -- float64 matrices for frozen snapshots ------------------------------
    def weight64(self) -> torch.Tensor:
        """``A = L U`` (n, n) in float64, without autograd: the source of a frozen snapshot's
        matrices, so that each is as exact as the factors."""
        with torch.no_grad():
            return self.matrix_l().double() @ self.matrix_u().double()

    def inverse64(self) -> torch.Tensor:
        """``A^{-1} = U^{-1} L^{-1}`` (n, n) in float64 by two triangular solves, without autograd."""
        with torch.no_grad():
            l64 = self.matrix_l().double()
            eye = torch.eye(self.dim, dtype=torch.float64, device=l64.device)
            l_inv = torch.linalg.solve_triangular(l64, eye, upper=False, unitriangular=True)
            return torch.linalg.solve_triangular(self.matrix_u().double(), l_inv, upper=True)

    def _check_invertible(self) -> None:
        d = self.diagonal_u().detach()
        bad = (d == 0) | ~torch.isfinite(d)
        if bool(bad.any()):
            idx = torch.nonzero(bad).flatten()[:5].tolist()
            raise ValueError(
                f"LULinear is not invertible: U has {int(bad.sum())} zero or non-finite "
                f"diagonal entries (first at indices {idx})"
            )

    # -- the maps ----------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (..., n) -> ``y = x A^T + b`` (..., n), log|det| (...), the same for every row."""
        check_features(x, self.dim, like=self.lu)
        y, logdet = self._forward(x.reshape(-1, self.dim))
        return y.view(x.shape), logdet.reshape(x.shape[:-1])

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._affine(x), self.log_abs_det().expand(x.shape[0])

    def _affine(self, x: torch.Tensor) -> torch.Tensor:
        """``x A^T + b`` alone, (B, n) -> (B, n)."""
        return _TriangularAffine.apply(
            x, self.lu, self.diagonal_u(), self.bias, self.strict_lower_mask, self.strict_upper_mask
        )

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` (..., n) -> ``x = U^{-1} L^{-1} (y - b)`` (..., n) by two triangular solves,
        and ``log|det dx/dy| = -sum_i log|U_ii|`` (...)."""
        check_features(y, self.dim, like=self.lu)
        x = self._inverse(y.reshape(-1, self.dim)).view(y.shape)
        return x, (-self.log_abs_det()).expand(y.shape[:-1])

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        self._check_invertible()
        # Row-vector form: y - b = x U^T L^T, so solve from the right.
        h = torch.linalg.solve_triangular(
            self.matrix_l().t(), y - self.bias, upper=True, left=False, unitriangular=True
        )
        return torch.linalg.solve_triangular(self.matrix_u().t(), h, upper=False, left=False)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, diag={self.diag_mode!r}"


def _product_chunk(n: int, lo: float, hi: float, dtype: torch.dtype, max_chunk: int = 8) -> int:
    """The largest divisor ``k <= max_chunk`` of ``n`` for which a product of ``k``
    factors in ``(lo, hi)`` stays a normal, finite number of ``dtype`` with a wide margin."""
    finfo = torch.finfo(dtype)
    limit = max_chunk
    if lo < 1:
        limit = min(limit, int(0.8 * math.log(finfo.tiny) / math.log(lo)))
    if hi > 1:
        limit = min(limit, int(0.8 * math.log(finfo.max) / math.log(hi)))
    return max(k for k in range(1, max(limit, 1) + 1) if n % k == 0)


def _sum_log_abs(factors: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """``sum_i log|factors_i|`` per row, (B, n) -> (B,), for ``|factors|`` in ``(lo, hi)``;
    ``factors`` is overwritten.

    One log per ``k`` entries: the logs of products of ``k`` entries ``n / k``
    columns apart, so that each product multiplies whole contiguous rows
    (vectorised) instead of reducing short runs.
    """
    b, n = factors.shape
    k = _product_chunk(n, lo, hi, factors.dtype)
    if k > 1:
        factors = factors.view(b, k, n // k).prod(dim=1)
    return factors.abs_().log_().sum(dim=1)


def _sigmoid_floor(dtype: torch.dtype) -> float:
    """The lowest ``u`` for which ``sigmoid(u)`` is a normal number of ``dtype``
    with a margin, so that ``log(sigmoid(u))`` keeps the dtype's precision."""
    return math.log(torch.finfo(dtype).tiny) + 4.0


class _FixedSlopeForward(torch.autograd.Function):
    """:meth:`LeakySoftplus.forward` for a fixed slope ``a``: ``f(x)`` (B, n) and
    ``sum_i log f'(x_i)`` (B,), with a written-out backward.

    With ``s = sigmoid(x)`` and ``f' = a + (1 - a) s``, the gradient is
    ``g_f f' + g_logdet (1 - a) s (1 - s) / f'``: one sigmoid serves the log-det
    and the whole backward pass, which then needs no transcendental function
    (autograd's would run softplus's and the log's backward separately). Only
    ``s`` is saved. First derivatives only, like the LU layers' training path.
    """

    @staticmethod
    def forward(ctx, x, a: float):
        s = torch.sigmoid(x)
        ctx.a = a
        ctx.save_for_backward(s)
        logdet = torch.mul(s, 1 - a).add_(a).log_().sum(dim=1)
        return leaky_softplus(x, a), logdet

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_value, g_logdet):
        (s,) = ctx.saved_tensors
        a = ctx.a
        slope = torch.mul(s, 1 - a).add_(a)
        g_x = torch.rsub(s, 1.0).mul_(s).div_(slope).mul_(g_logdet.unsqueeze(1) * (1 - a))
        return g_x.addcmul_(g_value, slope), None


class LeakySoftplus(nn.Module):
    """Elementwise ``f(x) = a x + (1 - a) softplus(x)``, ``SLOPE_MIN <= a < 1`` (``SLOPE_MIN = 1e-4``).

    ``f'(x) = a + (1 - a) sigmoid(x)`` lies in ``(a, 1)``, so ``f`` is strictly
    increasing and convex; its inverse is read from a table of cubic pieces
    (exact to float32 precision as it stands; float64 adds one Newton step),
    with gradients by the implicit-function theorem.

    Args:
        alpha: the slope ``a`` for ``x -> -inf``.
        learnable: learn ``a`` (parametrised as ``sigmoid(t)``, so it stays in (0, 1); the
            inverse refuses a slope that has left ``[SLOPE_MIN, 1)``).
    """

    def __init__(self, alpha: float = 0.1, learnable: bool = False) -> None:
        super().__init__()
        # the same range and message as functional.table_step, which refuses a learnable slope that drifts out
        if not (isinstance(alpha, (int, float)) and SLOPE_MIN <= float(alpha) < 1.0):
            raise ValueError(
                f"alpha must lie in [{SLOPE_MIN:g}, 1), the slopes for which LeakySoftplus's "
                f"inverse is exact, got {alpha!r}"
            )
        self.fixed_alpha = float(alpha)
        self.learnable = learnable
        if learnable:
            self.alpha_logit = nn.Parameter(torch.tensor(math.log(alpha / (1.0 - alpha))))

    @property
    def alpha(self) -> torch.Tensor:
        """The slope ``a`` as a scalar tensor."""
        if self.learnable:
            return torch.sigmoid(self.alpha_logit)
        return torch.tensor(self.fixed_alpha)

    def slope_value(self) -> float:
        """The slope ``a`` as a Python float (a device sync for a learnable slope)."""
        if self.learnable:
            return float(torch.sigmoid(self.alpha_logit.detach()))
        return self.fixed_alpha

    def _slope(self, like: torch.Tensor) -> torch.Tensor | float:
        # A fixed slope stays a Python float so it is exact in every dtype.
        if self.learnable:
            return torch.sigmoid(self.alpha_logit).to(like.dtype)
        return self.fixed_alpha

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (..., n), any shape of at least one dimension -> ``f(x)`` elementwise (..., n),
        and ``sum_i log f'(x_i)`` over the last dimension (...)."""
        check_features(x)
        value, logdet = self._forward(x.reshape(-1, x.shape[-1]))
        return value.view(x.shape), logdet.reshape(x.shape[:-1])

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self._slope(x)
        if isinstance(a, float):
            if not torch.is_grad_enabled():
                value, logdet = self._scaled_forward(x, a)
                return value.mul_(1 - a), logdet.add_(x.shape[1] * math.log1p(-a))
            return _FixedSlopeForward.apply(x, a)
        # a learnable slope: autograd through the definition.
        # f'(x) lies in (a, 1): its log has no cancellation.
        logdet = leaky_softplus_log_derivative(x, a).sum(dim=1)
        return leaky_softplus(x, a), logdet

    @staticmethod
    def _scaled_forward(x: torch.Tensor, a: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``g = f / (1 - a)`` (B, n) and ``sum_i log g'(x_i)`` (B,), without autograd.

        ``g = softplus(x) + c x`` and ``g' = sigmoid(x) + c`` with ``c = a / (1 - a)``:
        leaving out the factor ``1 - a`` (which :class:`LUNet` folds into the next
        layer's matrix) saves two passes over the batch.
        """
        c = a / (1 - a)
        value = softplus(x).add_(x, alpha=c)
        return value, _sum_log_abs(torch.sigmoid(x).add_(c), c, 1 + c)

    @staticmethod
    def _negated_forward(
        u: torch.Tensor, a: float, out: torch.Tensor, scratch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_scaled_forward` of ``x = -u`` with the signs folded in, without autograd.

        Writes ``-g(x) = log sigmoid(u) + c u`` into ``out`` and returns
        ``sum_i log g'(x_i)`` (B,) and a 0-dim bool tensor: whether every entry
        of ``u`` lay where this is exact. ``scratch`` (like ``u``) is overwritten.

        ``softplus(x) = -log sigmoid(u)`` and ``g'(x) = 1 + c - sigmoid(u)``: one
        sigmoid feeds both, where the unnegated form also needs softplus's own
        exp and log1p. ``log sigmoid(u)`` keeps ``g`` exact to a few ulps of
        ``max(|g|, 1)`` until ``sigmoid(u)`` leaves the normal numbers, below
        :func:`_sigmoid_floor` (``x`` above about 83 in float32); the caller
        redoes such batches with :meth:`_scaled_forward`.
        """
        c = a / (1 - a)
        if u.numel() == 0:  # amin has nothing to reduce
            in_range = torch.ones((), dtype=torch.bool, device=u.device)
        else:
            in_range = u.amin() >= _sigmoid_floor(u.dtype)
        s = torch.sigmoid(u, out=scratch)
        torch.log(s, out=out).add_(u, alpha=c)
        return _sum_log_abs(s.sub_(1 + c), c, 1 + c), in_range

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` (..., n), any shape of at least one dimension -> ``x = f^{-1}(y)`` elementwise, exact
        to float precision, and ``log|det dx/dy| = -sum_i log f'(x_i)`` over the last dimension (...)."""
        check_features(y)
        x = self._inverse(y)
        return x, -leaky_softplus_log_derivative(x, self._slope(x)).sum(dim=-1)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        return leaky_softplus_inverse(y, self._slope(y))

    def extra_repr(self) -> str:
        return f"alpha={float(self.alpha.detach()):.4g}, learnable={self.learnable}"
