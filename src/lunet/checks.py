"""Input validation shared by every public entry point.

Bad input must fail early with a message that names the problem and the
expected shape, never deep inside torch.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch


def check_batch(
    x: object, dim: int, name: str = "input", check_finite: bool = True, like: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Validate a batch of vectors of shape ``(B, dim)`` and return it.

    Raises ``TypeError`` for a non-tensor or non-floating dtype, or a dtype
    other than that of ``like`` (a model's parameter), and ``ValueError`` for
    a device other than ``like``'s, a wrong rank, a wrong feature size or
    NaN/inf values.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, {dim}), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must have a floating dtype (float32 or float64), got {x.dtype}; "
            f"convert it with .float() or .double()"
        )
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, {dim}), got rank {x.dim()} shape {tuple(x.shape)}")
    if x.shape[1] != dim:
        raise ValueError(f"{name} must have shape (batch, {dim}), got feature size {x.shape[1]} in {tuple(x.shape)}")
    if like is not None:
        if x.dtype != like.dtype:
            raise TypeError(
                f"{name} has dtype {x.dtype} but the model's weights are {like.dtype}; "
                f"convert the input with .to({like.dtype}) or the model with .to({x.dtype})"
            )
        if x.device != like.device:
            raise ValueError(
                f"{name} is on {x.device} but the model is on {like.device}; "
                f"move the input with .to({str(like.device)!r}) or the model with .to({str(x.device)!r})"
            )
    # NaN and inf survive a sum, so one cheap reduction screens the batch; only
    # when it is not finite (bad values, or finite ones whose sum overflowed)
    # is every entry checked.
    if check_finite and not math.isfinite(x.sum().item()):
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(f"{name} holds {bad} NaN or infinite value(s); shape {tuple(x.shape)}")
    return x


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an int, raising ``ValueError`` unless it is a positive integer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_temperature(value: object, dtype: Optional[torch.dtype] = None) -> float:
    """Return ``value`` as a float, raising ``ValueError`` unless it is positive and finite, and,
    given the ``dtype`` of the draws, small enough that scaled normal draws stay finite in it."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.requires_grad:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value) and value > 0):
        raise ValueError(f"temperature must be a positive finite number, got {value!r}")
    # normal draws stay below 10 in magnitude; the network may grow them a good deal more
    if dtype is not None and value > torch.finfo(dtype).max / 1e6:
        raise ValueError(f"temperature {value:g} is too large for {dtype}: the draws would overflow")
    return float(value)
