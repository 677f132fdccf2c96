"""Reference posterior draws from an exact likelihood by many parallel Metropolis chains, one draw per
chain (the reference of SLCP, whose posterior has no closed form).

The chains start from importance resampling of prior draws, adapt one Gaussian random-walk proposal
to the population's covariance during burn-in, then run with it fixed; each chain's last state is one
draw. Posteriors symmetric under a sign flip of some coordinates (SLCP's two standard deviations
enter squared) are sampled folded (those coordinates kept >= 0 by reflection, which leaves the
proposal symmetric), and a uniformly random sign is put back at the end: the four mirror modes get
exactly equal mass, which no chain would have to find.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional, Sequence

import torch

if TYPE_CHECKING:  # tasks imports this module when its SLCP reference is asked for
    from lunet.experiments.sbi.tasks import Task

__all__ = ["sign_symmetric_metropolis"]

BURN_IN, RUN, ADAPT_EVERY, RESAMPLE_FROM = 2000, 1000, 100, 200_000


def sign_symmetric_metropolis(task: Task, x_o: torch.Tensor, n: int, generator: torch.Generator,
                              symmetric: Sequence[int] = (), burn_in: int = BURN_IN, run: int = RUN
                              ) -> torch.Tensor:
    """``n`` posterior draws (n, theta_dim) given ``x_o`` under ``task``'s uniform prior and exact
    likelihood (:class:`~lunet.experiments.sbi.tasks.Task`), float32; ``symmetric``: coordinates
    whose sign the posterior ignores."""
    sym = list(symmetric)
    x = x_o.double()

    def log_target(theta: torch.Tensor) -> torch.Tensor:
        lp = task.log_likelihood(theta, x)
        return torch.where(task.in_support(theta), lp, torch.full_like(lp, -math.inf))

    def fold(theta: torch.Tensor) -> torch.Tensor:
        if sym:
            theta[:, sym] = theta[:, sym].abs()
        return theta

    start = fold(task.sample_prior(RESAMPLE_FROM, generator).double())
    weights = torch.softmax(torch.nan_to_num(log_target(start), nan=-math.inf), dim=0)
    theta = start[torch.multinomial(weights, n, replacement=True, generator=generator)]
    log_p = log_target(theta)
    d = theta.shape[1]
    chol: Optional[torch.Tensor] = None
    for step in range(burn_in + run):
        if step < burn_in and step % ADAPT_EVERY == 0:
            cov = torch.cov(theta.T) + 1e-10 * torch.eye(d, dtype=theta.dtype)
            chol = torch.linalg.cholesky(cov * (2.38**2 / d))
        assert chol is not None, "the proposal adapts at the first step of the burn-in: burn_in must be at least 1"
        proposal = fold(theta + torch.randn(n, d, generator=generator, dtype=theta.dtype) @ chol.T)
        log_q = log_target(proposal)
        accept = torch.log(torch.rand(n, generator=generator, dtype=theta.dtype)) < log_q - log_p
        theta = torch.where(accept[:, None], proposal, theta)
        log_p = torch.where(accept, log_q, log_p)
    if sym:
        signs = torch.where(torch.rand(n, len(sym), generator=generator) < 0.5, -1.0, 1.0).double()
        theta[:, sym] = theta[:, sym] * signs
    return theta.float()
