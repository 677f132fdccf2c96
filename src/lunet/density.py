"""The density face every unconditional flow shares: ``log_prob``, ``sample`` and, for a module
that keeps autograd, ``rsample``, written once over a flow's own passes.

A flow provides ``forward(x) -> (z, log|det dz/dx|)``, ``features``, and two hooks:
``_placement()`` (the dtype and device its draws are made in) and ``_values(z)`` (latent rows
``(N, features)`` to data rows, the values alone). Frozen flows compute without autograd
(``differentiable = False``): their ``log_prob`` runs under ``no_grad`` and they have no
``rsample``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import torch

from lunet.latent import latent_draws, standard_normal_log_prob

__all__ = ["Density", "ReparameterizedDensity"]


class Density:
    """``log_prob`` and ``sample`` over a flow's ``forward`` and its ``_values`` hook."""

    differentiable: bool = True

    if TYPE_CHECKING:
        # what each flow defines: its width (None where it states none) and its density pass
        @property
        def features(self) -> Optional[int]: ...

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def _placement(self) -> tuple[torch.dtype, torch.device]:
        raise NotImplementedError

    def _values(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _width(self) -> int:
        """The width of the draws (``features``); a flow that may not know it says so here."""
        assert self.features is not None
        return self.features

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` in nats under the standard normal latent, (..., features) -> (...)."""
        self._width()
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.differentiable):
            z, logdet = self.forward(x)
            return standard_normal_log_prob(z) + logdet

    def sample(
        self,
        sample_shape: int | Sequence[int] = (),
        temperature: float = 1.0,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Draws of shape ``sample_shape + (features,)`` (an int ``n`` means ``(n,)``), latent standard
        deviation ``temperature``; without gradients, as ``torch.distributions``' ``sample``."""
        with torch.no_grad():
            return self._draw(sample_shape, temperature, generator)

    def _draw(self, sample_shape: int | Sequence[int], temperature: float,
              generator: Optional[torch.Generator]) -> torch.Tensor:
        width = self._width()
        dtype, device = self._placement()
        z, shape = latent_draws(sample_shape, width, temperature, dtype, device, generator)
        return self._values(z).view(*shape, width)


class ReparameterizedDensity(Density):
    """:class:`Density` with ``rsample``: draws differentiable in the flow's weights."""

    def rsample(
        self,
        sample_shape: int | Sequence[int] = (),
        temperature: float = 1.0,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """:meth:`sample`, reparameterised: with autograd on, the draws are differentiable in the
        weights, ``sample_shape + (features,)``."""
        return self._draw(sample_shape, temperature, generator)
