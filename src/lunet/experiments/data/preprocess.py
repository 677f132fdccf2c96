"""Dequantisation, the logit transform and bits per dimension.

Images are integers ``x ∈ {0..255}^D``, one image per row of a (B, D) batch.
The density that is reported is that of the dequantised ``y = (x + u) / 256``
in ``[0, 1)^D``; the flow models the logit-space variable
``l = logit(λ + (1 − 2λ) y)``, so that

    log p(y) = log p_flow(l) + Σ_i log((1 − 2λ) / (s_i (1 − s_i))),  s = λ + (1 − 2λ) y.

Two figures are computed from it and must never be mixed:

- :func:`bits_per_dim`, the standard figure of flow papers,
  ``(−log p(y) + D log 256) / (D ln 2)`` (a uniform model scores 8);
- :func:`paper_bits_per_pixel`, the LU-Net paper's convention, only for
  comparing with its table.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from lunet.experiments.config.presets import DEFAULT_LAM
from lunet.limits import check_positive_int

__all__ = ["LN2", "uniform_noise", "dequantize", "logit_transform", "inverse_logit", "bits_per_dim",
           "paper_bits_per_pixel", "ImagePreprocessor"]

LN2 = math.log(2.0)


def _check_lam(lam: float) -> float:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0.0 < lam < 0.5:
        raise ValueError(f"lam must be a number with 0 < lam < 0.5, got {lam!r}")
    return float(lam)


def _check_tensor(x: object, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _check_float_batch(y: object, name: str) -> torch.Tensor:
    y = _check_tensor(y, name)
    if not y.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {y.dtype}")
    if y.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, dims), got rank {y.dim()} shape {tuple(y.shape)}")
    return y


def uniform_noise(
    like: torch.Tensor, generator: Optional[torch.Generator], dtype: torch.dtype, out: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """U[0, 1) draws of ``like``'s shape in ``dtype`` on ``like``'s device: the dequantisation
    noise of a batch. ``generator`` (the default CPU generator if None) draws on its own
    device: a CPU generator draws on the CPU and the draws are copied over, so that a seed
    gives the same noise on every device. ``out``: a buffer to draw into, on the
    generator's device (what a captured training step reads its noise from)."""
    if out is not None:
        return out.uniform_(generator=generator)  # the same draws as torch.rand from that state
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(like.shape, generator=generator, dtype=dtype, device=device).to(like.device)


def dequantize(
    x: torch.Tensor, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
    noise: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Uniform dequantisation ``y = (x + u) / 256``, ``u ~ U[0, 1)``, elementwise.

    ``x`` (B, D) holds pixel values 0..255: uint8, another integer dtype, or
    integer-valued floats. Returns ``y`` (B, D) of ``dtype`` (float32 or
    float64) on ``x``'s device, with ``floor(256 y) == x`` exactly. The noise
    comes from ``generator`` (the default CPU generator if None): a CPU
    generator draws it on the CPU and copies it over, so that a seed gives the
    same noise on every device; a generator on ``x``'s device draws it there,
    with no copy. ``noise`` (B, D) of ``dtype`` on ``x``'s device, drawn from
    U[0, 1) beforehand, takes the place of the draw: what a compiled or
    graph-captured training step, which draws nothing itself, passes.
    """
    x = _check_tensor(x, "pixels")
    if x.dim() != 2:
        raise ValueError(f"pixels must have shape (batch, dims), got rank {x.dim()} shape {tuple(x.shape)}")
    if dtype not in (torch.float32, torch.float64):
        # Half precisions cannot resolve the noise: bfloat16 has spacing 1 on [128, 256).
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if x.dtype.is_complex:
        raise ValueError(f"pixels must be real integers 0..255, got dtype {x.dtype}")
    if x.dtype != torch.uint8:  # uint8 is in range by construction; skip the device sync
        if x.is_floating_point():
            non_integer = ~torch.isfinite(x) | (x != torch.floor(x))
            if bool(non_integer.any()):
                example = x[non_integer][0].item()
                hint = " (already scaled to [0, 1]? pass the raw 0..255 values)" if float(x.max()) <= 1.0 else ""
                raise ValueError(
                    f"pixels must be integer values 0..255; {int(non_integer.sum())} are not, e.g. {example}{hint}"
                )
        out_of_range = (x < 0) | (x > 255)
        if bool(out_of_range.any()):
            raise ValueError(
                f"pixels must lie in 0..255; {int(out_of_range.sum())} do not "
                f"(min {x.min().item()}, max {x.max().item()})"
            )
    if noise is not None:
        if noise.shape != x.shape or noise.dtype != dtype or noise.device != x.device:
            raise ValueError(f"noise must match the pixels: shape {tuple(x.shape)}, {dtype} on {x.device}; got "
                             f"shape {tuple(noise.shape)}, {noise.dtype} on {noise.device}")
        u = noise
    else:
        if generator is not None and generator.device.type != "cpu" and generator.device != x.device:
            raise ValueError(f"generator must be a CPU torch.Generator or one on the pixels' device {x.device}, "
                             f"got one on {generator.device}")
        u = uniform_noise(x, generator, dtype)
    xf = x.to(dtype)
    # x + u can round up to x + 1 (in float32 when u > 1 - 2^-17 for x >= 128);
    # cap it at the largest float below x + 1 so y < 1 and floor(256 y) == x.
    v = torch.minimum(xf + u, torch.nextafter(xf + 1, xf))
    return v / 256  # a power of two: exact


def _logit(y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    c = 1.0 - 2.0 * lam
    s = lam + c * y
    # 1 - s written as lam + c (1 - y): exact cancellation-free form near y = 1,
    # where 1 - s in float32 would keep only a digit or two of lam.
    one_minus_s = lam + c * (1.0 - y)
    log_s = torch.log(s)
    log_1ms = torch.log(one_minus_s)
    logdet = (math.log(c) - log_s - log_1ms).sum(dim=1)
    return log_s - log_1ms, logdet


def logit_transform(y: torch.Tensor, lam: float = DEFAULT_LAM) -> tuple[torch.Tensor, torch.Tensor]:
    """``l = log s − log(1 − s)`` with ``s = λ + (1 − 2λ) y``, for ``y`` (B, D) in [0, 1].

    Returns ``(l, logdet)``: ``l`` (B, D) and ``logdet`` (B,) =
    ``Σ_i log((1 − 2λ) / (s_i (1 − s_i)))`` = ``log|det ∂l/∂y|``, so that
    ``log p(y) = log p_flow(l) + logdet``.
    """
    lam = _check_lam(lam)
    y = _check_float_batch(y, "y")
    outside = ~((y >= 0) & (y <= 1))  # NaN counts as outside
    if bool(outside.any()):
        raise ValueError(f"y must lie in [0, 1]; {int(outside.sum())} value(s) do not (NaN included)")
    return _logit(y, lam)


def inverse_logit(l: torch.Tensor, lam: float = DEFAULT_LAM) -> torch.Tensor:
    """Inverse of :func:`logit_transform`: ``y = (sigmoid(l) − λ) / (1 − 2λ)``, elementwise.

    Any shape. Not clamped: ``l`` from outside the image of [0, 1] maps
    slightly outside [0, 1] (within ``λ / (1 − 2λ)``).
    """
    lam = _check_lam(lam)
    l = _check_tensor(l, "l")
    if not l.is_floating_point():
        raise TypeError(f"l must have a floating dtype, got {l.dtype}")
    return (torch.sigmoid(l) - lam) / (1.0 - 2.0 * lam)


def bits_per_dim(log_prob_y: torch.Tensor, num_dims: int) -> torch.Tensor:
    """The standard figure ``(−log p(y) + D log 256) / (D ln 2)``, elementwise.

    ``log_prob_y`` (B,) is the log-density in nats of the dequantised
    ``y ∈ [0, 1)^D`` (logit Jacobian included); the ``D log 256`` term turns it
    into the density of ``256 y``, i.e. the discrete likelihood bound over the
    256 levels. A uniform model (``log p(y) = 0``) scores exactly 8. Lower is better.
    """
    log_prob_y = _check_tensor(log_prob_y, "log_prob_y")
    d = check_positive_int(num_dims, "num_dims")
    # Written as -log p / (D ln 2) + log2(256) so a uniform model gives exactly 8.0.
    return -log_prob_y / (d * LN2) + 8.0


def paper_bits_per_pixel(logit_space_log_prob: torch.Tensor, num_dims: int) -> torch.Tensor:
    """The LU-Net paper's "bits/pixel", for comparison with its table only.

    Not bits/dim: it is the NLL of the logit-space variable ``l`` per dimension
    in bits, ``−log p_flow(l) / (D ln 2)``, with no logit Jacobian and no
    ``D log 256`` term, minus 0.5. The 0.5 reproduces the authors' Gaussian
    constant ``½ log π`` in place of ``½ log 2π``, which makes their figure
    0.5 bit/dim lower than the logit-space NLL. ``logit_space_log_prob`` (B,)
    is ``log p_flow(l)`` in nats with the correct normal constant. Always label
    the result as the paper's convention; never compare it with
    :func:`bits_per_dim`.
    """
    logit_space_log_prob = _check_tensor(logit_space_log_prob, "logit_space_log_prob")
    d = check_positive_int(num_dims, "num_dims")
    return -logit_space_log_prob / (d * LN2) - 0.5


class ImagePreprocessor:
    """Pixels to the flow's logit space and back, with the likelihood bookkeeping.

    ``to_model_space`` dequantises and applies the logit; add its log-Jacobian
    to the flow's log-density: ``log p(y) = log p_flow(l) + logdet``.
    """

    def __init__(self, lam: float = DEFAULT_LAM, num_dims: int = 784) -> None:
        self.lam = _check_lam(lam)
        self.num_dims = check_positive_int(num_dims, "num_dims")

    def __repr__(self) -> str:
        return f"ImagePreprocessor(lam={self.lam!r}, num_dims={self.num_dims})"

    def to_model_space(
        self, x: torch.Tensor, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float32,
        noise: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels ``x`` (B, num_dims), 0..255 -> ``(l, logdet)``: ``l`` (B, num_dims), ``logdet`` (B,);
        dequantised with ``noise`` or a draw from ``generator`` (:func:`dequantize`)."""
        x = _check_tensor(x, "pixels")
        if x.dim() != 2 or x.shape[1] != self.num_dims:
            raise ValueError(f"pixels must have shape (batch, {self.num_dims}), got {tuple(x.shape)}")
        y = dequantize(x, generator=generator, dtype=dtype, noise=noise)
        return _logit(y, self.lam)  # y is in [0, 1) by construction: no second check

    def to_images(self, l: torch.Tensor) -> torch.Tensor:
        """Logit-space ``l`` (e.g. flow samples) -> images in [0, 1], same shape."""
        return inverse_logit(l, self.lam).clamp(0.0, 1.0)
