"""LU-Net: a normalizing flow of LU layers and leaky-softplus activations."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any, Optional, Protocol, Sequence, cast

import torch
from torch import nn

from lunet.checks import check_batch
from lunet.density import ReparameterizedDensity
from lunet.distributions import FlowDistribution
from lunet.fast.affine import SPLIT_BELOW_ROWS, SPLIT_MIN_BYTES
from lunet.frozen import FrozenLUNet
from lunet.frozen_sequential import FrozenSequential, frozen_of
from lunet.layers import LeakySoftplus, LULinear
from lunet.limits import check_positive_int
from lunet.spline import MonotoneSpline
from lunet.standardize import Standardize
from lunet.transforms import Composition

__all__ = ["ACTIVATIONS", "LUNet", "ClassConditionalFlow"]

ACTIVATIONS = ("leaky_softplus", "spline")


def _warn_collinear(corr: torch.Tensor, ridge: float) -> None:
    """Warn when a feature of the correlation ``corr`` (D, D) is (nearly) a linear combination of the
    features before it: its spread given them (the square of the Cholesky factor's diagonal entry)
    is below ``ridge``, or the factorisation fails there."""
    chol, info = torch.linalg.cholesky_ex(corr)
    if int(info) > 0:
        weak = [int(info) - 1]
    else:
        weak = torch.nonzero(torch.diagonal(chol).square() < ridge).flatten().tolist()
    if weak:
        shown = ", ".join(str(i) for i in weak[:10]) + (", ..." if len(weak) > 10 else "")
        warnings.warn(
            f"init_gaussian: feature(s) {shown} of the data are (nearly) linear combinations of the features "
            f"before them, with less spread given those than the ridge ({ridge:g}): the ridge, not the data, "
            f"sets the starting Gaussian's spread there",
            stacklevel=4,  # the caller of init_gaussian, past its no_grad wrapper
        )


class LUNet(ReparameterizedDensity, Composition):
    """``num_blocks`` LU layers, each but the last followed by a leaky softplus: the
    composition of a ``Standardize`` and those parts (as :class:`~lunet.Sequential` composes
    them), with the paper's defaults.

    ``activation="spline"`` puts a :class:`~lunet.spline.MonotoneSpline` (``bins`` bins on
    ``[-bound, bound]``, the identity outside, one spline per feature) in place of each leaky
    softplus: a richer elementwise map with an exact closed-form inverse (``alpha`` is then unused).
    ``input_spline=True`` adds one such spline per feature after the standardisation, before the
    first block, which shapes each feature's marginal before the blocks mix them.

    ``forward`` maps data ``x`` (..., features) to the latent ``z`` (..., features) and returns
    ``(z, log|det dz/dx|)`` with the log-determinant per row (...). The
    latent prior is a standard normal.

    The fixed input standardisation ``(x - mean) / std`` (the identity until
    set with :meth:`standardize`) runs before the first block; its Jacobian is
    part of the log-determinant, so likelihoods stay those of the raw data.

    Every call computes from the current weights. For repeated inference
    from fixed weights, :meth:`frozen` gives a frozen copy that runs one dense
    product per block.

    ``groups > 1`` makes it that many independent flows of width ``features / groups``
    side by side (each LU layer block diagonal, see :class:`~lunet.LULinear`),
    whose log-densities add up; :meth:`split_groups` takes them apart. Several
    starts of a small flow train this way for the price of one.
    """

    def __init__(
        self,
        features: int,
        num_blocks: int,
        alpha: float = 0.1,
        diag: str = "exp",
        init: str = "random",
        init_scale: float = 0.1,
        learn_alpha: bool = False,
        groups: int = 1,
        activation: str = "leaky_softplus",
        bins: int = 8,
        bound: float = 5.0,
        input_spline: bool = False,
    ) -> None:
        super().__init__()
        features = check_positive_int(features, "features")
        check_positive_int(num_blocks, "num_blocks")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if activation == "spline" and learn_alpha:
            raise ValueError("learn_alpha applies to the leaky softplus; a spline activation learns its own shape")
        self.activation = activation
        self.input_standardize = Standardize(features)
        self.blocks = nn.ModuleList(
            LULinear(features, diag=diag, init=init, init_scale=init_scale, groups=groups) for _ in range(num_blocks)
        )
        self.activations = nn.ModuleList(
            (LeakySoftplus(alpha, learn_alpha=learn_alpha, groups=groups) if activation == "leaky_softplus"
             else MonotoneSpline(features, bins=bins, bound=bound))
            for _ in range(num_blocks - 1)
        )
        if not isinstance(input_spline, bool):
            raise TypeError(f"input_spline must be True or False, got {input_spline!r}")
        self.input_spline: Optional[MonotoneSpline] = (MonotoneSpline(features, bins=bins, bound=bound)
                                                       if input_spline else None)

    @property
    def transforms(self) -> list[nn.Module]:
        """The parts in order: the standardisation, the input spline if any, then each block and the
        activation after it."""
        parts: list[nn.Module] = [self.input_standardize]
        if self.input_spline is not None:
            parts.append(self.input_spline)
        for i, block in enumerate(self.blocks):
            parts.append(block)
            if i < len(self.activations):
                parts.append(self.activations[i])
        return parts

    @property
    def features(self) -> int:
        return self.input_standardize.features

    def reference(self) -> torch.Tensor:
        return self.input_std

    @property
    def groups(self) -> int:
        return cast(LULinear, self.blocks[0]).groups

    def _lu_layers(self) -> list[LULinear]:
        # the blocks as the LU layers they are; nn.ModuleList types its items as plain modules
        return cast("list[LULinear]", list(self.blocks))

    @torch.no_grad()
    def split_groups(self) -> list["LUNet"]:
        """The ``groups`` independent flows of width ``w = features / groups``, each a copy with its own
        weights; ``sum(f.log_prob(x[..., g * w:(g + 1) * w]))`` over them is ``log_prob(x)``.
        Learned slopes are copied, each group's own, as learned ones."""
        width = self.features // self.groups
        layers = self._lu_layers()
        flows = []
        for g in range(self.groups):
            part = slice(g * width, (g + 1) * width)
            flow = LUNet(width, len(layers), diag=layers[0].diag_mode, init="identity").to(self.input_std)
            flow.input_standardize = self.input_standardize.restricted(part)
            if self.input_spline is not None:
                flow.input_spline = self.input_spline.restricted(part)
            flow.activations = nn.ModuleList(
                act.restricted(part) if isinstance(act, MonotoneSpline) else cast(LeakySoftplus, act).group(g)
                for act in self.activations
            )
            flow.activation = self.activation
            for mine, theirs in zip(flow._lu_layers(), layers):
                mine.set_factors(theirs.matrix_l()[part, part], theirs.matrix_u()[part, part], theirs.bias[part])
            flows.append(flow)
        return flows

    @property
    def input_mean(self) -> torch.Tensor:
        """The standardisation's mean (features,), a buffer of ``input_standardize``."""
        return self.input_standardize.mean

    @property
    def input_std(self) -> torch.Tensor:
        """The standardisation's std (features,), a buffer of ``input_standardize``."""
        return self.input_standardize.std

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def num_parameters(self, kind: str = "free") -> int:
        """Trainable parameters: ``"free"`` (what is learned) or ``"stored"``
        (dense L and U per block, as the paper counts), activations included."""
        lu = sum(block.num_parameters(kind) for block in self._lu_layers())
        elementwise = [*self.activations, *([] if self.input_spline is None else [self.input_spline])]
        rest = sum(p.numel() for a in elementwise for p in a.parameters() if p.requires_grad)
        return lu + rest

    @torch.no_grad()
    def standardize(self, data: torch.Tensor, min_std: Optional[float] = None) -> "LUNet":
        """Fix the input standardisation to the mean and std of ``data`` (N, features), each feature
        by its own spread whatever its scale (see :meth:`Standardize.fit`, which refuses a
        constant feature by name; ``min_std``: an optional floor on every std)."""
        check_batch(data, self.features, "data")
        self.input_standardize.fit(data, min_std)
        return self

    @torch.no_grad()
    def init_gaussian(self, data: torch.Tensor, shift: float = 5.0, ridge: float = 1e-3) -> "LUNet":
        """Start as the best full-covariance Gaussian of ``data`` (N, features), N > features.

        Standardises the input, sets the first block to the whitening map
        ``C^{-1}`` of the Cholesky factor ``C`` of the data's correlation (a
        lower triangular matrix, so exactly an ``L U`` with diagonal ``U``),
        the other blocks to the identity, and (leaky softplus) shifts the pre-activations by
        ``+shift`` (undone by the last bias) so that every activation starts
        in its nearly linear branch; spline activations start as the identity, unshifted. Training
        then starts from the Gaussian fit instead of from scratch.

        ``ridge`` is added to the correlation's diagonal, so it is relative to each
        feature's own spread. Fewer rows than ``features + 1`` (whose covariance is singular:
        held-out rows would lie far off the fit) raise a ValueError; a feature that is
        (nearly) a linear combination of the ones before it, whose conditional spread is
        below the ridge, draws a warning naming it: the ridge, not the data, then sets the
        start's spread across it.
        """
        check_batch(data, self.features, "data")
        if data.shape[0] <= self.features:
            raise ValueError(
                f"init_gaussian needs more rows than dimensions, got {data.shape[0]} rows of {self.features}: "
                f"their covariance is singular, and its Gaussian puts held-out rows far off; "
                f"use standardize() for such data"
            )
        if isinstance(ridge, bool) or not isinstance(ridge, numbers.Real) or not (math.isfinite(ridge) and ridge > 0):
            raise ValueError(f"ridge must be a positive finite number, got {ridge!r}")
        self.standardize(data)
        h = ((data - self.input_mean) / self.input_std).double()
        corr = torch.cov(h.T)
        _warn_collinear(corr, ridge)
        cov = corr + ridge * torch.eye(self.features, dtype=torch.float64, device=corr.device)
        chol = torch.linalg.cholesky(cov)
        eye = torch.eye(self.features, dtype=torch.float64, device=corr.device)
        white = torch.linalg.solve_triangular(chol, eye, upper=False)  # C^{-1}, lower triangular
        d = torch.diagonal(white).clone()
        unit_lower = white / d  # scale columns: C^{-1} = L diag(d)
        layers = self._lu_layers()
        eye = eye.to(layers[0].lu)
        for block in layers:
            block.set_factors(eye, eye, torch.zeros_like(eye[0]))
        first = layers[0]
        first.set_factors(unit_lower.to(eye), torch.diag(d).to(eye), torch.zeros_like(eye[0]))
        if len(layers) > 1 and self.activation == "leaky_softplus":  # a spline starts as the identity
            first.bias.fill_(shift)
            layers[-1].bias.fill_(-shift)
        return self

    def _placement(self) -> tuple[torch.dtype, torch.device]:
        return self.input_mean.dtype, self.input_mean.device

    def _values(self, z: torch.Tensor) -> torch.Tensor:
        return self.inverse_rows(z)[0]

    def distribution(
        self, temperature: float = 1.0, base: Optional[torch.distributions.Distribution] = None,
        validate_args: Optional[bool] = None,
    ) -> FlowDistribution:
        """This flow as a ``torch.distributions.Distribution`` over ``(features,)`` vectors, with latent
        ``N(0, temperature^2 I)`` (in the flow's dtype and on its device at each call) or ``base``;
        it reads the flow's current weights on every call. ``validate_args``: as torch's
        distributions take it (None: torch's global default)."""
        return FlowDistribution(self, temperature, base, validate_args=validate_args)

    def frozen(
        self, split_below_rows: int = SPLIT_BELOW_ROWS, split_min_bytes: int = SPLIT_MIN_BYTES
    ) -> FrozenLUNet | FrozenSequential:
        """A frozen copy of this flow for fast inference (density, inverse, sampling; no autograd):
        a :class:`~lunet.FrozenLUNet`, or with spline activations (or slopes learned per group) a
        :class:`~lunet.frozen_sequential.FrozenSequential` with the same passes.

        It holds its own copy of the current weights with every block's ``L U``
        and inverse formed once, so a pass costs one dense product per block.
        Later changes to this flow (training, ``load_state_dict``, ``.data``
        edits, moves) are not seen by the frozen copy: call ``frozen()`` again. Raises
        ``ValueError`` when a block is not invertible. ``split_below_rows`` and
        ``split_min_bytes`` tune how small batches' products are split among the
        threads (:class:`~lunet.fast.affine.FrozenAffine`), not the results.
        """
        return frozen_of(self.transforms, self.features, split_below_rows=split_below_rows,
                         split_min_bytes=split_min_bytes)


class _ClassFlow(Protocol):
    """What :class:`ClassConditionalFlow` asks of each class's model."""

    def log_prob(self, x: torch.Tensor) -> torch.Tensor: ...

    def sample(self, sample_shape: int | Sequence[int], temperature: float = ..., **kwargs: Any) -> torch.Tensor: ...

    def rsample(self, sample_shape: int | Sequence[int], temperature: float = ..., **kwargs: Any) -> torch.Tensor: ...


class ClassConditionalFlow(nn.Module):
    """One flow per class: ``log p(x | c)``, per-class sampling and the Bayes classifier.

    Args:
        flows: one model per class, each with ``log_prob`` and ``sample``.
        class_log_prior: ``log p(c)`` of shape (C,); uniform when omitted.
    """

    class_log_prior: torch.Tensor

    def __init__(self, flows: Sequence[nn.Module], class_log_prior: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        if len(flows) == 0:
            raise ValueError("ClassConditionalFlow needs at least one flow")
        self.flows = nn.ModuleList(flows)
        c = len(flows)
        prior = torch.full((c,), -math.log(c)) if class_log_prior is None else torch.as_tensor(class_log_prior).float()
        if prior.shape != (c,):
            raise ValueError(f"class_log_prior must have shape ({c},), got {tuple(prior.shape)}")
        self.register_buffer("class_log_prior", prior)

    @property
    def num_classes(self) -> int:
        return len(self.flows)

    def _flows(self) -> list[_ClassFlow]:
        # the models as the densities they are; nn.ModuleList types its items as plain modules
        return cast("list[_ClassFlow]", list(self.flows))

    def _check_class(self, c: int) -> int:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < self.num_classes:
            raise ValueError(f"class must be an integer in [0, {self.num_classes}), got {c!r}")
        return c

    def class_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x | c)`` for every class, (..., D) -> (..., C)."""
        return torch.stack([flow.log_prob(x) for flow in self._flows()], dim=-1)

    def log_prob(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``log p(x | c)`` for ``x`` (..., D) and labels ``c`` of the leading shape (...), or the
        mixture ``log p(x)`` when ``c`` is None; (...)."""
        lp = self.class_log_probs(x)
        if c is None:
            return torch.logsumexp(lp + self.class_log_prior.to(lp.dtype), dim=-1)
        c = torch.as_tensor(c, device=lp.device)
        if c.shape != lp.shape[:-1] or c.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise ValueError(
                f"labels must be an integer tensor of the input's leading shape {tuple(lp.shape[:-1])}, "
                f"got {c.dtype} {tuple(c.shape)}"
            )
        if bool(((c < 0) | (c >= self.num_classes)).any()):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        return lp.gather(-1, c.long().unsqueeze(-1)).squeeze(-1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Bayes classifier ``argmax_c log p(x|c) + log p(c)``, (..., D) -> (...) int64."""
        lp = self.class_log_probs(x)
        return (lp + self.class_log_prior.to(lp.dtype)).argmax(dim=-1)

    def sample(self, sample_shape: int | Sequence[int], c: int, temperature: float = 1.0, **kwargs) -> torch.Tensor:
        """Draws of shape ``sample_shape + (features,)`` from class ``c``'s flow (an int ``n`` means
        ``(n,)``), without gradients."""
        return self._flows()[self._check_class(c)].sample(sample_shape, temperature=temperature, **kwargs)

    def rsample(self, sample_shape: int | Sequence[int], c: int, temperature: float = 1.0, **kwargs) -> torch.Tensor:
        """:meth:`sample`, differentiable in class ``c``'s weights."""
        return self._flows()[self._check_class(c)].rsample(sample_shape, temperature=temperature, **kwargs)
