"""LU-Net: a normalizing flow of LU layers and leaky-softplus activations."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from lunet.checks import check_batch, check_positive_int
from lunet.layers import FrozenAffine, LeakySoftplus, LULinear, _table_step, output_major, state_key

LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` per row, ``z`` of shape (B, D) -> (B,)."""
    return torch.linalg.vecdot(z, z).add_(z.shape[1] * LOG_2PI).mul_(-0.5)


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
        self._plan: Optional[tuple] = None

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

    @torch.no_grad()
    def init_gaussian(self, data: torch.Tensor, shift: float = 5.0, ridge: float = 1e-3) -> "LUNet":
        """Start as the best full-covariance Gaussian of ``data`` (N, dim).

        Standardises the input, sets the first block to the whitening map
        ``C^{-1}`` of the Cholesky factor ``C`` of the data's correlation (a
        lower triangular matrix, so exactly an ``L U`` with diagonal ``U``),
        the other blocks to the identity, and shifts the pre-activations by
        ``+shift`` (undone by the last bias) so that every activation starts
        in its nearly linear branch. Training then starts from the Gaussian fit
        instead of from scratch.
        """
        self.standardize(data)
        h = ((data - self.input_mean) / self.input_std).double()
        cov = torch.cov(h.T) + ridge * torch.eye(self.dim, dtype=torch.float64)
        chol = torch.linalg.cholesky(cov)
        eye = torch.eye(self.dim, dtype=torch.float64)
        white = torch.linalg.solve_triangular(chol, eye, upper=False)  # C^{-1}, lower triangular
        d = torch.diagonal(white).clone()
        unit_lower = white / d  # scale columns: C^{-1} = L diag(d)
        for block in self.blocks:
            block.lu.zero_()
            if block.diag_mode == "raw":
                block.diag.fill_(1.0)
            else:
                block.diag.zero_()
                block.diag_sign.fill_(1.0)
            block.bias.fill_(0.0)
        first = self.blocks[0]
        first.lu.copy_(torch.tril(unit_lower, -1).to(first.lu.dtype))
        if first.diag_mode == "raw":
            first.diag.copy_(d)
        else:
            first.diag.copy_(torch.log(d.abs()))
            first.diag_sign.copy_(torch.sign(d))
        if len(self.blocks) > 1:
            first.bias.fill_(shift)
            self.blocks[-1].bias.fill_(-shift)
        return self

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` (B, dim) -> ``z`` (B, dim), ``log|det dz/dx|`` (B,)."""
        check_batch(x, self.dim, like=self.input_std)
        if not torch.is_grad_enabled():
            return self._forward_frozen(x)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # A fused optimiser step updates the weights without bumping their
        # versions: a forward with autograd, which every step follows, drops
        # the frozen plan instead (as each LULinear drops its cache).
        self._plan = None
        inv_std = 1.0 / self.input_std
        h = torch.addcmul(-self.input_mean * inv_std, x, inv_std)  # (x - mean) / std in one pass
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

    def _forward_frozen(self, x: torch.Tensor, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` without autograd, from the folded matrices of :meth:`_frozen_plan`.

        Each activation runs as :meth:`LeakySoftplus._negated_forward`; should
        a pre-activation leave its exact range, the batch is redone with
        ``exact=True`` (:meth:`LeakySoftplus._scaled_forward`). Two scratch
        buffers serve every activation, and every product after the first
        writes into the first one's output.
        """
        layers, slopes, const = self._frozen_plan()
        u = layers[0](x)
        if not slopes:
            return u, const.expand(x.shape[0])
        q, scratch = torch.empty_like(u), torch.empty_like(u)
        logdet, in_range = None, None
        for layer, a in zip(layers[1:], slopes):
            if exact:
                g, ld = LeakySoftplus._scaled_forward(u.neg_(), a)
                torch.neg(g, out=q)
            else:
                ld, ok = LeakySoftplus._negated_forward(u, a, out=q, scratch=scratch)
                in_range = ok if in_range is None else in_range.logical_and_(ok)
            logdet = ld if logdet is None else logdet.add_(ld)
            layer(q, out=u)
        if not exact and not bool(in_range):
            return self._forward_frozen(x, exact=True)
        return u, logdet.add_(const)

    def _frozen_plan(self) -> tuple[list[FrozenAffine], list[float], torch.Tensor]:
        """The frozen-weight density pass: layer ``i`` mapping ``h -> h W_i + c_i``
        (W_i (dim, dim), c_i (dim,)), the slope of each
        activation, and the constant part of the log-det (0-dim).

        The elementwise scaling in front of each layer is folded into its
        matrix: the input standardisation into the first
        (``W_0 = diag(1/std) A_0^T``, ``c_0 = b_0 - (mean/std) A_0^T``), and the
        factor ``1 - a`` that :meth:`LeakySoftplus._scaled_forward` leaves out
        into the next (``W_i = (1 - a) A_i^T``); their log-dets join the
        constant. So are the signs of :meth:`LeakySoftplus._negated_forward`:
        every layer but the last returns its output negated, and every layer
        but the first takes its input negated.
        """
        return self._cached_plan("forward", self._build_forward_plan)

    def _frozen_inverse_plan(self) -> tuple[list[FrozenAffine], list[float]]:
        """The frozen-weight sampling pass: layers in the order applied, the inverse of
        block ``n - 1 - k`` mapping ``h -> h W_k + c_k``, and the slope of
        the activation each layer but the last feeds.

        Each of those layers returns its output divided by the inverse table's
        node spacing ``h`` (a power of two, so exactly), which
        :meth:`LeakySoftplus._solve_scaled` takes; the last returns
        ``x std + mean``, the standardisation undone.
        """
        return self._cached_plan("inverse", self._build_inverse_plan)

    def _cached_plan(self, kind: str, build):
        """Plan ``kind``, built by ``build`` in float64 on first use and rebuilt whenever
        a weight, the standardisation or a slope changes, or the model moves."""
        # straight from the registries: nn.Module attribute lookup costs more than the key
        modules, buffers = self._modules, self._buffers
        slopes = (p for act in modules["activations"] for p in act._parameters.values())
        key = (
            *(block._weights_key() for block in modules["blocks"]),
            state_key(buffers["input_mean"], buffers["input_std"], *slopes),
        )
        if self._plan is None or self._plan[0] != key:
            self._plan = (key, {})
        plans = self._plan[1]
        if kind not in plans:
            for block in self.blocks:
                block._check_invertible()
            with torch.no_grad():
                plans[kind] = build()
        return plans[kind]

    def _build_forward_plan(self) -> tuple[list[FrozenAffine], list[float], torch.Tensor]:
        dtype = self.input_std.dtype
        scale = 1.0 / self.input_std.double()
        shift = -self.input_mean.double() * scale
        const = -torch.log(self.input_std.double()).sum()
        layers, slopes = [], []
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            a_t = block.weight64().t()
            sign_out = 1.0 if i == last else -1.0
            sign = sign_out if i == 0 else -sign_out
            weight = output_major((sign * scale)[:, None] * a_t, dtype)
            layers.append(FrozenAffine(weight, (sign_out * (block.bias.double() + shift @ a_t)).to(dtype)))
            const = const + block.log_abs_det().double()
            if i < len(self.activations):
                a = self.activations[i].slope_value()
                slopes.append(a)
                scale = torch.full_like(scale, 1.0 - a)
                shift = torch.zeros_like(shift)
                const = const + self.dim * math.log1p(-a)
        return layers, slopes, const.to(dtype)

    def _build_inverse_plan(self) -> tuple[list[FrozenAffine], list[float]]:
        dtype = self.input_std.dtype
        layers, slopes = [], []
        for i in reversed(range(len(self.blocks))):
            block = self.blocks[i]
            weight = block.inverse64().t()  # A^{-T}
            shift = -(block.bias.double() @ weight)
            if i > 0:
                a = self.activations[i - 1].slope_value()
                slopes.append(a)
                scale = 1.0 / _table_step(a)
                weight, shift = weight * scale, shift * scale
            else:
                std = self.input_std.double()
                weight, shift = weight * std, shift * std + self.input_mean.double()
            layers.append(FrozenAffine(output_major(weight, dtype), shift.to(dtype)))
        return layers, slopes

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """``z`` (B, dim) -> ``x`` (B, dim), the exact inverse of :meth:`forward`."""
        check_batch(z, self.dim, like=self.input_std)
        return self._inverse(z)

    def _inverse(self, z: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self._inverse_frozen(z)
        h = z
        for i in reversed(range(len(self.blocks))):
            if i < len(self.activations):
                h = self.activations[i]._inverse(h)
            h = self.blocks[i]._inverse(h)
        return torch.addcmul(self.input_mean, h, self.input_std)

    def _inverse_frozen(self, z: torch.Tensor) -> torch.Tensor:
        """:meth:`inverse` without autograd, from the folded matrices of :meth:`_frozen_inverse_plan`."""
        layers, slopes = self._frozen_inverse_plan()
        h = layers[0](z)
        # the activations' scratch buffers, made once per pass; for a small batch their
        # bookkeeping costs more than the allocations it saves
        work = {} if z.shape[0] >= 64 else None
        for layer, act, a in zip(layers[1:], reversed(self.activations), slopes):
            x = act._solve_scaled(h, a, work)  # overwrites h, whose buffer then takes the product
            h = layer(x, out=h)
        return h

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x)`` in nats under the standard normal latent, (B, dim) -> (B,)."""
        z, logdet = self.forward(x)
        return standard_normal_log_prob(z) + logdet

    def sample(self, num_samples: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Draw ``num_samples`` rows (num_samples, dim); latent std = ``temperature``.

        Without gradients, as ``torch.distributions``' ``sample``: the cached
        frozen-weight pass, whatever the autograd mode. :meth:`rsample` draws
        the same way with the graph kept."""
        with torch.no_grad():
            return self.rsample(num_samples, temperature, generator)

    def rsample(self, num_samples: int, temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """:meth:`sample`, reparameterised: with autograd on, the draws are differentiable
        in the weights (the training path's inverse), (num_samples, dim)."""
        check_positive_int(num_samples, "num_samples")
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature!r}")
        ref = self.input_mean
        z = torch.randn(num_samples, self.dim, generator=generator, dtype=ref.dtype, device=ref.device)
        if temperature != 1.0:
            z.mul_(temperature)
        return self._inverse(z)


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
        """``num_samples`` draws from class ``c``'s flow, without gradients."""
        return self.flows[self._check_class(c)].sample(num_samples, temperature=temperature, **kwargs)

    def rsample(self, num_samples: int, c: int, temperature: float = 1.0, **kwargs) -> torch.Tensor:
        """:meth:`sample`, differentiable in class ``c``'s weights."""
        return self.flows[self._check_class(c)].rsample(num_samples, temperature=temperature, **kwargs)
