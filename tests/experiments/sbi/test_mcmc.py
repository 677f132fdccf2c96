"""Reference draws by parallel Metropolis chains (lunet.experiments.sbi.mcmc), on a task of two parameters
whose likelihood ignores the sign of the second: the draws against importance sampling of the exact
likelihood, both mirror modes with equal mass, inside the prior's box, and from the generator alone."""

from __future__ import annotations

import math

import pytest
import torch

from lunet.experiments.sbi.mcmc import sign_symmetric_metropolis

pytestmark = pytest.mark.usefixtures("one_thread")

NOISE = 0.3


class Folded:
    """theta ~ U[-3, 3]^2, x ~ N((theta_0, theta_1^2), 0.3^2 I): the posterior of theta_1 has two mirror modes."""

    bound = 3.0

    def sample_prior(self, num_samples, generator):
        return (2 * torch.rand(num_samples, 2, generator=generator) - 1) * self.bound

    def in_support(self, theta):
        return (theta.abs() <= self.bound).all(dim=-1)

    def log_likelihood(self, theta, x):
        mean = torch.stack([theta[..., 0], theta[..., 1] ** 2], dim=-1)
        return -0.5 * ((x - mean) ** 2).sum(-1) / NOISE**2 - 2 * math.log(NOISE * math.sqrt(2 * math.pi))


X_O = torch.tensor([0.8, 1.2])


def draws(seed: int = 0, n: int = 3000, symmetric=(1,)) -> torch.Tensor:
    return sign_symmetric_metropolis(Folded(), X_O, n, torch.Generator().manual_seed(seed), symmetric=symmetric,
                                     burn_in=300, run=200)


def importance_moments(n: int = 200_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of (theta_0, |theta_1|) under the posterior, by self-normalised importance sampling of the prior."""
    task = Folded()
    theta = task.sample_prior(n, torch.Generator().manual_seed(9)).double()
    w = torch.softmax(task.log_likelihood(theta, X_O.double()), 0)
    folded = torch.stack([theta[:, 0], theta[:, 1].abs()], 1)
    mean = (w[:, None] * folded).sum(0)
    return mean, ((w[:, None] * (folded - mean) ** 2).sum(0)).sqrt()


@pytest.fixture(scope="module")
def drawn() -> torch.Tensor:
    return draws()


def test_the_draws_match_importance_sampling_of_the_exact_likelihood(drawn):
    assert drawn.shape == (3000, 2) and drawn.dtype == torch.float32
    mean, std = importance_moments()
    folded = torch.stack([drawn[:, 0], drawn[:, 1].abs()], 1).double()
    torch.testing.assert_close(folded.mean(0), mean, atol=float(0.08 * std.max()), rtol=0)
    torch.testing.assert_close(folded.std(0), std, atol=0, rtol=0.1)


def test_the_mirror_modes_get_equal_mass_and_every_draw_is_in_the_box(drawn):
    positive = float((drawn[:, 1] > 0).double().mean())
    assert abs(positive - 0.5) < 0.04  # a fair coin per draw: 0.009 of spread over 3,000
    assert bool(Folded().in_support(drawn).all())


def test_the_draws_are_the_generators():
    assert torch.equal(draws(seed=1, n=200), draws(seed=1, n=200))
    assert not torch.equal(draws(seed=1, n=200), draws(seed=2, n=200))
