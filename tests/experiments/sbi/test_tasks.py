"""The SBI benchmark's tasks (lunet.experiments.sbi.tasks) against their published definitions, and the
reference posteriors against the exact likelihood."""

import math

import pytest
import torch

from lunet.experiments.sbi.tasks import TASKS, get_task

pytestmark = pytest.mark.usefixtures("one_thread")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _importance_moments(task, x_o: torch.Tensor, n: int = 400_000) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std by self-normalised importance sampling of prior draws (exact likelihood)."""
    theta = task.sample_prior(n, _gen(7)).double()
    w = torch.softmax(torch.nan_to_num(task.log_likelihood(theta, x_o.double()), nan=-math.inf), 0)
    mean = (w[:, None] * theta).sum(0)
    return mean, ((w[:, None] * (theta - mean) ** 2).sum(0)).sqrt()


def test_priors_and_fixed_observations():
    for task in TASKS.values():
        theta, x = task.observations()
        assert theta.shape == (10, task.theta_dim) and x.shape == (10, task.x_dim)
        assert task.in_support(theta).all()
        again = task.observations()
        assert torch.equal(theta, again[0]) and torch.equal(x, again[1])
        draws = task.sample_prior(20_000, _gen())
        assert task.prior().log_prob(draws).isfinite().all()
    box = get_task("slcp").sample_prior(50_000, _gen())
    assert box.min() >= -3 and box.max() <= 3 and abs(box.std() - 6 / math.sqrt(12)) < 0.02
    gl = get_task("gaussian_linear").sample_prior(50_000, _gen())
    assert abs(gl.var() - 0.1) < 0.003


def test_gaussian_linear_and_mixture_noise_and_likelihoods():
    gl = get_task("gaussian_linear")
    theta = gl.sample_prior(40_000, _gen())
    noise = gl.simulate(theta, _gen(1)) - theta
    assert abs(noise.var() - 0.1) < 0.003 and abs(noise.mean()) < 0.003
    x = gl.simulate(theta[:5], _gen(2))
    expected = torch.distributions.MultivariateNormal(theta[:5], 0.1 * torch.eye(10)).log_prob(x)
    torch.testing.assert_close(gl.log_likelihood(theta[:5], x), expected)

    gm = get_task("gaussian_mixture")
    theta = torch.zeros(40_000, 2)
    noise = gm.simulate(theta, _gen(3))
    # half the draws with std 1, half with std 0.1: variance 0.505, and ~42 % within 0.1 of theta
    assert abs(noise.var() - 0.505) < 0.02
    near = (noise.abs() < 0.1).all(1).float().mean()
    expected_near = 0.5 * math.erf(0.1 / math.sqrt(2)) ** 2 + 0.5 * math.erf(1 / math.sqrt(2)) ** 2
    assert abs(near - expected_near) < 0.01
    x = torch.tensor([[0.3, -0.2]])
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(torch.tensor([0.5, 0.5])),
        torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2, 2), torch.tensor([[1.0], [0.1]])), 1))
    torch.testing.assert_close(gm.log_likelihood(torch.zeros(1, 2), x), mix.log_prob(x))


def test_two_moons_is_sbibms_simulator_and_its_likelihood_is_a_density():
    tm = get_task("two_moons")
    # theta = 0: the moon alone, a half ring of radius 0.1 around (0.25, 0)
    x = tm.simulate(torch.zeros(20_000, 2), _gen())
    r = torch.linalg.vector_norm(x - torch.tensor([0.25, 0.0]), dim=1)
    assert abs(r.mean() - 0.1) < 1e-3 and abs(r.std() - 0.01) < 1e-3 and (x[:, 0] > 0.2).all()
    # the shift: (-|t0 + t1|, t1 - t0) / sqrt 2
    theta = torch.tensor([[0.3, 0.5]])
    shift = tm.simulate(theta.expand(20_000, 2), _gen(1)).mean(0) - x.mean(0)
    torch.testing.assert_close(shift, torch.tensor([-0.8, 0.2]) / math.sqrt(2), atol=2e-3, rtol=0)
    # the exact likelihood integrates to one over x and is finite at every simulation
    grid = torch.stack(torch.meshgrid(torch.linspace(-0.8, 0.1, 451), torch.linspace(-0.1, 0.5, 301), indexing="ij"),
                       -1).reshape(-1, 2).double()
    density = tm.log_likelihood(theta.double(), grid).exp()
    assert abs(float(density.sum()) * (0.9 / 450) * (0.6 / 300) - 1.0) < 0.01
    assert tm.log_likelihood(theta, tm.simulate(theta.expand(100, 2), _gen(2))).isfinite().all()


def test_slcp_simulator_moments_and_likelihood():
    slcp = get_task("slcp")
    theta = torch.tensor([[0.5, -1.0, 1.2, -0.9, 0.7]])
    x = slcp.simulate(theta.expand(20_000, 5), _gen()).double().view(-1, 4, 2).reshape(-1, 2)
    s1, s2, rho = 1.2**2, 0.9**2, math.tanh(0.7)
    torch.testing.assert_close(x.mean(0), torch.tensor([0.5, -1.0], dtype=torch.float64), atol=0.02, rtol=0)
    cov = torch.cov(x.T)
    expected = torch.tensor([[s1**2, rho * s1 * s2], [rho * s1 * s2, s2**2]], dtype=torch.float64)
    torch.testing.assert_close(cov, expected, atol=0.03, rtol=0.02)
    xo = slcp.simulate(theta, _gen(1))
    mvn = torch.distributions.MultivariateNormal(theta[0, :2].double(), expected + 1e-6 * torch.eye(2))
    expected_log_p = mvn.log_prob(xo.view(4, 2).double()).sum()[None]
    torch.testing.assert_close(slcp.log_likelihood(theta, xo).double(), expected_log_p)


@pytest.mark.parametrize("name", ["gaussian_linear", "gaussian_mixture", "two_moons", "slcp"])
def test_the_reference_posterior_matches_importance_sampling_of_the_exact_likelihood(name):
    task = get_task(name)
    _, x = task.observations(1)
    if name == "slcp":
        from lunet.experiments.sbi.mcmc import sign_symmetric_metropolis

        # a broad posterior, so that importance sampling of the prior is itself accurate
        x = task.simulate(torch.tensor([[0.5, -1.0, 1.7, -1.6, 0.4]]), _gen(3))
        draws = sign_symmetric_metropolis(task, x[0], 4000, _gen(1), symmetric=(2, 3), burn_in=600, run=300)
    else:
        draws = task.reference_posterior(x[0], 20_000, _gen(1))
    assert task.in_support(draws).all()
    mean, std = _importance_moments(task, x[0])
    # within a few standard errors of both estimates
    torch.testing.assert_close(draws.double().mean(0), mean, atol=float(0.06 * std.max()) + 1e-3, rtol=0)
    torch.testing.assert_close(draws.double().std(0), std, atol=0, rtol=0.08)


def test_bad_task_inputs():
    with pytest.raises(ValueError, match="unknown task"):
        get_task("lotka_volterra")
    with pytest.raises(ValueError, match=r"\(\.\.\., 5\)"):
        get_task("slcp").simulate(torch.zeros(3, 2), _gen())
    with pytest.raises(ValueError, match="one observation"):
        get_task("two_moons").reference_posterior(torch.zeros(3, 2), 10, _gen())
