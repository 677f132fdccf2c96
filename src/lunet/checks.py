"""Input validation shared by every public entry point.

Bad input must fail early with a message that names the problem and the
expected shape, never deep inside torch.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional

import torch
from torch.autograd import forward_ad

__all__ = ["set_value_checks", "value_checks_enabled", "plain_ops_wanted", "plain_backward_wanted", "check_features",
           "check_batch", "sample_shape_of", "check_temperature"]

_value_checks = True


class set_value_checks:
    """Switch on or off the input checks that read a value back to the host: NaN/inf inputs,
    a singular ``U`` before an inverse. Shape, dtype and device checks always stay.

    Works as a function (``lunet.set_value_checks(False)``) and as a context manager
    (``with lunet.set_value_checks(False): ...``, the previous setting restored on exit),
    as :class:`torch.set_grad_enabled` does. Inside ``torch.compile`` these checks are
    always skipped, so a compiled pass has no host synchronisation; switch them off
    in an eager GPU loop whose inputs were checked once, at the boundary.
    """

    def __init__(self, enabled: bool) -> None:
        global _value_checks
        self.previous = _value_checks
        _value_checks = bool(enabled)

    def __enter__(self) -> "set_value_checks":
        return self

    def __exit__(self, *exc: object) -> None:
        global _value_checks
        _value_checks = self.previous


def value_checks_enabled() -> bool:
    """Whether the checks that read values back to the host run now (see :class:`set_value_checks`):
    never inside ``torch.compile`` or a ``torch.func`` transform, where no value can be read."""
    return _value_checks and not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()


def plain_ops_wanted() -> bool:
    """Whether a pass must run as plain differentiable ops instead of the fast kernels: inside a
    ``torch.func`` transform (``vmap``, ``grad``, ``jacrev``, ``jvp``, ...), whose tensors the
    kernels' in-place strided products and ``out=`` writes cannot take, or inside a
    ``torch.autograd.forward_ad`` dual level, which the kernels' written-out backwards do not
    serve. One flag read each (tens of nanoseconds), no host synchronisation."""
    return torch._C._are_functorch_transforms_active() or forward_ad._current_level >= 0


def plain_backward_wanted(grad: torch.Tensor) -> bool:
    """Whether a written-out backward pass, given the incoming gradient ``grad``, must give way to
    plain differentiable ops: when it records a graph (``create_graph=True``: Hessians, double
    backward), when :func:`plain_ops_wanted`, or when autograd batches the gradients
    (``is_grads_batched=True``, ``jacobian(vectorize=True)``). Never inside ``torch.compile``,
    whose graphs take first derivatives only."""
    if torch.compiler.is_compiling():
        return False
    return torch.is_grad_enabled() or plain_ops_wanted() or torch._C._functorch.is_legacy_batchedtensor(grad)


def check_features(
    x: object, features: Optional[int] = None, name: str = "input", check_finite: bool = True,
    like: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Validate a tensor of shape ``(..., features)`` (any leading batch dimensions, ``features`` features
    last; any last size when ``features`` is None) and return it.

    Raises ``TypeError`` for a non-tensor or non-floating dtype, or a dtype
    other than that of ``like`` (a model's parameter), and ``ValueError`` for
    a device other than ``like``'s, a 0-dim tensor, a wrong feature size or
    NaN/inf values.
    """
    want = f"(..., {features})" if features is not None else "(..., features)"
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {want}, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must have a floating dtype (float32 or float64), got {x.dtype}; "
            f"convert it with .float() or .double()"
        )
    if x.dim() == 0:
        raise ValueError(f"{name} must have shape {want}, got a 0-dim tensor")
    if features is not None and x.shape[-1] != features:
        raise ValueError(f"{name} must have shape {want}, got feature size {x.shape[-1]} in {tuple(x.shape)}")
    _check_placement_and_values(x, name, check_finite, like)
    return x


def check_batch(
    x: object, features: int, name: str = "input", check_finite: bool = True, like: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Validate a batch of vectors of shape ``(B, features)`` and return it.

    Raises as :func:`check_features` does, and ``ValueError`` for a rank other than 2.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, {features}), got {type(x).__name__}")
    if x.dim() != 2 and x.is_floating_point():
        raise ValueError(f"{name} must have shape (batch, {features}), got rank {x.dim()} shape {tuple(x.shape)}")
    return check_features(x, features, name, check_finite, like)


def _check_placement_and_values(x: torch.Tensor, name: str, check_finite: bool, like: Optional[torch.Tensor]) -> None:
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
    if check_finite and value_checks_enabled() and not math.isfinite(x.sum().item()):
        bad = int((~torch.isfinite(x)).sum())
        if bad:
            raise ValueError(f"{name} holds {bad} NaN or infinite value(s); shape {tuple(x.shape)}")


def sample_shape_of(sample_shape: object, name: str = "sample_shape") -> torch.Size:
    """``sample_shape`` as a ``torch.Size``: a non-negative int ``n`` means ``(n,)``, as
    ``torch.distributions`` takes a shape; ``ValueError`` for anything else."""
    # anything else goes to torch.Size as given: its TypeError is the check
    dims: Any = sample_shape
    if isinstance(sample_shape, int) and not isinstance(sample_shape, bool):
        dims = (sample_shape,)
    try:
        shape = torch.Size(dims)
    except TypeError:
        raise ValueError(f"{name} must be an int or a sequence of ints, got {sample_shape!r}") from None
    if any(d < 0 for d in shape):
        raise ValueError(f"{name} must not hold negative sizes, got {tuple(shape)}")
    return shape


def check_temperature(value: object, dtype: Optional[torch.dtype] = None) -> float:
    """Return ``value`` as a float, raising ``ValueError`` unless it is positive and finite, and,
    given the ``dtype`` of the draws, small enough that scaled normal draws stay finite in it."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.requires_grad:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be a positive finite number, got {value!r}")
    value = float(value)
    # normal draws stay below 10 in magnitude; the network may grow them a good deal more
    if dtype is not None and value > torch.finfo(dtype).max / 1e6:
        raise ValueError(f"temperature {value:g} is too large for {dtype}: the draws would overflow")
    return float(value)
