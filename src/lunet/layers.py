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
from typing import Mapping

import torch
from torch import nn

from lunet.base import Transform
from lunet.checks import plain_ops_wanted, value_checks_enabled
from lunet.fast.activation import FixedAlphaForward, LearnedAlphaForward, scaled_forward
from lunet.fast.triangular import BLOCK_LEAF, TriangularAffine
from lunet.functional import ALPHA_MIN, leaky_softplus, leaky_softplus_inverse, leaky_softplus_log_derivative
from lunet.limits import check_positive_int

__all__ = ["DIAG_MODES", "INIT_MODES", "lu_affine", "lu_affine_inverse", "LULinear", "LeakySoftplus"]

DIAG_MODES = ("raw", "exp")
INIT_MODES = ("identity", "random")


def lu_affine(x: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x (L U)^T + b`` for rows ``x`` (B, n), dense ``L`` and ``U`` (n, n) and ``b`` (n,), in plain
    differentiable ops (what the compiler and torch.func take)."""
    return torch.addmm(bias, x @ upper.t(), lower.t())


def lu_affine_inverse(y: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`lu_affine`, ``(y - b) U^{-T} L^{-T}`` (B, n), by two triangular solves."""
    # Row-vector form: y - b = x U^T L^T, so solve from the right.
    h = torch.linalg.solve_triangular(lower.t(), y - bias, upper=True, left=False, unitriangular=True)
    return torch.linalg.solve_triangular(upper.t(), h, upper=False, left=False)


class LULinear(Transform):
    """Invertible affine map ``y = L U x + b``.

    ``L`` is unit lower triangular and ``U`` upper triangular; both are learned
    separately. Like LAPACK's packed LU, one ``(n, n)`` parameter ``lu`` holds
    the free entries of both: strictly below the diagonal those of ``L``,
    strictly above it those of ``U``; ``diag`` holds ``U``'s diagonal. Masks
    cut the triangles out in every forward pass, so no optimiser step can leak
    outside them, and the optimiser updates n^2 entries per layer, not 2 n^2.

    Args:
        features: width ``n``.
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

    features: int
    groups: int
    block_leaf: int
    diag_mode: str
    lu: nn.Parameter
    diag: nn.Parameter
    bias: nn.Parameter
    diag_sign: torch.Tensor
    strict_lower_mask: torch.Tensor
    strict_upper_mask: torch.Tensor

    def __init__(
        self, features: int, diag: str = "exp", init: str = "random", init_scale: float = 0.1,
        block_leaf: int = BLOCK_LEAF,
        groups: int = 1,
    ) -> None:
        super().__init__()
        self.features = check_positive_int(features, "features")
        self.groups = check_positive_int(groups, "groups")
        if features % groups:
            raise ValueError(f"groups must divide features: {groups} groups do not split {features} features evenly")
        # The blocked products skip the masks off their diagonal blocks, which a block-diagonal
        # layer needs everywhere: one masked block then.
        self.block_leaf = check_positive_int(block_leaf, "block_leaf") if groups == 1 else features
        if diag not in DIAG_MODES:
            raise ValueError(f"diag must be one of {DIAG_MODES}, got {diag!r}")
        if init not in INIT_MODES:
            raise ValueError(f"init must be one of {INIT_MODES}, got {init!r}")
        if isinstance(init_scale, bool) or not isinstance(init_scale, numbers.Real) or not (
            math.isfinite(init_scale) and init_scale >= 0
        ):
            raise ValueError(f"init_scale must be a finite number >= 0, got {init_scale!r}")
        self.diag_mode = diag
        self.lu = nn.Parameter(torch.zeros(features, features))
        # raw: the diagonal of U itself; exp: log|U_ii|, with the sign in a buffer.
        self.diag = nn.Parameter(torch.ones(features) if diag == "raw" else torch.zeros(features))
        self.register_buffer("diag_sign", torch.ones(features))
        self.bias = nn.Parameter(torch.zeros(features))
        # Float masks multiply ~3x faster than torch.tril/triu on CPU, and only
        # on contiguous operands: hence one mask per triangle.
        width = features // groups
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
                signs = torch.randint(0, 2, (features,)).float() * 2 - 1
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
        eye = torch.eye(self.features, dtype=self.lu.dtype, device=self.lu.device)
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
        n, w = self.features, self.features // self.groups
        if kind == "free":
            return n * w + n
        if kind == "stored":
            return 2 * n * w + n
        raise ValueError(f"kind must be 'free' or 'stored', got {kind!r}")

    @torch.no_grad()
    def set_factors(self, lower: torch.Tensor, upper: torch.Tensor, bias: torch.Tensor) -> "LULinear":
        """Make the layer ``y = L U x + b``: ``lower`` (n, n) gives ``L`` (its strict lower triangle
        is read; the diagonal is 1), ``upper`` (n, n) gives ``U`` (its upper triangle, diagonal
        included, which must be non-zero), ``bias`` (n,) gives ``b``. Entries outside a group's
        block (``groups > 1``) are dropped. Returns the layer."""
        n = self.features
        for name, value, shape in (("lower", lower, (n, n)), ("upper", upper, (n, n)), ("bias", bias, (n,))):
            if tuple(value.shape) != shape:
                raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")
        d = torch.diagonal(upper)
        if bool((d == 0).any()) or not bool(torch.isfinite(d).all()):
            raise ValueError("the diagonal of upper must be finite and non-zero: U would not be invertible")
        self.lu.copy_(lower * self.strict_lower_mask + upper * self.strict_upper_mask)
        if self.diag_mode == "raw":
            self.diag.copy_(d)
        else:
            self.diag.copy_(torch.log(d.abs()))
            self.diag_sign.copy_(torch.sign(d))
        self.bias.copy_(bias)
        return self

    def check_invertible(self) -> None:
        """Raise ``ValueError`` when a diagonal entry of ``U`` is zero or not finite (a value check:
        skipped where :func:`lunet.set_value_checks` is off)."""
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

    def check_state(self, state: Mapping[str, torch.Tensor], prefix: str = "") -> None:
        """``ValueError`` naming the entry unless the signs in ``state`` are exactly +1 or -1 and
        ``U``'s diagonal is invertible in the weights' dtype: non-zero (``"raw"``), or a log of
        magnitude whose exponential neither overflows nor vanishes (``"exp"``)."""
        sign = state.get(prefix + "diag_sign")
        if sign is not None and not bool((sign.abs() == 1).all()):
            odd = sign[sign.abs() != 1].reshape(-1)
            raise ValueError(f"{prefix}diag_sign holds {odd.numel()} entr{'y' if odd.numel() == 1 else 'ies'} other "
                             f"than +1 and -1 (the first is {float(odd[0]):g}); a sign of U's diagonal is +1 or -1")
        diag = state.get(prefix + "diag")
        if diag is None or not diag.is_floating_point():
            return
        if self.diag_mode == "raw" and bool((diag == 0).any()):
            raise ValueError(f"{prefix}diag holds a zero on U's diagonal: the layer would not be invertible")
        if self.diag_mode == "exp":
            limit = math.log(torch.finfo(diag.dtype).max)
            if bool((diag.abs() > limit).any()):
                raise ValueError(f"{prefix}diag holds a log-magnitude of {float(diag.abs().max()):g} on U's diagonal, "
                                 f"beyond the ±{limit:.4g} whose exponential {diag.dtype} holds")

    # -- the maps ----------------------------------------------------------
    def reference(self) -> torch.Tensor:
        return self.lu

    def forward_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, n) -> ``y = x A^T + b`` (B, n), and log|det|, the same for every row (0-dim)."""
        if torch.compiler.is_compiling() or plain_ops_wanted():
            # the compiler fuses the masking into its own products, and torch.func's transforms
            # differentiate and batch plain ops; the blocked kernels' strided views and in-place
            # batched products would break the one's graph and the other's wrapped tensors
            y = lu_affine(x, self.matrix_l(), self.matrix_u(), self.bias)
        else:
            y = TriangularAffine.apply(
                x, self.lu, self.diagonal_u(), self.bias, self.strict_lower_mask, self.strict_upper_mask,
                self.block_leaf,
            )
        return y, self.log_abs_det()

    def inverse_rows(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` (B, n) -> ``x = U^{-1} L^{-1} (y - b)`` (B, n) by two triangular solves,
        and ``log|det dx/dy| = -sum_i log|U_ii|`` (0-dim, the same for every row)."""
        self.check_invertible()
        x = lu_affine_inverse(y, self.matrix_l(), self.matrix_u(), self.bias)
        return x, -self.log_abs_det()

    def extra_repr(self) -> str:
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        return f"features={self.features}, diag={self.diag_mode!r}{groups}"


class LeakySoftplus(Transform):
    """Elementwise ``f(x) = a x + (1 - a) softplus(x)``, ``ALPHA_MIN <= a < 1`` (``ALPHA_MIN = 1e-4``).

    ``f'(x) = a + (1 - a) sigmoid(x)`` lies in ``(a, 1)``, so ``f`` is strictly
    increasing and convex; its inverse (:func:`lunet.functional.leaky_softplus_inverse`)
    starts from a table of cubic pieces and takes a number of Newton steps fixed in
    advance, exact to float precision, with gradients by the implicit-function theorem.

    Args:
        alpha: the slope ``a`` for ``x -> -inf``.
        learn_alpha: learn ``a`` (parametrised as ``sigmoid(alpha_logit)``, so it stays in
            (0, 1); the inverse refuses a slope that has left ``[ALPHA_MIN, 1)``).
        groups: with ``learn_alpha``, one learned slope for each of this many consecutive
            groups of features (the groups of a grouped :class:`LULinear`), else one for all.
    """

    def __init__(self, alpha: float = 0.1, learn_alpha: bool = False, groups: int = 1) -> None:
        super().__init__()
        self.groups = check_positive_int(groups, "groups")
        # the same range and message as functional.table_step, which refuses a learned slope that drifts out
        if not (isinstance(alpha, (int, float)) and ALPHA_MIN <= float(alpha) < 1.0):
            raise ValueError(
                f"alpha must lie in [{ALPHA_MIN:g}, 1), the slopes for which LeakySoftplus's "
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

    @torch.no_grad()
    def group(self, g: int) -> "LeakySoftplus":
        """A new activation with group ``g``'s slope alone (learned if this one's is, as a copy)."""
        if not 0 <= g < self.groups:
            raise ValueError(f"group must lie in [0, {self.groups}), got {g}")
        if not self.learn_alpha:
            return LeakySoftplus(self._fixed_alpha)
        alone = LeakySoftplus(0.5, learn_alpha=True).to(self.alpha_logit)
        alone.alpha_logit.copy_(self.alpha_logit.reshape(-1)[g if self.groups > 1 else 0])
        return alone

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

    def forward_rows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, n) -> ``f(x)`` elementwise (B, n), and ``sum_i log f'(x_i)`` over the features (B,)."""
        a = self._alpha(x)
        if plain_ops_wanted():  # torch.func's transforms take plain ops, not the written-out backwards
            return leaky_softplus(x, a), leaky_softplus_log_derivative(x, a).sum(dim=1)
        if isinstance(a, float):
            if not torch.is_grad_enabled():
                value, logdet = scaled_forward(x, a)
                return value.mul_(1 - a), logdet.add_(x.shape[1] * math.log1p(-a))
            return FixedAlphaForward.apply(x, a)
        if torch.is_grad_enabled():
            return LearnedAlphaForward.apply(x, a)
        # f'(x) lies in (a, 1): its log has no cancellation.
        return leaky_softplus(x, a), leaky_softplus_log_derivative(x, a).sum(dim=1)

    def inverse_rows(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``y`` (B, n) -> ``x = f^{-1}(y)`` elementwise, exact to float precision, and
        ``log|det dx/dy| = -sum_i log f'(x_i)`` over the features (B,)."""
        if self.learn_alpha and self.groups > 1:  # the exact inverse takes one slope at a time
            a = torch.sigmoid(self.alpha_logit).to(y.dtype)
            parts = y.split(self._group_width(y), dim=-1)
            x = torch.cat([leaky_softplus_inverse(part, a[g]) for g, part in enumerate(parts)], dim=-1)
        else:
            x = leaky_softplus_inverse(y, self._alpha(y))
        return x, -leaky_softplus_log_derivative(x, self._alpha(x)).sum(dim=-1)

    def extra_repr(self) -> str:
        alphas = self.alpha.detach().reshape(-1).tolist()
        shown = f"{alphas[0]:.4g}" if len(alphas) == 1 else "[" + ", ".join(f"{v:.4g}" for v in alphas) + "]"
        return f"alpha={shown}, learn_alpha={self.learn_alpha}" + (f", groups={self.groups}" if self.groups > 1 else "")
