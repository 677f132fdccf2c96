"""Four tasks of the simulation-based inference benchmark (Lueckmann et al., AISTATS 2021), from
the published definitions of sbibm 1.1.0: priors, simulators, exact likelihoods, fixed observations
and reference posterior samples. Needs torch alone.

Every task draws with a ``torch.Generator``; parameters are ``theta`` (N, theta_dim), data ``x``
(N, x_dim), both float32 as in sbibm. Covariances are written as in sbibm: Gaussian linear's "scale"
0.1 is a variance (covariance 0.1 I), Gaussian mixture's 1.0 and 0.1 are standard deviations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

__all__ = ["Task", "GM_STDS", "SIMULATORS", "LIKELIHOODS", "REFERENCES", "TASKS", "get_task"]

Draw = Callable[[int, torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Task:
    """One benchmark task: its sizes, box bounds of a uniform prior (``None`` for Gaussian linear's
    Gaussian prior) and the seed of its ten observations."""

    name: str
    theta_dim: int
    x_dim: int
    bound: Optional[float]
    seed: int

    def prior(self) -> torch.distributions.Distribution:
        """The prior as a torch distribution over (theta_dim,) (sbi accepts it as it is)."""
        if self.bound is None:
            return torch.distributions.MultivariateNormal(torch.zeros(self.theta_dim), 0.1 * torch.eye(self.theta_dim))
        b = torch.full((self.theta_dim,), self.bound)
        return torch.distributions.Independent(torch.distributions.Uniform(-b, b), 1)

    def sample_prior(self, num_samples: int, generator: torch.Generator) -> torch.Tensor:
        """``num_samples`` parameter draws (num_samples, theta_dim)."""
        u = torch.randn if self.bound is None else torch.rand
        draw = u(num_samples, self.theta_dim, generator=generator)
        return draw * math.sqrt(0.1) if self.bound is None else (2 * draw - 1) * self.bound

    def in_support(self, theta: torch.Tensor) -> torch.Tensor:
        """Whether each row of ``theta`` (..., theta_dim) has positive prior density: (...) bool."""
        if self.bound is None:
            return torch.ones(theta.shape[:-1], dtype=torch.bool)
        return (theta.abs() <= self.bound).all(dim=-1)

    def simulate(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One simulation per row: theta (N, theta_dim) -> x (N, x_dim)."""
        _check(theta, self.theta_dim, "theta")
        return SIMULATORS[self.name](theta, generator)

    def log_likelihood(self, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log p(x | theta)`` in nats, exact: theta (..., theta_dim), x (..., x_dim) broadcast -> (...)."""
        _check(theta, self.theta_dim, "theta")
        _check(x, self.x_dim, "x")
        return LIKELIHOODS[self.name](theta, x)

    def observations(self, count: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        """The task's fixed observations: true parameters (count, theta_dim) drawn from the prior and
        one simulation of each (count, x_dim), from the task's seed."""
        generator = torch.Generator().manual_seed(self.seed)
        theta = self.sample_prior(count, generator)
        return theta, self.simulate(theta, generator)

    def reference_posterior(self, x_o: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` draws (n, theta_dim) of the exact posterior given one observation ``x_o`` (x_dim,):
        closed form for Gaussian linear, Gaussian mixture and two moons, MCMC for SLCP."""
        _check(x_o, self.x_dim, "x_o")
        if x_o.dim() != 1:
            raise ValueError(f"x_o must be one observation ({self.x_dim},), got {tuple(x_o.shape)}")
        return REFERENCES[self.name](self, x_o, n, generator)


def _check(t: object, width: int, name: str) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[-1] != width:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must have shape (..., {width}), got {got}")


def _normal_log_prob(diff: torch.Tensor, var: float | torch.Tensor) -> torch.Tensor:
    return -0.5 * (diff**2 / var + torch.log(2 * math.pi * torch.as_tensor(var, dtype=diff.dtype)))


# -- Gaussian linear: theta ~ N(0, 0.1 I), x ~ N(theta, 0.1 I), 10-D ---------------------------------
def _gl_simulate(theta: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return theta + math.sqrt(0.1) * torch.randn(theta.shape, generator=g)


def _gl_log_likelihood(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _normal_log_prob(x - theta, 0.1).sum(-1)


def _gl_reference(task: Task, x_o: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    # precisions add: 1/0.1 + 1/0.1, so the posterior is N(x_o / 2, 0.05 I)
    return x_o / 2 + math.sqrt(0.05) * torch.randn(n, task.theta_dim, generator=g)


# -- Gaussian mixture: theta ~ U[-10, 10]^2, x ~ 0.5 N(theta, I) + 0.5 N(theta, 0.01 I) ------------------
GM_STDS = (1.0, 0.1)


def _gm_simulate(theta: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    wide = torch.rand(theta.shape[0], 1, generator=g) < 0.5
    std = torch.where(wide, GM_STDS[0], GM_STDS[1])
    return theta + std * torch.randn(theta.shape, generator=g)


def _gm_log_likelihood(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    parts = [_normal_log_prob(x - theta, s**2).sum(-1) for s in GM_STDS]
    return torch.logsumexp(torch.stack(parts), dim=0) - math.log(2)


def _box_rejection(task: Task, n: int, g: torch.Generator, propose: Draw) -> torch.Tensor:
    """``n`` draws of ``propose`` that fall in the prior's box (the posterior of a uniform prior is the
    likelihood's normalised shape cut to the box)."""
    kept: list[torch.Tensor] = []
    total = 0
    while total < n:
        draws = propose(max(2 * (n - total), 1000), g)
        draws = draws[task.in_support(draws)]
        kept.append(draws)
        total += draws.shape[0]
    return torch.cat(kept)[:n]


def _gm_reference(task: Task, x_o: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    # in theta the likelihood is the same equal-weight mixture around x_o: draw it, keep the box
    return _box_rejection(task, n, g, lambda m, gen: _gm_simulate(x_o.expand(m, -1), gen))


# -- two moons: theta ~ U[-1, 1]^2; a ~ U(-pi/2, pi/2), r ~ N(0.1, 0.01^2) -----------------------------
TM_OFFSET, TM_R_LOC, TM_R_SCALE = 0.25, 0.1, 0.01


def _tm_shift(theta: torch.Tensor) -> torch.Tensor:
    """The simulator's shift of x: (-|t0 + t1| / sqrt 2, (t1 - t0) / sqrt 2), sbibm's rotation by -pi/4."""
    z0 = (theta[..., 0] + theta[..., 1]) / math.sqrt(2)
    z1 = (theta[..., 1] - theta[..., 0]) / math.sqrt(2)
    return torch.stack((-z0.abs(), z1), dim=-1)


def _tm_moon(n: int, g: torch.Generator) -> torch.Tensor:
    a = (torch.rand(n, generator=g) - 0.5) * math.pi
    r = TM_R_LOC + TM_R_SCALE * torch.randn(n, generator=g)
    return torch.stack((r * torch.cos(a) + TM_OFFSET, r * torch.sin(a)), dim=-1)


def _tm_simulate(theta: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    return _tm_moon(theta.shape[0], g) + _tm_shift(theta)


def _tm_log_likelihood(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    # p = x - shift is the moon point: polar (r, a) with a in (-pi/2, pi/2), so u = p0 - 0.25 > 0; the
    # density of p is N(r; 0.1, 0.01^2) / (pi r) (the polar Jacobian, which sbibm's likelihood leaves out)
    p = x - _tm_shift(theta)
    u, v = p[..., 0] - TM_OFFSET, p[..., 1]
    r = torch.sqrt(u**2 + v**2)
    log_p = _normal_log_prob(r - TM_R_LOC, TM_R_SCALE**2) - torch.log(math.pi * r)
    return torch.where(u > 0, log_p, torch.full_like(log_p, -math.inf))


def _tm_reference(task: Task, x_o: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    # sbibm's closed form: a moon point p fixes |z0| = p0 - x0 and z1 = x1 - p1; both signs of z0 are
    # equally likely; rotate back to theta and keep the prior's box
    def propose(m: int, gen: torch.Generator) -> torch.Tensor:
        p = _tm_moon(m, gen)
        sign = torch.where(torch.rand(m, generator=gen) < 0.5, -1.0, 1.0)
        z0, z1 = sign * (p[:, 0] - x_o[0]), x_o[1] - p[:, 1]
        return torch.stack(((z0 - z1) / math.sqrt(2), (z0 + z1) / math.sqrt(2)), dim=-1)

    return _box_rejection(task, n, g, propose)


# -- SLCP: theta ~ U[-3, 3]^5; four draws of N(m, S), m = (t0, t1), stds t2^2, t3^2, corr tanh(t4) -------
SLCP_DRAWS, SLCP_EPS = 4, 1e-6  # sbibm adds 1e-6 to the covariance's diagonal


def _slcp_covariance(theta: torch.Tensor) -> torch.Tensor:
    s1, s2, rho = theta[..., 2] ** 2, theta[..., 3] ** 2, torch.tanh(theta[..., 4])
    cov = torch.stack((s1**2 + SLCP_EPS, rho * s1 * s2, rho * s1 * s2, s2**2 + SLCP_EPS), dim=-1)
    return cov.unflatten(-1, (2, 2))


def _slcp_simulate(theta: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    chol = torch.linalg.cholesky(_slcp_covariance(theta.double()))
    noise = torch.randn(theta.shape[0], SLCP_DRAWS, 2, generator=g, dtype=torch.float64)
    x = theta[:, None, :2].double() + torch.einsum("nij,nkj->nki", chol, noise)
    return x.reshape(theta.shape[0], 2 * SLCP_DRAWS).to(theta.dtype)


def _slcp_log_likelihood(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(theta.dtype, x.dtype)
    theta, x = theta.to(dtype), x.to(dtype)
    cov = _slcp_covariance(theta)
    a, b, d = cov[..., 0, 0], cov[..., 0, 1], cov[..., 1, 1]
    det = a * d - b * b
    draws = x.unflatten(-1, (SLCP_DRAWS, 2)) - theta[..., None, :2]
    u, v = draws[..., 0], draws[..., 1]
    quad = (d[..., None] * u**2 - 2 * b[..., None] * u * v + a[..., None] * v**2) / det[..., None]
    return (-0.5 * quad.sum(-1) - 0.5 * SLCP_DRAWS * torch.log(det) - SLCP_DRAWS * math.log(2 * math.pi))


def _slcp_reference(task: Task, x_o: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    from lunet.experiments.sbi.mcmc import sign_symmetric_metropolis

    return sign_symmetric_metropolis(task, x_o, n, g, symmetric=(2, 3))


SIMULATORS = {"gaussian_linear": _gl_simulate, "gaussian_mixture": _gm_simulate, "two_moons": _tm_simulate,
              "slcp": _slcp_simulate}
LIKELIHOODS = {"gaussian_linear": _gl_log_likelihood, "gaussian_mixture": _gm_log_likelihood,
               "two_moons": _tm_log_likelihood, "slcp": _slcp_log_likelihood}
REFERENCES = {"gaussian_linear": _gl_reference, "gaussian_mixture": _gm_reference, "two_moons": _tm_reference,
              "slcp": _slcp_reference}

TASKS = {
    "gaussian_linear": Task("gaussian_linear", 10, 10, None, seed=4001),
    "gaussian_mixture": Task("gaussian_mixture", 2, 2, 10.0, seed=4002),
    "two_moons": Task("two_moons", 2, 2, 1.0, seed=4003),
    "slcp": Task("slcp", 5, 8, 3.0, seed=4004),
}


def get_task(name: str) -> Task:
    """The task called ``name`` (one of :data:`TASKS`)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]
