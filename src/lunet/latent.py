"""The latent side of every flow: the standard normal's log-density, its draws, and where a flow computes."""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Optional

import torch
from torch import nn

from lunet.checks import check_temperature, sample_shape_of

__all__ = ["LOG_2PI", "standard_normal_log_prob", "latent_draws", "flow_placement", "finite_temperature"]

LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` per row, ``z`` of shape (..., D) -> (...)."""
    return torch.linalg.vecdot(z, z).add_(z.shape[-1] * LOG_2PI).mul_(-0.5)


def latent_draws(
    sample_shape: object, features: int, temperature: object, dtype: torch.dtype, device: torch.device,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Size]:
    """Draws of ``N(0, temperature^2 I)`` as rows ``(prod(sample_shape), features)``, and ``sample_shape``
    as a ``torch.Size`` (an int ``n`` means ``(n,)``): the latent side of every flow's ``sample``,
    with both arguments checked."""
    shape = sample_shape_of(sample_shape)
    scale = check_temperature(temperature, dtype)
    z = torch.randn(shape.numel(), features, generator=generator, dtype=dtype, device=device)
    if scale != 1.0:
        z.mul_(scale)
    return z, shape


def flow_placement(flow: object) -> tuple[torch.dtype, torch.device]:
    """The dtype and device a flow computes in now: its first floating parameter's or buffer's
    for a module, ``flow.dtype`` and ``flow.device`` for a frozen flow; the default dtype on the
    CPU for a flow that has neither."""
    if isinstance(flow, nn.Module):
        tensors = itertools.chain(flow.parameters(), flow.buffers())
        like = next((t for t in tensors if t.is_floating_point()), None)
        if like is None:
            return torch.get_default_dtype(), torch.device("cpu")
        return like.dtype, like.device
    return getattr(flow, "dtype", torch.get_default_dtype()), getattr(flow, "device", torch.device("cpu"))


def finite_temperature(flow: Any, latent_at: Callable[[float], torch.Tensor], temperature: float) -> Optional[float]:
    """Where a flow whose samples overflowed at ``temperature`` stays finite: the first of
    ``temperature / 2``, ``/ 4``, ... at which the latents ``latent_at(t)`` (a few fixed draws at
    temperature ``t``, float64) fit the flow's dtype and its inverse maps them to finite values;
    None when no positive temperature does."""
    dtype, device = flow_placement(flow)
    t = temperature / 2
    while t > 0:
        z = latent_at(t).to(device=device, dtype=dtype)
        if bool(torch.isfinite(z).all()) and bool(torch.isfinite(flow.inverse(z)[0]).all()):
            return t
        t /= 2
    return None
