"""Multiscale RealNVP (Dinh, Sohl-Dickstein and Bengio, 2017): the baseline of Table 1.

The model takes and returns flattened batches ``(B, C*H*W)`` like :class:`lunet.flow.LUNet`
and works on the logit-space images of :mod:`lunet.experiments.data.preprocess` (real values, roughly
in [-14, 14]); dequantisation and the logit transform happen outside it.

Architecture, per scale ``k < num_scales - 1``:

1. three affine couplings with alternating checkerboard masks on ``(C, H, W)``;
2. squeeze (space-to-depth 2x2) to ``(4C, H/2, W/2)``;
3. three affine couplings with alternating channel-wise masks;
4. factor out half of the channels (``2C`` of them) straight to the latent.

The last scale applies four checkerboard couplings to what is left. For 1x28x28 and
two scales this is 1x28x28 -> 4x14x14 -> (2x14x14 out, 2x14x14 on) -> 4 couplings.
The latent ``z`` is the concatenation of the factored-out parts (in order of scale)
and the output of the last scale, each flattened; the prior is a standard normal.

An affine coupling keeps one part ``x_a`` of its input and maps the other,
``y_b = x_b * exp(s(x_a)) + t(x_a)``, with ``s = scale * tanh(raw_s)`` and a learned
per-channel ``scale`` (bounded log-scales keep the flow stable). ``s`` and ``t`` come
from a ResNet: a 3x3 convolution to ``mid_channels`` feature maps, ``num_res_blocks``
pre-activation residual blocks (norm, ReLU, 3x3 conv, twice), norm, ReLU and a 3x3
convolution to ``(s, t)``. That last convolution starts at zero, so a fresh flow maps
every coupling to the identity and the whole model to a permutation of its input.

Exactness of the log-determinant. Only couplings, squeezes and splits lie on the flow
path. A coupling's Jacobian is triangular (in a suitable order of the entries) with
diagonal ``exp(s)`` on the transformed entries and ones elsewhere, so
``log|det| = sum(s)`` over the transformed entries, whatever the conditioner computes;
squeezes and splits are permutations (log-det 0). No normalisation touches the flow
path. Inside the conditioners the convolutions are weight-normalised and the feature
maps normalised per sample (GroupNorm), with no batch statistics and no running
averages, so the density is the same function in ``train()`` and ``eval()`` mode and
each sample's log-density does not depend on the rest of its batch.
"""

from __future__ import annotations

import math
from typing import Optional, cast

import torch
import torch.nn.functional as F
from torch import nn

from lunet.checks import check_batch
from lunet.density import ReparameterizedDensity
from lunet.limits import check_positive_int

__all__ = ["PAPER_PARAMETERS", "WNConv2d", "ResidualBlock", "CouplingNet", "checkerboard", "CheckerboardCoupling",
           "ChannelCoupling", "squeeze", "unsqueeze", "Scale", "RealNVP"]

PAPER_PARAMETERS = 5_390_000  # the LU-Net paper's figure for its RealNVP


class WNConv2d(nn.Module):
    """Weight-normalised 2-D convolution, ``w = g * v / ||v||`` per output channel, 'same' padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True) -> None:
        super().__init__()
        self.padding = kernel_size // 2
        v = torch.empty(out_channels, in_channels, kernel_size, kernel_size)
        nn.init.kaiming_normal_(v, nonlinearity="relu")
        self.v = nn.Parameter(v)
        self.g = nn.Parameter(v.flatten(1).norm(dim=1))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.v.flatten(1).norm(dim=1)
        w = self.v * (self.g / norm).view(-1, 1, 1, 1)
        return F.conv2d(x, w, self.bias, padding=self.padding)


def _norm(channels: int) -> nn.GroupNorm:
    """Per-sample normalisation of ``channels`` feature maps (independent of the batch).

    At most 8 groups of at least two feature maps each, so that a group holds more
    than one value even on a 1x1 feature map.
    """
    return nn.GroupNorm(math.gcd(max(channels // 2, 1), 8), channels)


class ResidualBlock(nn.Module):
    """Pre-activation residual block: ``x + conv(relu(norm(conv(relu(norm(x))))))``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm1 = _norm(channels)
        self.conv1 = WNConv2d(channels, channels, 3, bias=False)
        self.norm2 = _norm(channels)
        self.conv2 = WNConv2d(channels, channels, 3, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        return x + h


class CouplingNet(nn.Module):
    """ResNet conditioner: ``(B, in_channels, H, W)`` -> log-scale and shift, each ``(B, out_channels, H, W)``."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, num_res_blocks: int) -> None:
        super().__init__()
        self.in_conv = WNConv2d(in_channels, mid_channels, 3)
        self.blocks = nn.ModuleList(ResidualBlock(mid_channels) for _ in range(num_res_blocks))
        self.out_norm = _norm(mid_channels)
        self.out_conv = nn.Conv2d(mid_channels, 2 * out_channels, 3, padding=1)
        assert self.out_conv.bias is not None  # made with one
        nn.init.zeros_(self.out_conv.weight)
        nn.init.zeros_(self.out_conv.bias)
        self.scale = nn.Parameter(torch.ones(out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.in_conv(x)
        for block in self.blocks:
            h = block(h)
        raw_s, t = self.out_conv(F.relu(self.out_norm(h))).chunk(2, dim=1)
        return self.scale * torch.tanh(raw_s), t


def checkerboard(height: int, width: int, parity: int) -> torch.Tensor:
    """``(1, 1, H, W)`` mask, 1 where ``(i + j) % 2 == parity`` (the entries kept as they are)."""
    i = torch.arange(height).view(-1, 1)
    j = torch.arange(width).view(1, -1)
    return (((i + j) % 2) == parity).float().view(1, 1, height, width)


class CheckerboardCoupling(nn.Module):
    """Affine coupling that keeps the pixels where the checkerboard mask is 1."""

    mask: torch.Tensor

    def __init__(self, channels: int, size: int, parity: int, mid_channels: int, num_res_blocks: int) -> None:
        super().__init__()
        self.register_buffer("mask", checkerboard(size, size, parity), persistent=False)
        self.net = CouplingNet(channels, channels, mid_channels, num_res_blocks)

    def _st(self, kept: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self.net(kept)
        free = 1.0 - self.mask
        return s * free, t * free

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._st(x * self.mask)
        return x * torch.exp(s) + t, s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._st(y * self.mask)
        return (y - t) * torch.exp(-s), -s.flatten(1).sum(1)


class ChannelCoupling(nn.Module):
    """Affine coupling that keeps one half of the channels (the first, or the second when ``flip``)."""

    def __init__(self, channels: int, flip: bool, mid_channels: int, num_res_blocks: int) -> None:
        super().__init__()
        self.flip = flip
        half = channels // 2
        self.net = CouplingNet(half, half, mid_channels, num_res_blocks)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = x.chunk(2, dim=1)
        return (b, a) if self.flip else (a, b)

    def _join(self, kept: torch.Tensor, moved: torch.Tensor) -> torch.Tensor:
        return torch.cat((moved, kept) if self.flip else (kept, moved), dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, moved = self._split(x)
        s, t = self.net(kept)
        return self._join(kept, moved * torch.exp(s) + t), s.flatten(1).sum(1)

    def inverse(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kept, moved = self._split(y)
        s, t = self.net(kept)
        return self._join(kept, (moved - t) * torch.exp(-s)), -s.flatten(1).sum(1)


def squeeze(x: torch.Tensor) -> torch.Tensor:
    """Space-to-depth: ``(B, C, H, W)`` -> ``(B, 4C, H/2, W/2)``."""
    return F.pixel_unshuffle(x, 2)


def unsqueeze(x: torch.Tensor) -> torch.Tensor:
    """Depth-to-space, the inverse of :func:`squeeze`."""
    return F.pixel_shuffle(x, 2)


class Scale(nn.Module):
    """One scale: checkerboard couplings, then (unless last) squeeze, channel couplings and a split."""

    def __init__(self, channels: int, size: int, last: bool, mid_channels: int, num_res_blocks: int) -> None:
        super().__init__()
        self.last = last
        n_checker = 4 if last else 3
        self.checker = nn.ModuleList(
            CheckerboardCoupling(channels, size, i % 2, mid_channels, num_res_blocks) for i in range(n_checker)
        )
        self.channel = nn.ModuleList(
            () if last else (ChannelCoupling(4 * channels, i % 2 == 1, mid_channels, num_res_blocks) for i in range(3))
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor], torch.Tensor]:
        """-> (carried on, factored out or None, log-det per sample)."""
        logdet = x.new_zeros(x.shape[0])
        for coupling in self.checker:
            x, ld = coupling(x)
            logdet = logdet + ld
        if self.last:
            return x, None, logdet
        x = squeeze(x)
        for coupling in self.channel:
            x, ld = coupling(x)
            logdet = logdet + ld
        on, out = x.chunk(2, dim=1)
        return on, out, logdet

    def inverse(self, on: torch.Tensor, out: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (the scale's input, log-det of the inverse per sample)."""
        x = on
        logdet = on.new_zeros(on.shape[0])
        if not self.last:
            assert out is not None  # every scale but the last factors out half
            x = torch.cat((on, out), dim=1)
            for coupling in reversed(self.channel):
                x, ld = cast(ChannelCoupling, coupling).inverse(x)
                logdet = logdet + ld
            x = unsqueeze(x)
        for coupling in reversed(self.checker):
            x, ld = cast(CheckerboardCoupling, coupling).inverse(x)
            logdet = logdet + ld
        return x, logdet


class RealNVP(ReparameterizedDensity, nn.Module):
    """Multiscale RealNVP on ``in_channels x image_size x image_size`` images, flattened.

    ``forward`` maps data ``x`` (B, features) to the latent ``z`` (B, features), ``features = C*H*W``,
    and returns ``(z, log|det dz/dx|)`` with the log-determinant per sample (B,). The
    latent prior is a standard normal. See the module docstring for the architecture.

    Args:
        in_channels: image channels ``C``.
        image_size: height = width; divisible by ``2 ** (num_scales - 1)``.
        num_scales: scales; every one but the last squeezes and factors out half.
        mid_channels: feature maps in the coupling ResNets (the same at every scale).
        num_res_blocks: residual blocks per coupling ResNet.

    The defaults give 5,224,307 trainable parameters for 1x28x28, 3.1% below the
    5.39M the LU-Net paper reports for its RealNVP.
    """

    features: int

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 28,
        num_scales: int = 2,
        mid_channels: int = 64,
        num_res_blocks: int = 7,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.image_size = check_positive_int(image_size, "image_size")
        self.num_scales = check_positive_int(num_scales, "num_scales")
        self.mid_channels = check_positive_int(mid_channels, "mid_channels")
        self.num_res_blocks = check_positive_int(num_res_blocks, "num_res_blocks")
        factor = 2 ** (num_scales - 1)
        if image_size % factor != 0:
            raise ValueError(
                f"image_size must be divisible by 2**(num_scales-1) = {factor} so that every scale can "
                f"squeeze 2x2; got image_size={image_size}, num_scales={num_scales}"
            )
        self.features = in_channels * image_size * image_size

        scales = []
        # Shapes (C, H, W) of the latent pieces, in the order they are concatenated.
        self._latent_shapes: list[tuple[int, int, int]] = []
        c, size = in_channels, image_size
        for k in range(num_scales):
            last = k == num_scales - 1
            scales.append(Scale(c, size, last, mid_channels, num_res_blocks))
            if not last:
                c, size = 2 * c, size // 2
                self._latent_shapes.append((c, size, size))
        self._latent_shapes.append((c, size, size))
        self.scales = nn.ModuleList(scales)

    def num_parameters(self, kind: str = "free") -> int:
        """Trainable parameters. ``"free"`` and ``"stored"`` agree: nothing is masked out of a stored tensor."""
        if kind not in ("free", "stored"):
            raise ValueError(f"kind must be 'free' or 'stored', got {kind!r}")
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, image_size={self.image_size}, num_scales={self.num_scales}, "
            f"mid_channels={self.mid_channels}, num_res_blocks={self.num_res_blocks}"
        )

    def _ref(self) -> torch.Tensor:
        return cast(CheckerboardCoupling, cast(Scale, self.scales[0]).checker[0]).net.scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, features) -> ``z`` (B, features), ``log|det dz/dx|`` (B,)."""
        check_batch(x, self.features, like=self._ref())
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = x.shape[0]
        h = x.reshape(b, self.in_channels, self.image_size, self.image_size)
        logdet = x.new_zeros(b)
        pieces = []
        for scale in self.scales:
            h, out, ld = scale(h)
            logdet = logdet + ld
            if out is not None:
                pieces.append(out.reshape(b, -1))
        pieces.append(h.reshape(b, -1))
        return torch.cat(pieces, dim=1), logdet

    def inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``z`` (B, features) -> ``x`` (B, features), the exact inverse of :meth:`forward`, and
        ``log|det dx/dz|`` (B,)."""
        check_batch(z, self.features, like=self._ref())
        return self._inverse(z)

    def _inverse(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = z.shape[0]
        sizes = [c * hh * ww for c, hh, ww in self._latent_shapes]
        pieces = [p.reshape(b, *shape) for p, shape in zip(z.split(sizes, dim=1), self._latent_shapes)]
        h = pieces[-1]
        logdet = z.new_zeros(b)
        for k in reversed(range(self.num_scales)):
            scale = cast(Scale, self.scales[k])
            h, ld = scale.inverse(h, None if scale.last else pieces[k])
            logdet = logdet + ld
        return h.reshape(b, self.features), logdet

    def _placement(self) -> tuple[torch.dtype, torch.device]:
        ref = self._ref()
        return ref.dtype, ref.device

    def _values(self, z: torch.Tensor) -> torch.Tensor:
        return self._inverse(z)[0]
