"""FullCovarianceGaussian: the maximum-likelihood fit in closed form, its ridge, and its refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lunet.baselines.gaussian import FullCovarianceGaussian


def closed_form_log_density(points, mean, cov):
    """log N(points; mean, cov) by the formula, in numpy."""
    diff = points - mean
    maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    return -0.5 * (points.shape[1] * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1] + maha)


def test_gaussian_fit_is_the_maximum_likelihood_gaussian():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(500, 4, generator=gen, dtype=torch.float64) @ torch.tensor(
        [[2.0, 0, 0, 0], [1, 1, 0, 0], [0, 0.5, 0.3, 0], [0, 0, 0, 1]], dtype=torch.float64)
    g = FullCovarianceGaussian.fit(x, ridge=0.0)
    mean, cov = x.mean(0), torch.cov(x.T)
    diff = x[:7] - mean
    expected = -0.5 * (4 * math.log(2 * math.pi) + torch.logdet(cov) + (diff @ torch.linalg.inv(cov) * diff).sum(1))
    assert torch.allclose(g.log_prob(x[:7]), expected, atol=1e-10)
    # a constant feature keeps the fit usable through the ridge
    flat = torch.cat([x, torch.zeros(500, 1, dtype=torch.float64)], dim=1)
    assert torch.isfinite(FullCovarianceGaussian.fit(flat).log_prob(flat[:3])).all()
    with pytest.raises(ValueError, match="at least 2 rows"):
        FullCovarianceGaussian.fit(x[:1])
    with pytest.raises(ValueError, match=r"shape \(N, D\)"):
        FullCovarianceGaussian.fit(x[0])


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("ridge", [1e-6, 0.05])
def test_the_gaussian_baseline_is_the_closed_form_fit(ridge):
    rng = np.random.default_rng(0)
    mix = np.array([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.3, -1.0, 3.0]])
    x = rng.standard_normal((40, 3)) @ mix + np.array([1.0, -2.0, 5.0])
    fitted = FullCovarianceGaussian.fit(torch.from_numpy(x), ridge=ridge)
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / (len(x) - 1)  # the unbiased covariance
    cov += np.diag(ridge * np.diag(cov))  # the ridge: a share of each feature's own variance
    np.testing.assert_allclose(fitted.mean.numpy(), mean, rtol=1e-12)
    tril = fitted.scale_tril.numpy()
    assert fitted.scale_tril.dtype == torch.float64
    assert np.array_equal(np.triu(tril, 1), np.zeros((3, 3))) and (np.diag(tril) > 0).all()
    np.testing.assert_allclose(tril @ tril.T, cov, rtol=1e-10)
    points = 3 * rng.standard_normal((7, 3))
    np.testing.assert_allclose(fitted.log_prob(torch.from_numpy(points)).numpy(),
                               closed_form_log_density(points, mean, cov), rtol=1e-10)


@pytest.mark.usefixtures("one_thread")
def test_a_constant_feature_gets_the_ridge_of_the_mean_variance():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal((30, 2)) * [1.0, 4.0], np.full((30, 1), 7.0)], axis=1)
    fitted = FullCovarianceGaussian.fit(torch.from_numpy(x), ridge=1e-3)
    var = np.var(x, axis=0, ddof=1)
    cov = fitted.scale_tril.numpy() @ fitted.scale_tril.numpy().T
    assert cov[2, 2] == pytest.approx(1e-3 * var.mean(), rel=1e-10)
    assert cov[0, 0] == pytest.approx(var[0] * (1 + 1e-3), rel=1e-10)
