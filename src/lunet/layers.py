"""The two invertible building blocks of LU-Net; their fast kernels live in :mod:`lunet.fast`.

Conventions: inputs have shape ``(..., n)``, any leading batch dimensions and
the ``n`` features last. Every module maps the data side to the latent side in
``forward`` and returns ``(output, log|det J|)`` with the log-determinant per
row, shape ``x.shape[:-1]``; ``inverse`` maps back and returns
``(input, log|det J^{-1}|)`` likewise.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from lunet.checks import check_features, check_positive_int, plain_ops_wanted, value_checks_enabled
from lunet.fast.activation import FixedSlopeForward, LearnedSlopeForward, scaled_forward
from lunet.fast.triangular import BLOCK_LEAF, TriangularAffine
from lunet.functional import SLOPE_MIN, leaky_softplus, leaky_softplus_inverse, leaky_softplus_log_derivative

DIAG_MODES = ("raw", "exp")
INIT_MODES = ("identity", "random")


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
        block_leaf: the training path halves each triangle while the halves are whole
            and at least this wide (a tuning of speed, not of the result).
        groups: split the ``n`` features into this many consecutive groups of
            ``n / groups`` and map each by its own LU layer, as ``nn.Conv2d``'s
            ``groups`` does: ``L`` and ``U`` are block diagonal. Several small
            flows then train side by side in one (see :meth:`lunet.LUNet.split_groups`).

    Every call computes from the current weights: the forward pass by
    blocked triangular products, the inverse by two triangular solves. Fast
    inference from frozen weights is :meth:`lunet.LUNet.frozen`'s job.
    """

    def __init__(
        self, dim: int, diag: str = "exp", init: str = "random", init_scale: float = 0.1, block_leaf: int = BLOCK_LEAF,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.groups = check_positive_int(groups, "groups")
        if dim % groups:
            raise ValueError(f"groups must divide dim: {groups} groups of dim {dim} are not whole")
        # The blocked products skip the masks off their diagonal blocks, which a block-diagonal
        # layer needs everywhere: one masked block then.
        self.block_leaf = check_positive_int(block_leaf, "block_leaf") if groups == 1 else dim
        if diag not in DIAG_MODES:
            raise ValueError(f"diag must be one of {DIAG_MODES}, got {diag!r}")
        if init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
        if isinstance(init_scale, bool) or not isinstance(init_scale, numbers.Real) or not (
            math.isfinite(init_scale) and init_scale >= 0
        ):
            raise ValueError(f"init_scale must be a finite number >= 0, got {init_scale!r}")
        self.diag_mode = diag
        self.lu = nn.Parameter(torch.zeros(dim, dim))
        # raw: the diagonal of U itself; exp: log|U_ii|, with the sign in a buffer.
        self.diag = nn.Parameter(torch.ones(dim) if diag == "raw" else torch.zeros(dim))
        self.register_buffer("diag_sign", torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        # Float masks multiply ~3x faster than torch.tril/triu on CPU, and only
        # on contiguous operands: hence one mask per triangle.
        width = dim // groups
        in_group = torch.block_diag(*[torch.ones(width, width)] * groups)
        self.register_buffer("strict_lower_mask", in_group.tril(-1), persistent=False)
        self.register_buffer("strict_upper_mask", in_group.triu(1), persistent=False)
        if init == "random":
            std = init_scale / math.sqrt(width)
            with torch.no_grad():
                self.lu.normal_(0.0, std).fill_diagonal_(0.0).mul_(in_group)
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
        ``"stored"`` = 2 n^2 + n (dense L and U plus bias, as the paper counts);
        with groups of width ``w = n / groups``, ``n w + n`` and ``2 n w + n``."""
        n, w = self.dim, self.dim // self.groups
        if kind == "free":
            return n * w + n
        if kind == "stored":
            return 2 * n * w + n
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
        if not value_checks_enabled():
            return
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
        if torch.compiler.is_compiling() or plain_ops_wanted():
            # the compiler fuses the masking into its own products, and torch.func's transforms
            # differentiate and batch plain ops; the blocked kernels' strided views and in-place
            # batched products would break the one's graph and the other's wrapped tensors
            return torch.addmm(self.bias, x @ self.matrix_u().t(), self.matrix_l().t())
        return TriangularAffine.apply(
            x, self.lu, self.diagonal_u(), self.bias, self.strict_lower_mask, self.strict_upper_mask, self.block_leaf
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
        return f"dim={self.dim}, diag={self.diag_mode!r}" + (f", groups={self.groups}" if self.groups > 1 else "")


class LeakySoftplus(nn.Module):
    """Elementwise ``f(x) = a x + (1 - a) softplus(x)``, ``SLOPE_MIN <= a < 1`` (``SLOPE_MIN = 1e-4``).

    ``f'(x) = a + (1 - a) sigmoid(x)`` lies in ``(a, 1)``, so ``f`` is strictly
    increasing and convex; its inverse (:func:`lunet.functional.leaky_softplus_inverse`)
    starts from a table of cubic pieces and takes a number of Newton steps fixed in
    advance, exact to float precision, with gradients by the implicit-function theorem.

    Args:
        alpha: the slope ``a`` for ``x -> -inf``.
        learn_alpha: learn ``a`` (parametrised as ``sigmoid(alpha_logit)``, so it stays in
            (0, 1); the inverse refuses a slope that has left ``[SLOPE_MIN, 1)``).
        groups: with ``learn_alpha``, one learned slope for each of this many consecutive
            groups of features (the groups of a grouped :class:`LULinear`), else one for all.
    """

    def __init__(self, alpha: float = 0.1, learn_alpha: bool = False, groups: int = 1) -> None:
        super().__init__()
        self.groups = check_positive_int(groups, "groups")
        # the same range and message as functional.table_step, which refuses a learned slope that drifts out
        if not (isinstance(alpha, (int, float)) and SLOPE_MIN <= float(alpha) < 1.0):
            raise ValueError(
                f"alpha must lie in [{SLOPE_MIN:g}, 1), the slopes for which LeakySoftplus's "
                f"inverse is exact, got {alpha!r}"
            )
        self._fixed_alpha = float(alpha)
        self.learn_alpha = learn_alpha
        if learn_alpha:
            logit = torch.tensor(math.log(alpha / (1.0 - alpha)))
            self.alpha_logit = nn.Parameter(logit if groups == 1 else logit.repeat(groups))

    @property
    def alpha(self) -> torch.Tensor:
        """The slope ``a`` as a scalar tensor (float64 for a fixed slope, so ``float(alpha)`` is exact);
        a learned slope per group is a ``(groups,)`` tensor."""
        if self.learn_alpha:
            return torch.sigmoid(self.alpha_logit)
        return torch.tensor(self._fixed_alpha, dtype=torch.float64)

    def _alpha(self, like: torch.Tensor) -> torch.Tensor | float:
        # A fixed slope stays a Python float so it is exact in every dtype.
        if not self.learn_alpha:
            return self._fixed_alpha
        a = torch.sigmoid(self.alpha_logit).to(like.dtype)
        if self.groups > 1:  # one slope per feature, from its group's
            a = a.unsqueeze(1).expand(self.groups, self._group_width(like)).reshape(-1)
        return a

    def _group_width(self, like: torch.Tensor) -> int:
        if like.shape[-1] % self.groups:
            raise ValueError(f"{self.groups} slope groups do not divide the {like.shape[-1]} features of the input")
        return like.shape[-1] // self.groups

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (..., n), any shape of at least one dimension -> ``f(x)`` elementwise (..., n),
        and ``sum_i log f'(x_i)`` over the last dimension (...)."""
        check_features(x)
        value, logdet = self._forward(x.reshape(-1, x.shape[-1]))
        return value.view(x.shape), logdet.reshape(x.shape[:-1])

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self._alpha(x)
        if plain_ops_wanted():  # torch.func's transforms take plain ops, not the written-out backwards
            return leaky_softplus(x, a), leaky_softplus_log_derivative(x, a).sum(dim=1)
        if isinstance(a, float):
            if not torch.is_grad_enabled():
                value, logdet = scaled_forward(x, a)
                return value.mul_(1 - a), logdet.add_(x.shape[1] * math.log1p(-a))
            return FixedSlopeForward.apply(x, a)
        if torch.is_grad_enabled():
            return LearnedSlopeForward.apply(x, a)
        # f'(x) lies in (a, 1): its log has no cancellation.
        return leaky_softplus(x, a), leaky_softplus_log_derivative(x, a).sum(dim=1)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` (..., n), any shape of at least one dimension -> ``x = f^{-1}(y)`` elementwise, exact
        to float precision, and ``log|det dx/dy| = -sum_i log f'(x_i)`` over the last dimension (...)."""
        check_features(y)
        x = self._inverse(y)
        return x, -leaky_softplus_log_derivative(x, self._alpha(x)).sum(dim=-1)

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.learn_alpha and self.groups > 1:  # the exact inverse takes one slope at a time
            a = torch.sigmoid(self.alpha_logit).to(y.dtype)
            parts = y.split(self._group_width(y), dim=-1)
            return torch.cat([leaky_softplus_inverse(part, a[g]) for g, part in enumerate(parts)], dim=-1)
        return leaky_softplus_inverse(y, self._alpha(y))

    def extra_repr(self) -> str:
        slopes = self.alpha.detach().reshape(-1).tolist()
        shown = f"{slopes[0]:.4g}" if len(slopes) == 1 else "[" + ", ".join(f"{v:.4g}" for v in slopes) + "]"
        return f"alpha={shown}, learn_alpha={self.learn_alpha}" + (f", groups={self.groups}" if self.groups > 1 else "")
