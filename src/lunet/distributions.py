"""The ``torch.distributions`` face of a flow: a distribution, and an adapter for ``TransformedDistribution``."""

from __future__ import annotations

import contextlib
from typing import Optional, Protocol, Sequence

import torch
from torch.distributions import Distribution, Independent, Normal, constraints
from torch.distributions.transforms import Transform

from lunet.base import Invertible
from lunet.checks import check_temperature, sample_shape_of, set_value_checks, value_checks_enabled
from lunet.frozen import FrozenLUNet
from lunet.frozen_sequential import FrozenSequential
from lunet.latent import flow_placement

__all__ = ["Flow", "standard_normal", "FlowDistributionBase", "FlowDistribution", "TorchTransform"]


def standard_normal(features: int, like: torch.Tensor, temperature: float = 1.0) -> Distribution:
    """``N(0, temperature^2 I)`` over ``(features,)`` vectors, on ``like``'s device and dtype; it checks
    no values (its callers check theirs)."""
    loc = torch.zeros(features, dtype=like.dtype, device=like.device)
    return Independent(Normal(loc, torch.full_like(loc, temperature), validate_args=False), 1, validate_args=False)


class Flow(Invertible, Protocol):
    """A flow as :class:`FlowDistribution` takes it: a transform of the contract of known width."""

    @property
    def features(self) -> int: ...


def _is_frozen(flow: object) -> bool:
    return isinstance(flow, (FrozenLUNet, FrozenSequential))


class FlowDistributionBase(Distribution):
    """What every flow's distribution shares: real vectors as support, no closed-form moments, and
    lunet's value checks that follow ``validate_args`` (off: nothing is checked)."""

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    @property
    def mean(self) -> torch.Tensor:
        raise NotImplementedError("a flow's mean has no closed form; estimate it from samples")

    @property
    def variance(self) -> torch.Tensor:
        raise NotImplementedError("a flow's variance has no closed form; estimate it from samples")

    def _checks(self) -> contextlib.AbstractContextManager:
        """The flow's own value checks: as set globally when validating, none otherwise."""
        return contextlib.nullcontext() if self._validate_args else set_value_checks(False)


class FlowDistribution(FlowDistributionBase):
    """The density of ``x = flow^{-1}(z)``, ``z`` drawn from ``base`` (by default ``N(0, T^2 I)``).

    Made by :meth:`lunet.LUNet.distribution`; a light object that holds the flow
    (not a copy) and reads its current weights on every call. ``event_shape =
    (features,)``, ``batch_shape = ()``. ``log_prob`` takes ``(..., features)`` and returns
    ``(...)``, from one forward pass: ``base.log_prob(z) + log|det dz/dx|``;
    ``sample`` and ``rsample`` return ``sample_shape + (features,)``.

    ``flow`` is any transform of the contract (``forward(x) -> (z, log-det)``,
    ``inverse(z) -> (x, log-det)``) with a ``features``, a frozen flow (``flow.frozen()``)
    included; ``base`` any distribution with ``event_shape == (features,)``. The default
    base follows the flow: made in the flow's dtype and on its device as they are at
    each call, so a distribution made before ``flow.double()`` or ``flow.to(device)``
    keeps working. A ``base`` of your own stays as you made it.

    ``validate_args`` as in ``torch.distributions``: None takes torch's global default
    (``Distribution.set_default_validate_args``). When on, ``log_prob`` checks its
    value's shape and support as torch's distributions do; when off, nothing is
    checked, lunet's own value checks (NaN and inf inputs, a singular ``U``) included.
    Checks that read values back are skipped inside ``torch.compile`` and ``torch.func``
    transforms, and under ``lunet.set_value_checks(False)``.

    Over a frozen flow, which computes without autograd, ``rsample`` raises
    ``NotImplementedError`` (``has_rsample`` is False) rather than return draws
    without a gradient; ``sample`` works.
    """

    def __init__(
        self, flow: Flow, temperature: float = 1.0, base: Optional[Distribution] = None,
        validate_args: Optional[bool] = None,
    ) -> None:
        self.flow = flow
        dtype, _ = flow_placement(flow)
        if base is None:
            self.temperature = check_temperature(temperature, dtype)
        elif temperature != 1.0:
            raise ValueError(
                "give a temperature or a base distribution, not both: a temperature scales the standard base"
            )
        elif tuple(base.event_shape) != (flow.features,) or tuple(base.batch_shape) != ():
            raise ValueError(
                f"base must have event_shape ({flow.features},) and batch_shape (), got "
                f"{tuple(base.event_shape)} and {tuple(base.batch_shape)}"
            )
        else:
            self.temperature = 1.0
        self._base = base
        self._standard: Optional[tuple[torch.dtype, torch.device, Distribution]] = None
        if _is_frozen(flow):
            self.has_rsample = False
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([flow.features]), validate_args=validate_args)

    @property
    def base(self) -> Distribution:
        """The latent distribution: the ``base`` given, or ``N(0, T^2 I)`` in the flow's current dtype
        and on its current device (made again only when they change)."""
        if self._base is not None:
            return self._base
        dtype, device = flow_placement(self.flow)
        made = self._standard
        if made is None or made[0] != dtype or made[1] != device:
            like = torch.empty((), dtype=dtype, device=device)
            normal = standard_normal(self.flow.features, like, check_temperature(self.temperature, dtype))
            made = self._standard = (dtype, device, normal)
        return made[2]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log p(value)`` in nats, (..., features) -> (...)."""
        if self._validate_args and value_checks_enabled():
            self._validate_sample(value)
        with self._checks():
            z, logdet = self.flow(value)
        return self.base.log_prob(z) + logdet

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> torch.Tensor:
        """Draws of shape ``sample_shape + (features,)``, differentiable in the flow's weights (and the
        base's parameters)."""
        if not self.has_rsample:
            raise NotImplementedError(
                "a frozen flow (flow.frozen()) computes without autograd, so its draws carry no gradient: "
                "use sample(), or a distribution of the flow itself for rsample()"
            )
        return self._draw(sample_shape)

    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> torch.Tensor:
        """Draws of shape ``sample_shape + (features,)``, without gradients."""
        with torch.no_grad():
            return self._draw(sample_shape)

    def _draw(self, sample_shape: Sequence[int]) -> torch.Tensor:
        shape = sample_shape_of(sample_shape)
        base = self.base
        z = base.rsample(shape) if base.has_rsample else base.sample(shape)
        with self._checks():
            return self.flow.inverse(z)[0]

    def __repr__(self) -> str:
        return f"FlowDistribution(features={self.flow.features}, base={self.base})"


class TorchTransform(Transform):
    """A transform of the contract as a ``torch.distributions.transforms.Transform``.

    ``torch.distributions`` runs transforms from the base to the data, so this
    adapter's map is the transform's **inverse** (latent -> data) and its
    inverse the transform's ``forward``. ``TransformedDistribution(base,
    TorchTransform(flow))`` is then the flow's density.

    ``cache_size`` follows torch's transforms: 0 (the default) keeps nothing, so
    ``log_abs_det_jacobian`` runs the transform's forward pass again (``log_prob``
    then costs two passes; :class:`FlowDistribution` costs one); 1 is torch's
    one-entry identity cache, which also keeps the log-det of the last pass, served
    when the same tensor objects come back. Like torch's, it serves the entry even
    after the weights change: make a cached adapter per use. Copies and pickles
    leave the cache behind. ``with_cache(n)`` gives the adapter with cache size ``n``.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, transform: Invertible, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.transform = transform
        self._last: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TorchTransform) and other.transform is self.transform

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state["_last"] = None
        if "_cached_x_y" in state:
            state["_cached_x_y"] = None, None
        return state

    def with_cache(self, cache_size: int = 1) -> "TorchTransform":
        """This adapter with cache size ``cache_size`` (0 or 1): itself if it has that size already."""
        if self._cache_size == cache_size:
            return self
        return TorchTransform(self.transform, cache_size=cache_size)

    def _call(self, z: torch.Tensor) -> torch.Tensor:
        x, logdet = self.transform.inverse(z)
        if self._cache_size:
            self._last = (z, x, logdet)
        return x

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet = self.transform(x)
        if self._cache_size:
            self._last = (z, x, -logdet)
        return z

    # torch names them (x, y); here they are the latent z and the data x
    def log_abs_det_jacobian(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``log|det dx/dz|`` (...): with a cache, that of the last pass when it was on these very
        tensors; else from the transform's forward pass on ``x``."""
        last = self._last
        if last is not None and last[0] is z and last[1] is x:
            return last[2]
        return -self.transform(x)[1]
