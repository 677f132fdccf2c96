"""LUNet as a whole (lunet.flow): exact inverse, exact log-density, sampling and its temperatures,
class-conditional wrapper, grouped flows."""

import math
import warnings

import pytest
import torch

from lunet import ClassConditionalFlow, LUNet, standard_normal_log_prob
from lunet.experiments.data.mixture2d import GaussianMixture2D

DTYPES = [torch.float32, torch.float64]


def make_net(features=6, blocks=4, dtype=torch.float64, seed=0, **kw):
    torch.manual_seed(seed)
    net = LUNet(features, blocks, init_scale=1.0, **kw).to(dtype)
    with torch.no_grad():
        for block in net.blocks:
            block.bias.normal_(0.0, 2.0)  # move the kinks into the data
    return net


def round_trip_errors(net, x, z):
    """Worst relative errors of inverse(forward(x)) and forward(inverse(z))."""
    zx, _ = net(x)
    err_x = ((net.inverse(zx)[0] - x).abs() / x.abs().clamp_min(1)).max().item()
    err_z = ((net(net.inverse(z)[0])[0] - z).abs() / z.abs().clamp_min(1)).max().item()
    return err_x, err_z


@pytest.mark.parametrize("diag", ["raw", "exp"])
@pytest.mark.parametrize("grad_enabled", [True, False], ids=["solve", "cached"])
def test_network_round_trips(diag, grad_enabled):
    # Large inputs through a net whose map is deliberately ill-conditioned
    # (slope 0.1 branches, cond(A) up to ~15): the inverse must be as exact as
    # the map's conditioning allows, in float32 just as in float64.
    net64 = make_net(dtype=torch.float64, diag=diag)
    net64.standardize(torch.randn(500, 6, dtype=torch.float64) * 3 + 1)
    net32 = make_net(dtype=torch.float32, diag=diag)
    net32.load_state_dict(net64.state_dict())
    x = torch.randn(200, 6, dtype=torch.float64) * 20
    z = torch.randn(200, 6, dtype=torch.float64) * 5
    with torch.set_grad_enabled(grad_enabled):
        errs64 = round_trip_errors(net64, x, z)
        errs32 = round_trip_errors(net32, x.float(), z.float())
    eps32, eps64 = torch.finfo(torch.float32).eps, torch.finfo(torch.float64).eps
    for e64, e32 in zip(errs64, errs32):
        assert e64 < 1e-10
        # the same amplification of rounding error in both precisions
        assert e32 / eps32 < 30 * max(e64 / eps64, 1.0)


def test_pre_activations_exercise_both_branches():
    net = make_net()
    x = torch.randn(200, 6, dtype=torch.float64) * 20
    h = x
    signs = []
    for i, block in enumerate(net.blocks[:-1]):
        h, _ = block(h)
        signs.append(((h > 2).any().item(), (h < -2).any().item()))
        h, _ = net.activations[i](h)
    assert all(pos and neg for pos, neg in signs)


@pytest.mark.parametrize("diag", ["raw", "exp"])
def test_network_logdet_matches_autograd_jacobian(diag):
    net = make_net(features=4, blocks=3, diag=diag, seed=5)
    net.standardize(torch.randn(100, 4, dtype=torch.float64) * 2)
    xs = torch.randn(6, 4, dtype=torch.float64) * 4
    for x in xs:
        jac = torch.autograd.functional.jacobian(lambda v: net(v.unsqueeze(0))[0].squeeze(0), x)
        _, expected = torch.linalg.slogdet(jac)
        assert net(x.unsqueeze(0))[1].item() == pytest.approx(expected.item(), abs=1e-10)


def test_log_prob_is_change_of_variables():
    net = make_net(features=3, blocks=2)
    x = torch.randn(10, 3, dtype=torch.float64)
    z, logdet = net(x)
    expected = -0.5 * (z**2).sum(1) - 1.5 * math.log(2 * math.pi) + logdet
    assert torch.allclose(net.log_prob(x), expected, atol=1e-12)


@pytest.fixture(scope="module")
def fitted_2d_net():
    """A 6-block net briefly fitted to the 2-D mixture (a smooth, non-Gaussian density)."""
    torch.manual_seed(0)
    mix = GaussianMixture2D()
    data = mix.sample(4000, seed=11)
    net = LUNet(2, 6, init_scale=1.0)
    net.standardize(data)
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    for _ in range(300):
        loss = -net.log_prob(data[torch.randint(0, 4000, (1024,))]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.double(), mix


def test_density_integrates_to_one_in_2d(fitted_2d_net):
    net, mix = fitted_2d_net
    lim, n = 8.0, 1200
    xs = torch.linspace(-lim, lim, n + 1, dtype=torch.float64)
    mid = (xs[1:] + xs[:-1]) / 2
    cell = (xs[1] - xs[0]).item() ** 2
    with torch.no_grad():
        mass = net.log_prob(torch.cartesian_prod(mid, mid)).exp().sum().item() * cell
        inside = (net.sample(100000).abs() < lim).all(1).double().mean().item()
    # LU-Net densities have heavy tails (the inverse activation has slope 1/a),
    # so the box does not hold all the mass: quadrature over the box must equal
    # the share of exact samples that land in it (Monte-Carlo SE ~ 6e-4).
    assert inside > 0.9
    assert mass == pytest.approx(inside, abs=3e-3)
    # and the density is not the standard normal the latent starts as
    test = mix.sample(5000, seed=12).double()
    assert (net.log_prob(test) - standard_normal_log_prob(test)).abs().mean().item() > 0.1


def test_sample_shapes_dtype_and_temperature():
    net = make_net(features=5, blocks=3, dtype=torch.float32)
    with torch.no_grad():
        s = net.sample(64)
        assert s.shape == (64, 5) and s.dtype == torch.float32
        g1 = torch.Generator().manual_seed(7)
        g2 = torch.Generator().manual_seed(7)
        assert torch.equal(net.sample(8, generator=g1), net.sample(8, generator=g2))
        # temperature scales the latent: z of a cold sample is the scaled z of a warm one
        g1.manual_seed(1)
        g2.manual_seed(1)
        cold = net(net.sample(8, temperature=0.5, generator=g1))[0]
        warm = net(net.sample(8, temperature=1.0, generator=g2))[0]
        assert torch.allclose(cold, 0.5 * warm, atol=1e-4)
    with pytest.raises(ValueError, match="temperature"):
        net.sample(4, temperature=0.0)
    assert net.sample(0).shape == (0, 5)  # an empty draw, as torch.distributions gives
    with pytest.raises(ValueError, match="sample_shape"):
        net.sample(-1)


@pytest.mark.parametrize("conditional", [False, True], ids=["flow", "per-class"])
def test_sample_is_gradient_free_and_rsample_differentiable(conditional):
    """``sample`` records no graph even with autograd on, ``rsample`` keeps it;
    from one seed both draw the same rows."""
    net = make_net(features=5, blocks=3)
    model = ClassConditionalFlow([make_net(features=5, blocks=3, seed=1), net]) if conditional else net
    args = (6, 1) if conditional else (6,)
    drawn = model.sample(*args, generator=torch.Generator().manual_seed(3))
    assert not drawn.requires_grad and drawn.grad_fn is None
    kept = model.rsample(*args, generator=torch.Generator().manual_seed(3))
    assert kept.grad_fn is not None
    assert torch.allclose(kept, drawn, rtol=1e-10, atol=1e-10)
    kept.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.blocks.parameters())
    assert net.blocks[0].lu.grad.abs().sum() > 0


def test_standardize_keeps_likelihood_of_raw_data():
    net = make_net(features=3, blocks=2)
    data = torch.randn(1000, 3, dtype=torch.float64) * torch.tensor([5.0, 0.1, 2.0], dtype=torch.float64) + 7
    x = data[:5]
    before_z, before_ld = net(x)
    net.standardize(data)
    # standardising is an extra affine map; its log|det| is -sum(log std)
    after_z, after_ld = net(x * data.std(0) + data.mean(0))
    assert torch.allclose(after_z, before_z, atol=1e-10)
    assert torch.allclose(after_ld, before_ld - torch.log(data.std(0)).sum(), atol=1e-10)


def test_network_bad_inputs():
    net = LUNet(3, 2)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        net.log_prob(torch.randn(4, 2))
    with pytest.raises(TypeError, match="floating"):
        net(torch.zeros(4, 3, dtype=torch.int32))
    with pytest.raises(ValueError, match="NaN"):
        net.inverse(torch.full((2, 3), float("nan")))[0]
    with pytest.raises(ValueError, match="num_blocks"):
        LUNet(3, 0)


def test_parameter_counts_of_paper_model():
    net = LUNet(784, 4)
    assert net.num_parameters("stored") == 4_920_384  # the paper's 4.92M
    assert net.num_parameters("free") == 4 * (784 * 784 + 784)
    assert round(LUNet(784, 8).num_parameters("free") / 1e6, 2) == 4.92


def test_class_conditional_flow_bayes_classifier():
    # Two classes whose flows are pinned to two well separated Gaussians.
    flows = []
    for shift in (-3.0, 3.0):
        f = LUNet(2, 1, init="identity").double()
        with torch.no_grad():
            f.blocks[0].bias.fill_(-shift)  # z = x - shift
        flows.append(f)
    model = ClassConditionalFlow(flows)
    x = torch.tensor([[-3.0, -3.0], [3.0, 3.0], [-2.5, -3.5]], dtype=torch.float64)
    assert model.classify(x).tolist() == [0, 1, 0]
    lp = model.class_log_probs(x)
    assert lp.shape == (3, 2)
    assert torch.allclose(model.log_prob(x, torch.tensor([0, 1, 1])), lp[torch.arange(3), torch.tensor([0, 1, 1])])
    assert torch.allclose(model.log_prob(x), torch.logsumexp(lp + math.log(0.5), 1))
    with torch.no_grad():
        s = model.sample(500, 1)
    assert s.shape == (500, 2) and (s.mean(0) - 3).abs().max() < 0.2
    with pytest.raises(ValueError, match="class"):
        model.sample(3, 2)
    with pytest.raises(ValueError, match="labels"):
        model.log_prob(x, torch.tensor([0, 5, 1]))


@pytest.mark.parametrize("leading", [(), (5,), (2, 3)], ids=str)
def test_class_conditional_flow_takes_any_leading_shape(leading):
    flows = [make_net(features=3, blocks=2, seed=s) for s in range(3)]
    prior = torch.tensor([0.2, 0.3, 0.5]).log()
    model = ClassConditionalFlow(flows, prior)
    x = torch.randn(*leading, 3, dtype=torch.float64)
    per_class = torch.stack([f.log_prob(x) for f in flows], dim=-1)  # (..., C)
    assert model.class_log_probs(x).shape == (*leading, 3)
    torch.testing.assert_close(model.log_prob(x), torch.logsumexp(per_class + prior.double(), dim=-1))
    labels = torch.arange(math.prod(leading)).reshape(leading) % 3
    torch.testing.assert_close(model.log_prob(x, labels), per_class.gather(-1, labels.unsqueeze(-1)).squeeze(-1))
    assert torch.equal(model.classify(x), (per_class + prior.double()).argmax(-1))
    with pytest.raises(ValueError, match="leading shape"):
        model.log_prob(x, torch.zeros(7, dtype=torch.long))


def test_init_gaussian_needs_more_rows_than_dimensions():
    net = LUNet(5, 2).double()
    for rows in (1, 2, 5):
        with pytest.raises(ValueError, match="more rows than dimensions"):
            net.init_gaussian(torch.randn(rows, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="ridge"):
        net.init_gaussian(torch.randn(50, 5, dtype=torch.float64), ridge=-1.0)


def test_init_gaussian_names_a_collinear_feature():
    base = torch.randn(400, 3, dtype=torch.float64)
    data = torch.cat([base, base[:, :1] - 2 * base[:, 1:2]], dim=1)  # feature 3 = x0 - 2 x1
    net = LUNet(4, 2).double()
    with pytest.warns(UserWarning, match=r"feature\(s\) 3 .*linear combinations"):
        net.init_gaussian(data)
    assert torch.isfinite(net.log_prob(data[:10])).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # independent features: not a word
        LUNet(3, 2).double().init_gaussian(base)


@pytest.mark.parametrize("init_scale", [-0.1, float("nan"), float("inf"), "0.1"], ids=str)
def test_a_bad_init_scale_is_refused_by_name(init_scale):
    with pytest.raises(ValueError, match="init_scale"):
        LUNet(3, 2, init_scale=init_scale)


def test_sampling_with_an_infinite_temperature_is_refused():
    net = LUNet(3, 2)
    for bad in (float("inf"), float("nan"), 0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            net.sample(4, temperature=bad)


def test_temperatures_that_overflow_the_dtype_are_refused():
    net = LUNet(4, 2)
    with pytest.raises(ValueError, match="too large for torch.float32"):
        net.sample(3, temperature=1e39)
    with pytest.raises(ValueError, match="too large"):
        net.frozen().sample(3, temperature=1e39)
    assert torch.isfinite(net.double().sample(3, temperature=1e39)).all()


# -- grouped flows: independent flows side by side, taken apart exactly ------------------------


def _flow(groups: int = 3, width: int = 2, learn_alpha: bool = False, input_spline: bool = False) -> LUNet:
    torch.manual_seed(0)
    flow = LUNet(groups * width, 4, init_scale=1.0, groups=groups, learn_alpha=learn_alpha,
                 input_spline=input_spline).double()
    with torch.no_grad():
        for block in flow.blocks:
            block.bias.normal_()
        if input_spline:
            for p in flow.input_spline.parameters():
                p.normal_()
        for act in flow.activations:
            if learn_alpha:
                act.alpha_logit.uniform_(-3, 1)  # a different slope in every group
    flow.standardize(torch.randn(200, groups * width, dtype=torch.float64) * 3 + 1)
    return flow


def test_training_never_leaves_the_groups():
    flow = _flow()
    opt = torch.optim.Adam(flow.parameters(), lr=0.1)
    for _ in range(3):
        loss = -flow.log_prob(torch.randn(64, 6, dtype=torch.float64)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    off_group = torch.block_diag(*[torch.ones(2, 2)] * 3) == 0
    for block in flow.blocks:
        assert torch.all(block.weight()[off_group] == 0)


@pytest.mark.parametrize("learn_alpha, input_spline", [(False, False), (True, False), (False, True)],
                         ids=["fixed-slope", "slope-learned-per-group", "input-spline"])
def test_the_split_flows_add_up_to_the_grouped_one(learn_alpha, input_spline):
    flow = _flow(learn_alpha=learn_alpha, input_spline=input_spline)
    parts = flow.split_groups()
    assert [p.features for p in parts] == [2, 2, 2] and all(p.groups == 1 for p in parts)
    x = torch.randn(7, 6, dtype=torch.float64)
    total = sum(part.log_prob(x[:, 2 * g : 2 * g + 2]) for g, part in enumerate(parts))
    torch.testing.assert_close(total, flow.log_prob(x))
    z = torch.randn(5, 6, dtype=torch.float64)
    for g, part in enumerate(parts):
        torch.testing.assert_close(part.inverse(z[:, 2 * g : 2 * g + 2])[0], flow.inverse(z)[0][:, 2 * g : 2 * g + 2])


def test_a_frozen_grouped_flow_agrees():
    flow = _flow()
    x = torch.randn(9, 6, dtype=torch.float64)
    torch.testing.assert_close(flow.frozen().log_prob(x), flow.log_prob(x))


def test_a_grouped_flow_counts_only_its_groups_parameters():
    assert LUNet(6, 2, groups=3).num_parameters() == 3 * LUNet(2, 2).num_parameters()


def test_the_input_spline_sits_before_the_first_block_and_counts_its_parameters():
    flow = LUNet(5, 2, activation="spline", bins=4, input_spline=True)
    kinds = [type(part).__name__ for part in flow.transforms]
    assert kinds == ["Standardize", "MonotoneSpline", "LULinear", "MonotoneSpline", "LULinear"]
    plain = LUNet(5, 2, activation="spline", bins=4)
    assert flow.num_parameters() - plain.num_parameters() == 5 * (3 * 4 - 1)
    with pytest.raises(TypeError, match="input_spline must be True or False"):
        LUNet(5, 2, input_spline="yes")


@pytest.mark.parametrize("kwargs, message", [
    (dict(features=6, num_blocks=2, groups=4), "groups must divide features"),
])
def test_impossible_groupings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LUNet(**kwargs)


def test_learned_slopes_are_one_per_group_and_train_apart():
    flow = _flow(learn_alpha=True)
    assert all(act.alpha.shape == (3,) for act in flow.activations)
    x = torch.randn(16, 6, dtype=torch.float64)
    loss = -flow.log_prob(x).sum()
    grads = torch.autograd.grad(loss, [act.alpha_logit for act in flow.activations])
    for grad in grads:  # each group's slope gets its own gradient
        assert grad.shape == (3,) and len(set(grad.tolist())) == 3
    y = torch.randn(5, 6, dtype=torch.float64)
    x_back, ladj = flow.inverse(y)
    z, ladj_fwd = flow(x_back)
    torch.testing.assert_close(z, y)
    torch.testing.assert_close(ladj, -ladj_fwd)
