"""The ``torch.distributions`` face of a flow: ``log_prob``, ``sample(sample_shape)``, ``rsample``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch.distributions import Distribution, constraints

from lunet.checks import check_temperature, sample_shape_of

if TYPE_CHECKING:
    from lunet.flow import LUNet


class FlowDistribution(Distribution):
    """The density of a flow over ``(dim,)`` vectors with latent ``N(0, T^2 I)``: ``x = flow^{-1}(z)``.

    Made by :meth:`lunet.LUNet.distribution`; a light object that holds the flow
    (not a copy) and reads its current weights on every call, so make one per
    use or keep it, as you like. ``event_shape = (dim,)``, ``batch_shape = ()``.
    ``log_prob`` takes ``(..., dim)`` and returns ``(...)``, from one forward pass;
    ``sample`` and ``rsample`` return ``sample_shape + (dim,)``. The temperature
    belongs to the latent, so ``log_prob`` is that of the tempered samples.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, flow: "LUNet", temperature: float = 1.0, validate_args: bool = False) -> None:
        self.flow = flow
        self.temperature = check_temperature(temperature, flow.input_std.dtype)
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
        t = self.temperature
        dim = self.flow.dim
        return -0.5 * (torch.linalg.vecdot(z, z) / (t * t) + dim * math.log(2 * math.pi * t * t)) + logdet

    def rsample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> torch.Tensor:
        """Draws of shape ``sample_shape + (dim,)``, differentiable in the flow's weights."""
        return self.flow.rsample(sample_shape_of(sample_shape), temperature=self.temperature)

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = torch.Size()) -> torch.Tensor:
        """Draws of shape ``sample_shape + (dim,)``, without gradients."""
        with torch.no_grad():
            return self.rsample(sample_shape)

    def __repr__(self) -> str:
        return f"FlowDistribution(dim={self.flow.dim}, temperature={self.temperature:g})"
