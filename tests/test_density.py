"""The density face every unconditional flow shares (lunet.density): ``log_prob``, ``sample`` and
``rsample`` written once over a flow's ``forward`` and its two hooks, shown on a flow of one's own."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lunet.density import Density, ReparameterizedDensity
from lunet.latent import flow_placement, latent_draws


class Affine(ReparameterizedDensity, nn.Module):
    """``z = (x - mu) / sigma``: the density of N(mu, sigma^2) per coordinate, through the hooks alone."""

    def __init__(self, mu, sigma):
        super().__init__()
        self.mu = nn.Parameter(torch.as_tensor(mu, dtype=torch.float64))
        self.log_sigma = nn.Parameter(torch.as_tensor(sigma, dtype=torch.float64).log())

    @property
    def features(self):
        return self.mu.shape[0]

    def forward(self, x):
        z = (x - self.mu) / self.log_sigma.exp()
        return z, (-self.log_sigma.sum()).expand(x.shape[:-1])

    def _placement(self):
        return flow_placement(self)

    def _values(self, z):
        return self.mu + self.log_sigma.exp() * z


class FrozenAffine(Density):
    """The same density without autograd, as a frozen flow computes."""

    differentiable = False

    def __init__(self, flow: Affine):
        self.flow = flow

    @property
    def features(self):
        return self.flow.features

    def forward(self, x):
        return self.flow(x)

    def _placement(self):
        return self.flow._placement()

    def _values(self, z):
        return self.flow._values(z)


MU, SIGMA = [1.0, -2.0, 0.5], [0.5, 2.0, 1.0]


@pytest.mark.parametrize("leading", [(), (4,), (2, 3)])
def test_log_prob_is_the_change_of_variables_under_the_standard_normal(leading):
    flow = Affine(MU, SIGMA)
    x = torch.randn(*leading, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = torch.distributions.Normal(torch.tensor(MU, dtype=torch.float64),
                                          torch.tensor(SIGMA, dtype=torch.float64)).log_prob(x).sum(-1)
    lp = flow.log_prob(x)
    assert lp.shape == leading
    torch.testing.assert_close(lp, expected)


def test_sample_maps_the_latent_draws_through_the_values_hook():
    flow = Affine(MU, SIGMA)
    drawn = flow.sample((2, 5), temperature=0.5, generator=torch.Generator().manual_seed(3))
    assert drawn.shape == (2, 5, 3) and drawn.dtype == torch.float64
    z, _ = latent_draws((2, 5), 3, 0.5, torch.float64, torch.device("cpu"), torch.Generator().manual_seed(3))
    torch.testing.assert_close(drawn, flow._values(z).view(2, 5, 3).detach())
    assert flow.sample(4).shape == (4, 3)
    many = flow.sample(20_000, temperature=0.5, generator=torch.Generator().manual_seed(4))
    half = 0.5 * torch.tensor(SIGMA, dtype=torch.float64)  # N(mu, (T sigma)^2): 0.007 T sigma of spread in the mean
    mu = torch.tensor(MU, dtype=torch.float64)
    torch.testing.assert_close(many.mean(0), mu, rtol=0, atol=float(0.03 * half.max()))
    torch.testing.assert_close(many.std(0), half, rtol=0.03, atol=0)
    with pytest.raises(ValueError, match="temperature"):
        flow.sample(4, temperature=-1.0)


def test_sample_keeps_no_graph_and_rsample_is_differentiable_in_the_weights():
    flow = Affine(MU, SIGMA)
    assert not flow.sample(6).requires_grad
    draws = flow.rsample(6, generator=torch.Generator().manual_seed(0))
    assert draws.requires_grad
    draws.sum().backward()
    torch.testing.assert_close(flow.mu.grad, torch.full((3,), 6.0, dtype=torch.float64))  # d/dmu of 6 rows


def test_a_flow_that_is_not_differentiable_scores_without_a_graph_and_has_no_rsample():
    flow = Affine(MU, SIGMA)
    frozen = FrozenAffine(flow)
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lp = frozen.log_prob(x)
    assert not lp.requires_grad and flow.log_prob(x).requires_grad
    torch.testing.assert_close(lp, flow.log_prob(x).detach())
    assert not hasattr(frozen, "rsample")
    assert frozen.sample(2).shape == (2, 3)
