"""The ``torch.distributions`` face of a flow: a distribution, and an adapter for ``TransformedDistribution``."""

from __future__ import annotations

import itertools
from typing import Optional

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal, constraints
from torch.distributions.transforms import Transform

from lunet.checks import check_temperature, sample_shape_of


def standard_normal(dim: int, like: torch.Tensor, temperature: float = 1.0) -> Distribution:
    """``N(0, temperature^2 I)`` over ``(dim,)`` vectors, on ``like``'s device and dtype."""
    loc = torch.zeros(dim, dtype=like.dtype, device=like.device)
    return Independent(Normal(loc, torch.full_like(loc, temperature)), 1)


class FlowDistribution(Distribution):
    """The density of ``x = flow^{-1}(z)``, ``z`` drawn from ``base`` (by default ``N(0, T^2 I)``).

    Made by :meth:`lunet.LUNet.distribution`; a light object that holds the flow
    (not a copy) and reads its current weights on every call. ``event_shape =
    (dim,)``, ``batch_shape = ()``. ``log_prob`` takes ``(..., dim)`` and returns
    ``(...)``, from one forward pass: ``base.log_prob(z) + log|det dz/dx|``;
    ``sample`` and ``rsample`` return ``sample_shape + (dim,)``.

    ``flow`` is any transform of the contract (``forward(x) -> (z, log-det)``,
    ``inverse(z) -> (x, log-det)``) with a ``dim``; ``base`` any distribution
    with ``event_shape == (dim,)``.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self, flow: nn.Module, temperature: float = 1.0, base: Optional[Distribution] = None,
        validate_args: bool = False,
    ) -> None:
        self.flow = flow
        like = next((t for t in itertools.chain(flow.parameters(), flow.buffers()) if t.is_floating_point()), None)
        if like is None:
            like = torch.zeros(())  # a flow without tensors: the default dtype on the CPU
        if base is None:
            base = standard_normal(flow.dim, like, check_temperature(temperature, like.dtype))
        elif temperature != 1.0:
            raise ValueError("give a temperature or a base distribution, not both: a temperature scales the standard base")
        if tuple(base.event_shape) != (flow.dim,) or tuple(base.batch_shape) != ():
            raise ValueError(
                f"base must have event_shape ({flow.dim},) and batch_shape (), got "
                f"{tuple(base.event_shape)} and {tuple(base.batch_shape)}"
            )
        self.base = base
        super().__init__(batch_shape=torch.Size(), event_shape=torch.Size([flow.dim]), validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        raise NotImplementedError("a flow's mean has no closed form; estimate it from samples")

    @property
    def variance(self) -> torch.Tensor:
        raise NotImplementedError("a flow's variance has no closed form; estimate it from samples")

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log p(value)`` in nats, (..., dim) -> (...)."""
        z, logdet = self.flow(value)
        return self.base.log_prob(z) + logdet

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> torch.Tensor:
        """Draws of shape ``sample_shape + (dim,)``, differentiable in the flow's weights."""
        z = self.base.rsample(sample_shape_of(sample_shape))
        return self.flow.inverse(z)[0]

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> torch.Tensor:
        """Draws of shape ``sample_shape + (dim,)``, without gradients."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def __repr__(self) -> str:
        return f"FlowDistribution(dim={self.flow.dim}, base={self.base})"


class TorchTransform(Transform):
    """A transform of the contract as a ``torch.distributions.transforms.Transform``.

    ``torch.distributions`` runs transforms from the base to the data, so this
    adapter's map is the transform's **inverse** (latent -> data) and its
    inverse the transform's ``forward``. ``TransformedDistribution(base,
    TorchTransform(flow))`` is then the flow's density. The log-det of the last
    pass is kept, keyed by its input and output tensors, so that ``log_prob``
    costs one pass, as torch's ``cache_size=1`` transforms do.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True

    def __init__(self, transform: nn.Module) -> None:
        super().__init__(cache_size=0)
        self.transform = transform
        self._last: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TorchTransform) and other.transform is self.transform

    def _call(self, z: torch.Tensor) -> torch.Tensor:
        x, logdet = self.transform.inverse(z)
        self._last = (z, x, logdet)
        return x

    def _inverse(self, x: torch.Tensor) -> torch.Tensor:
        z, logdet = self.transform(x)
        self._last = (z, x, -logdet)
        return z

    def log_abs_det_jacobian(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log|det dx/dz|`` (...), from the last pass when it was on these tensors."""
        if self._last is not None and self._last[0] is z and self._last[1] is x:
            return self._last[2]
        return self.transform.inverse(z)[1]
