"""lunet.sbi: LU-Net as an sbi density estimator (skipped without the sbi extra)."""

import copy
import math

import pytest
import torch
from torch import nn

pytest.importorskip("sbi")

from sbi.inference import NPE  # noqa: E402

from lunet.sbi import LUNetPosteriorEstimator, build_lunet, lunet_nn  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def _pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A 3-parameter Gaussian task with 2-D-shifted data far from zero mean and unit scale, so z-scoring matters."""
    g = torch.Generator().manual_seed(seed)
    theta = 5.0 + 0.5 * torch.randn(n, 3, generator=g)
    x = 100.0 + 10.0 * (theta + 0.2 * torch.randn(n, 3, generator=g))
    return theta, x


# the default (splines) and the leaky softplus
ACTIVATIONS = pytest.mark.parametrize("act", [{}, {"activation": "leaky_softplus"}], ids=["spline", "leaky_softplus"])


@ACTIVATIONS
def test_the_builder_trains_inside_sbi_and_its_posterior_beats_the_prior(act):
    torch.manual_seed(0)
    theta, x = _pairs(1000)
    prior = torch.distributions.Independent(torch.distributions.Normal(torch.full((3,), 5.0), 0.5), 1)
    inference = NPE(prior, density_estimator=lunet_nn(num_blocks=3, hidden=32, **act), show_progress_bars=False)
    estimator = inference.append_simulations(theta, x).train(max_num_epochs=40)
    assert isinstance(estimator, LUNetPosteriorEstimator)
    posterior = inference.build_posterior()
    theta_o, x_o = _pairs(20, seed=1)
    log_q = torch.stack([posterior.log_prob(t[None], x=xo)[0] for t, xo in zip(theta_o, x_o)])
    # the true posterior's std is 0.19 against the prior's 0.5, about 1 nat per parameter at best; the
    # prior itself as a posterior would gain nothing
    assert (log_q.mean() - prior.log_prob(theta_o).mean()) > 1.0
    draws = posterior.sample((500,), x=x_o[0], show_progress_bars=False)
    assert draws.shape == (500, 3)
    # the median: a short training leaves LU-Net's tails long (the inverse's slope 1/alpha per block)
    assert (draws.median(0).values - theta_o[0]).abs().max() < 0.6


@ACTIVATIONS
def test_shapes_follow_sbi(act):
    theta, x = _pairs(50)
    est = build_lunet(theta, x, num_blocks=2, hidden=8, **act)
    assert est.sample((7,), x[:4]).shape == (7, 4, 3)
    assert est.sample((2, 5), x[:1]).shape == (2, 5, 1, 3)
    assert est.log_prob(theta[:4], x[:4]).shape == (1, 4)
    assert est.log_prob(theta[:6].view(2, 3, 3), x[:3]).shape == (2, 3)
    assert est.log_prob(theta[:6].view(2, 3, 3), x[:6].view(2, 3, 3)).shape == (2, 3)
    assert est.loss(theta[:4], x[:4]).shape == (4,)
    draws, log_q = est.sample_and_log_prob((6,), x[:2])
    assert draws.shape == (6, 2, 3) and log_q.shape == (6, 2)
    torch.testing.assert_close(log_q, est.log_prob(draws, x[:2]), atol=1e-4, rtol=1e-4)


def test_the_log_density_is_the_standardised_flows_after_the_z_score_jacobian():
    theta, x = _pairs(200)
    est = build_lunet(theta, x, num_blocks=3, hidden=8)
    with torch.no_grad():  # a flow that is not the identity: move every weight off its start
        for p in est.parameters():
            p.add_(0.1 * torch.randn_like(p))
    mean, std = theta.mean(0), theta.std(0)
    torch.testing.assert_close(est.net.input_standardize.mean, mean)
    # x reaches the context network z-scored by sbi's standardizing net
    torch.testing.assert_close(est.embedding_net(x[:5]), (x[:5] - x.mean(0)) / x.std(0), atol=1e-5, rtol=1e-5)
    core = copy.deepcopy(est.net)
    core.input_standardize.mean.zero_()
    core.input_standardize.std.fill_(1.0)
    expected = core.log_prob((theta[:10] - mean) / std, x[:10]) - torch.log(std).sum()
    torch.testing.assert_close(est.log_prob(theta[:10], x[:10])[0], expected, atol=1e-5, rtol=1e-5)
    # and the zuko form of the same flow: flow(x) is p(. | x)
    torch.testing.assert_close(est.net(x[:10]).log_prob(theta[:10]), expected, atol=1e-5, rtol=1e-5)


def test_structured_and_no_z_scoring():
    theta, x = _pairs(100)
    est = build_lunet(theta, x, num_blocks=2, hidden=8, z_score_theta="structured", z_score_x="none")
    s = est.net.input_standardize
    assert torch.allclose(s.mean, torch.full((3,), float(theta.mean()))) and torch.allclose(
        s.std, torch.full((3,), float(theta.std())))
    torch.testing.assert_close(est.embedding_net(x[:3]), x[:3])


def test_an_embedding_net_sets_the_context_width_and_trains_with_the_flow():
    theta, x = _pairs(100)
    series = x.repeat(1, 4).view(100, 2, 6)  # conditions of shape (2, 6)
    embed = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    est = build_lunet(theta, series, num_blocks=2, hidden=8, embedding_net=embed)
    assert est.condition_shape == (2, 6) and est.net.context_features == 5
    with torch.no_grad():  # the context network's last layer starts at zero, which passes no gradient back
        est.net.conditioner[-1].weight.normal_(0, 0.1)
    est.loss(theta[:8], series[:8]).mean().backward()
    assert embed[1].weight.grad is not None and embed[1].weight.grad.abs().sum() > 0
    assert est.sample((3,), series[:2]).shape == (3, 2, 3)


def test_bad_inputs_say_what_is_wrong():
    theta, x = _pairs(20)
    est = build_lunet(theta, x, num_blocks=2, hidden=8)
    with pytest.raises(ValueError, match="condition"):
        est.log_prob(theta[:2], torch.zeros(2, 4))
    with pytest.raises(ValueError, match="input"):
        est.log_prob(torch.zeros(2, 5), x[:2])
    with pytest.raises(ValueError, match="broadcast"):
        est.log_prob(theta[:3], x[:2])
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        build_lunet(theta.view(20, 3, 1), x)
    with pytest.raises(ValueError, match="rows"):
        build_lunet(theta, x[:10])
    with pytest.raises(ValueError, match="transform_to_unconstrained"):
        build_lunet(theta, x, z_score_theta="transform_to_unconstrained")
    with pytest.raises(ValueError, match="num_blocks"):
        lunet_nn(num_blocks=0)
    assert math.isfinite(float(est.loss(theta[:2], x[:2]).sum()))
