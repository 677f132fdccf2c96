"""LU-Net: a normalizing flow of LU layers and leaky-softplus activations."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from lunet.checks import check_batch, check_positive_int
from lunet.layers import LeakySoftplus, LULinear

LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` per row, ``z`` of shape (B, D) -> (B,)."""
    return -0.5 * (z.pow(2).sum(dim=1) + z.shape[1] * LOG_2PI)


class LUNet(nn.Module):
    """``num_blocks`` LU layers, each but the last followed by a leaky softplus.

    ``forward`` maps data ``x`` (B, dim) to the latent ``z`` (B, dim) and returns
    ``(z, log|det dz/dx|)`` with the log-determinant per sample (B,). The
    latent prior is a standard normal.

    An optional fixed input standardisation ``(x - mean) / std`` (set with
    :meth:`standardize`) runs before the first block; its Jacobian is part of
    the log-determinant, so likelihoods stay those of the raw data.
    """

    def __init__(
        self,
        dim: int,
        num_blocks: int,
        alpha: float = 0.1,
        diag: str = "exp",
        init: str = "random",
        init_scale: float = 0.1,
        learn_alpha: bool = False,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        check_positive_int(num_blocks, "num_blocks")
        self.blocks = nn.ModuleList(
            LULinear(dim, diag=diag, init=init, init_scale=init_scale) for _ in range(num_blocks)
        )
        self.activations = nn.ModuleList(
            LeakySoftplus(alpha, learnable=learn_alpha) for _ in range(num_blocks - 1)
        )
        self.register_buffer("input_mean", torch.zeros(dim))
        self.register_buffer("input_std", torch.ones(dim))

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def num_parameters(self, kind: str = "free") -> int:
        """Trainable parameters: ``"free"`` (what is learned) or ``"stored"``
        (dense L and U per block, as the paper counts), activations included."""
        lu = sum(block.num_parameters(kind) for block in self.blocks)
        rest = sum(p.numel() for a in self.activations for p in a.parameters() if p.requires_grad)
        return lu + rest

    @torch.no_grad()
    def standardize(self, data: torch.Tensor, min_std: float = 1e-3) -> "LUNet":
        """Fix the input standardisation to the mean and std of ``data`` (N, dim)."""
        check_batch(data, self.dim, "data")
        self.input_mean.copy_(data.mean(dim=0))
        self.input_std.copy_(data.std(dim=0).clamp_min(min_std))
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, dim) -> ``z`` (B, dim), ``log|det dz/dx|`` (B,)."""
        check_batch(x, self.dim)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = (x - self.input_mean) / self.input_std
        # The LU log-dets are the same for every sample: add them up as scalars.
        const = -torch.log(self.input_std).sum()
        logdet = None
        for i, block in enumerate(self.blocks):
            h = block._affine(h)
            const = const + block.log_abs_det()
            if i < len(self.activations):
                h, ld = self.activations[i]._forward(h)
                logdet = ld if logdet is None else logdet + ld
        if logdet is None:
            return h, const.expand(x.shape[0])
        return h, logdet + const

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` (B, dim) -> ``x`` (B, dim), the exact inverse of :meth:`forward`."""
        check_batch(z, self.dim)
        return self._inverse(z)

    def _inverse(self, z: torch.Tensor) -> torch.Tensor:
        h = z
        for i in reversed(range(len(self.blocks))):
            if i < len(self.activations):
                h = self.activations[i]._inverse(h)
            h = self.blocks[i]._inverse(h)
        return h * self.input_std + self.input_mean

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` in nats under the standard normal latent, (B, dim) -> (B,)."""
        z, logdet = self.forward(x)
        return standard_normal_log_prob(z) + logdet

    def sample(self, num_samples: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draw ``num_samples`` rows (num_samples, dim); latent std = ``temperature``."""
        check_positive_int(num_samples, "num_samples")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        ref = self.input_mean
        z = torch.randn(num_samples, self.dim, generator=generator, dtype=ref.dtype, device=ref.device)
        return self._inverse(z * temperature)


class ClassConditionalFlow(nn.Module):
    """One flow per class: ``log p(x | c)``, per-class sampling and the Bayes classifier.

    Args:
        flows: one model per class, each with ``log_prob`` and ``sample``.
        class_log_prior: ``log p(c)`` of shape (C,); uniform when omitted.
    """

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

    def _check_class(self, c: int) -> int:
        if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < self.num_classes:
            raise ValueError(f"class must be an integer in [0, {self.num_classes}), got {c!r}")
        return c

    def class_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x | c)`` for every class, (B, D) -> (B, C)."""
        return torch.stack([flow.log_prob(x) for flow in self.flows], dim=1)

    def log_prob(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``log p(x | c)`` for labels ``c`` (B,), or the mixture ``log p(x)`` when ``c`` is None."""
        lp = self.class_log_probs(x)
        if c is None:
            return torch.logsumexp(lp + self.class_log_prior.to(lp.dtype), dim=1)
        c = torch.as_tensor(c, device=lp.device)
        if c.shape != (x.shape[0],) or c.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise ValueError(f"labels must be an integer tensor of shape ({x.shape[0]},), got {c.dtype} {tuple(c.shape)}")
        if bool(((c < 0) | (c >= self.num_classes)).any()):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        return lp.gather(1, c.long().unsqueeze(1)).squeeze(1)

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Bayes classifier ``argmax_c log p(x|c) + log p(c)``, (B, D) -> (B,) int64."""
        lp = self.class_log_probs(x)
        return (lp + self.class_log_prior.to(lp.dtype)).argmax(dim=1)

    def sample(self, num_samples: int, c: int, temperature: float = 1.0, **kwargs) -> torch.Tensor:
        """``num_samples`` draws from class ``c``'s flow."""
        return self.flows[self._check_class(c)].sample(num_samples, temperature=temperature, **kwargs)
