"""LU-Net as a density estimator of the ``sbi`` package (``pip install lunet[sbi]``).

One line picks LU-Net for neural posterior estimation, as ``"zuko_nsf"`` picks zuko's spline flow::

    from sbi.inference import NPE
    from lunet.sbi import lunet_nn

    inference = NPE(prior, density_estimator=lunet_nn())  # 8 blocks, splines whose knots x gives
    inference.append_simulations(theta, x).train()          # sbi's own loop and stopping rule
    posterior = inference.build_posterior()
    posterior.sample((10_000,), x=x_o), posterior.log_prob(theta, x=x_o)

The estimator is a :class:`lunet.ConditionalLUNet` of ``p(theta | x)``: θ is z-scored by the flow's
own input standardisation (its Jacobian is part of every density, so densities are of θ itself),
x by sbi's ``standardizing_net`` before an optional embedding network, as sbi's zuko builders do.
The flow alone is in the zuko form: ``estimator.net(x).log_prob(theta)``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from lunet.conditional import ConditionalLUNet
from lunet.latent import standard_normal_log_prob

__all__ = ["DEFAULT_BLOCKS", "DEFAULT_HIDDEN", "DEFAULT_ACTIVATION", "FlatEmbedding", "LUNetPosteriorEstimator",
           "build_lunet", "lunet_nn"]

try:
    from sbi.neural_nets.estimators.base import ConditionalDensityEstimator
    from sbi.utils.sbiutils import standardizing_net, z_score_parser
except ImportError as exc:  # the extra is optional: say how to get it, not where the import failed
    raise ImportError("lunet.sbi needs the sbi package: pip install 'lunet[sbi]' (sbi==0.27.0)") from exc

# the size the benchmark chose for simulation-based inference (docs/sbi.md, docs/notes/sbi-size.md)
DEFAULT_BLOCKS = 8
DEFAULT_HIDDEN = 64
# splines whose knots the context gives: NSF's accuracy or better on three of the benchmark's four tasks
# (docs/sbi.md); "leaky_softplus" trains and samples faster where the posterior is nearly Gaussian
DEFAULT_ACTIVATION = "spline"


class FlatEmbedding(nn.Module):
    """Runs a network made for ``(batch, *condition_shape)`` on conditions of any leading shape:
    ``(..., *condition_shape) -> (..., features)``; the z-score of x and the user's embedding net."""

    def __init__(self, net: nn.Module, condition_shape: torch.Size) -> None:
        super().__init__()
        self.net = net
        self.condition_shape = torch.Size(condition_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = len(self.condition_shape)
        if x.dim() < k or x.shape[x.dim() - k:] != self.condition_shape:
            raise ValueError(f"condition must have shape (..., {', '.join(map(str, self.condition_shape))}), "
                             f"got {tuple(x.shape)}")
        lead = x.shape[:x.dim() - k]
        out = self.net(x.reshape(-1, *self.condition_shape))
        return out.reshape(*lead, out.shape[-1])


class LUNetPosteriorEstimator(ConditionalDensityEstimator):
    """sbi's ``ConditionalDensityEstimator`` over a :class:`~lunet.ConditionalLUNet` ``net`` of
    ``p(input | condition)``, whose context embedding (``net.embedding``) z-scores and embeds the condition.

    Shapes follow sbi: ``log_prob(input (sample, batch, D) or (batch, D), condition (batch, *cond) or
    (sample, batch, *cond)) -> (sample, batch)``; ``sample(sample_shape, condition (batch, *cond)) ->
    sample_shape + (batch, D)``; ``loss(input (batch, D), condition (batch, *cond)) -> (batch,)``, the
    negative log-density in nats.
    """

    def __init__(self, net: ConditionalLUNet, input_shape: torch.Size, condition_shape: torch.Size) -> None:
        if len(input_shape) != 1:
            raise ValueError(f"LU-Net models parameter vectors: input_shape must be (D,), got {tuple(input_shape)}")
        super().__init__(net=net, input_shape=input_shape, condition_shape=condition_shape)

    @property
    def embedding_net(self) -> nn.Module:
        """The condition's z-score and embedding network, as one module."""
        return self.net.embedding

    def _aligned(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_shape(input)
        return input.unsqueeze(0) if input.dim() == 2 else input

    def log_prob(self, input: torch.Tensor, condition: torch.Tensor, **kwargs: object) -> torch.Tensor:
        """``log q(input | condition)`` in nats: (sample, batch, D) or (batch, D) -> (sample, batch)."""
        self._check_condition_shape(condition)
        return self.net.log_prob(self._aligned(input), condition)

    def loss(self, input: torch.Tensor, condition: torch.Tensor, **kwargs: object) -> torch.Tensor:
        """The negative log-density of each pair: (batch, D), (batch, *cond) -> (batch,)."""
        return -self.log_prob(input.unsqueeze(0), condition)[0]

    def sample(self, sample_shape: torch.Size | Sequence[int], condition: torch.Tensor, **kwargs: object
               ) -> torch.Tensor:
        """Draws ``sample_shape + (batch, D)`` for conditions (batch, *cond), without gradients."""
        self._check_condition_shape(condition)
        return self.net.sample(tuple(sample_shape), condition)

    def sample_and_log_prob(self, sample_shape: torch.Size | Sequence[int], condition: torch.Tensor,
                            **kwargs: object) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws ``sample_shape + (batch, D)`` and their log-densities ``sample_shape + (batch,)`` from one
        inverse pass (the latent's density and the inverse's log-determinant)."""
        self._check_condition_shape(condition)
        lead = torch.Size(sample_shape) + condition.shape[:condition.dim() - len(self.condition_shape)]
        ref = self.net.reference()
        z = torch.randn(*lead, self.net.features, dtype=ref.dtype, device=ref.device)
        theta, logdet = self.net.inverse(z, condition)
        return theta, standard_normal_log_prob(z) - logdet


def build_lunet(
    batch_theta: torch.Tensor,
    batch_x: torch.Tensor,
    num_blocks: int = DEFAULT_BLOCKS,
    hidden: int | Sequence[int] = DEFAULT_HIDDEN,
    z_score_theta: Optional[str] = "independent",
    z_score_x: Optional[str] = "independent",
    embedding_net: Optional[nn.Module] = None,
    activation: str = DEFAULT_ACTIVATION,
    **flow_kwargs: Any,
) -> LUNetPosteriorEstimator:
    """An LU-Net posterior estimator sized and z-scored from example batches ``batch_theta`` (N, D)
    and ``batch_x`` (N, *condition_shape), as sbi's ``build_zuko_nsf`` is.

    ``z_score_theta`` and ``z_score_x``: ``"independent"`` (per dimension), ``"structured"`` (one mean
    and std for all) or ``"none"``/``None``. ``embedding_net`` maps (batch, *condition_shape) to
    (batch, E); the flow's context width is E. ``activation``: ``"spline"`` (splines whose knots x
    gives) or ``"leaky_softplus"``. ``flow_kwargs`` go to :class:`~lunet.ConditionalLUNet` (``bins``,
    ``bound``, ``alpha``, ``diag``, ``init``, ``init_scale``, ``max_log_scale``).
    """
    if not isinstance(batch_theta, torch.Tensor) or batch_theta.dim() != 2:
        got = tuple(batch_theta.shape) if isinstance(batch_theta, torch.Tensor) else type(batch_theta).__name__
        raise ValueError(f"batch_theta must be parameter vectors (N, D), got {got}")
    if not isinstance(batch_x, torch.Tensor) or batch_x.dim() < 2 or batch_x.shape[0] != batch_theta.shape[0]:
        got = tuple(batch_x.shape) if isinstance(batch_x, torch.Tensor) else type(batch_x).__name__
        raise ValueError(f"batch_x must be (N, *condition_shape) with N = {batch_theta.shape[0]} rows, got {got}")
    if z_score_theta == "transform_to_unconstrained" or z_score_x == "transform_to_unconstrained":
        raise ValueError("LU-Net's builder z-scores ('independent', 'structured') or leaves as is ('none'); "
                         "'transform_to_unconstrained' is not offered")
    if embedding_net is not None and not isinstance(embedding_net, nn.Module):
        raise TypeError(f"embedding_net must be an nn.Module, got {type(embedding_net).__name__}")
    theta_z, theta_structured = z_score_parser(z_score_theta)
    x_z, x_structured = z_score_parser(z_score_x)
    condition_shape = batch_x.shape[1:]
    parts = ([standardizing_net(batch_x, x_structured)] if x_z else []) + (
        [embedding_net] if embedding_net is not None else [])
    embedding = FlatEmbedding(nn.Sequential(*parts) if parts else nn.Identity(), condition_shape)
    with torch.no_grad():
        width = embedding(batch_x[:2]).shape[-1]
    features = batch_theta.shape[1]
    flow = ConditionalLUNet(features, width, num_blocks, hidden=hidden, embedding=embedding, activation=activation,
                            **flow_kwargs)
    if theta_z:
        flow.input_standardize.fit(batch_theta)
        if theta_structured:  # one mean and std for every dimension, as sbi's "structured"
            flow.input_standardize.mean.fill_(float(batch_theta.mean()))
            flow.input_standardize.std.fill_(max(float(batch_theta.std()), 1e-7))
    flow = flow.to(batch_theta.device)
    return LUNetPosteriorEstimator(flow, input_shape=batch_theta.shape[1:], condition_shape=condition_shape)


def lunet_nn(
    num_blocks: int = DEFAULT_BLOCKS,
    hidden: int | Sequence[int] = DEFAULT_HIDDEN,
    z_score_theta: Optional[str] = "independent",
    z_score_x: Optional[str] = "independent",
    embedding_net: Optional[nn.Module] = None,
    activation: str = DEFAULT_ACTIVATION,
    **flow_kwargs: Any,
) -> Callable[[torch.Tensor, torch.Tensor], LUNetPosteriorEstimator]:
    """The builder sbi takes as ``density_estimator``: ``NPE(prior, density_estimator=lunet_nn(...))``.

    sbi calls it with its first batches of θ (N, D) and x (N, *condition_shape); the arguments are
    those of :func:`build_lunet`."""
    def build(batch_theta: torch.Tensor, batch_x: torch.Tensor) -> LUNetPosteriorEstimator:
        return build_lunet(batch_theta, batch_x, num_blocks=num_blocks, hidden=hidden, z_score_theta=z_score_theta,
                           z_score_x=z_score_x, embedding_net=embedding_net, activation=activation, **flow_kwargs)

    # fail at the call that set the sizes, not inside sbi's training
    ConditionalLUNet(1, 1, num_blocks, hidden=hidden, activation=activation, **flow_kwargs)
    return build
