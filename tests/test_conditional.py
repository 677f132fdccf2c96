"""ConditionalLUNet (lunet.conditional): the flow contract for every context, broadcasting, labels,
embeddings, the distribution face, training, torch.func and torch.compile, the bad-input messages
(the frozen flow's own passes: test_frozen_conditional.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo as dynamo

import lunet
from lunet import ConditionalFlowDistribution, ConditionalLUNet, FrozenConditionalLUNet, LUNet

D, DC = 3, 2
# the two activations, as a parameter of the contract tests: the leaky softplus, and splines whose
# knots the context network gives
SPLINE = {"activation": "spline", "bins": 6}
ACTIVATIONS = pytest.mark.parametrize("act", [{}, SPLINE], ids=["leaky_softplus", "spline"])


def _perturbed(flow: ConditionalLUNet, seed: int = 1, scale: float = 0.3) -> ConditionalLUNet:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return flow


def make_flow(dtype: torch.dtype = torch.float64, **kwargs) -> ConditionalLUNet:
    torch.manual_seed(0)
    flow = ConditionalLUNet(D, DC, 3, hidden=16, init_scale=0.5, **kwargs).to(dtype)
    gen = torch.Generator().manual_seed(5)
    data = torch.randn(100, D, generator=gen, dtype=dtype) * 2 + 1
    context = torch.randn(100, DC, generator=gen, dtype=dtype) * 3 - 1
    if "num_classes" in kwargs or "embedding" in kwargs:
        flow.standardize(data)
    else:
        flow.standardize(data, context)
    return _perturbed(flow)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@ACTIVATIONS
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)], ids=["float64", "float32"])
def test_the_inverse_is_exact_for_every_context(dtype, tol, act):
    flow = make_flow(dtype, **act)
    x, c = randn(6, D, dtype=dtype), randn(6, DC, seed=1, dtype=dtype)
    z, logdet = flow(x, c)
    assert z.shape == (6, D) and logdet.shape == (6,) and z.dtype == dtype
    back, inverse_logdet = flow.inverse(z, c)
    torch.testing.assert_close(back, x, rtol=tol, atol=tol)
    torch.testing.assert_close(inverse_logdet, -logdet, rtol=tol, atol=tol)
    # and the other way round, from latents
    z2 = randn(6, D, seed=2, dtype=dtype)
    torch.testing.assert_close(flow(flow.inverse(z2, c)[0], c)[0], z2, rtol=tol, atol=tol)
    # the map really depends on the context
    assert (flow(x, c.flip(0))[0] - z).abs().max() > 1e-3


@ACTIVATIONS
@pytest.mark.parametrize("kind", ["vectors", "labels"])
def test_the_log_det_is_that_of_the_jacobian_for_each_context(kind, act):
    flow = make_flow(num_classes=4, **act) if kind == "labels" else make_flow(**act)
    contexts = [torch.tensor(k) for k in range(4)] if kind == "labels" else list(randn(3, DC, seed=3))
    x = randn(D, seed=4)
    for c in contexts:
        jac = torch.autograd.functional.jacobian(lambda v: flow(v, c)[0], x)
        torch.testing.assert_close(flow(x, c)[1], torch.linalg.slogdet(jac)[1], rtol=1e-10, atol=1e-10)
        z = flow(x, c)[0].detach()
        inverse_jac = torch.autograd.functional.jacobian(lambda v: flow.inverse(v, c)[0], z)
        torch.testing.assert_close(flow.inverse(z, c)[1], torch.linalg.slogdet(inverse_jac)[1], rtol=1e-9, atol=1e-9)


def test_a_new_flow_is_the_unconditional_lunet_of_its_layers_for_every_context():
    torch.manual_seed(3)
    flow = ConditionalLUNet(D, DC, 3).double()
    plain = LUNet(D, 3).double()
    plain.load_state_dict({k: v for k, v in flow.state_dict().items() if k.startswith(("input_", "blocks"))})
    x = randn(5, D)
    for c in randn(3, DC, seed=1):
        torch.testing.assert_close(flow.log_prob(x, c), plain.log_prob(x), rtol=1e-12, atol=1e-12)


@ACTIVATIONS
def test_inputs_and_contexts_broadcast_as_torch_does(act):
    flow = make_flow(**act)
    x, c = randn(4, D), randn(4, DC, seed=1)
    per_row = torch.stack([flow.log_prob(x[i], c[i]) for i in range(4)])
    torch.testing.assert_close(flow.log_prob(x, c), per_row, rtol=1e-12, atol=1e-12)
    # one context for every row
    one = flow.log_prob(x, c[0])
    assert one.shape == (4,)
    torch.testing.assert_close(one, torch.stack([flow.log_prob(x[i], c[0]) for i in range(4)]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow.log_prob(x, c[:1]), one, rtol=1e-12, atol=1e-12)
    # one input under every context
    every = flow.log_prob(x[0], c)
    assert every.shape == (4,)
    torch.testing.assert_close(every, torch.stack([flow.log_prob(x[0], c[i]) for i in range(4)]), rtol=1e-12,
                               atol=1e-12)
    # an outer product: (2, 1) inputs against (1, 4) contexts
    grid = flow.log_prob(x[:2, None], c[None])
    assert grid.shape == (2, 4)
    torch.testing.assert_close(grid[1, 3], flow.log_prob(x[1], c[3]), rtol=1e-12, atol=1e-12)
    z, logdet = flow(x[:2, None], c[None])
    assert z.shape == (2, 4, D) and logdet.shape == (2, 4)
    back, _ = flow.inverse(z, c[None])
    torch.testing.assert_close(back, x[:2, None].expand(2, 4, D), rtol=1e-10, atol=1e-10)


@ACTIVATIONS
def test_integer_labels_are_embedded(act):
    flow = make_flow(num_classes=5, **act)
    x = randn(6, D)
    labels = torch.tensor([0, 1, 2, 3, 4, 1])
    lp = flow.log_prob(x, labels)
    assert lp.shape == (6,)
    torch.testing.assert_close(lp[1], flow.log_prob(x[1], 1), rtol=1e-12, atol=1e-12)  # a Python int is a label
    torch.testing.assert_close(lp[5], flow.log_prob(x[5], torch.tensor(1, dtype=torch.int32)), rtol=1e-12, atol=1e-12)
    assert flow.sample((7,), labels).shape == (7, 6, D)
    assert flow.sample(3, 2).shape == (3, D)
    assert flow(labels).batch_shape == (6,)
    lp.sum().backward()
    assert flow.label_embedding.weight.grad.abs().sum() > 0


def test_an_embedding_network_for_large_contexts_learns_with_the_flow():
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Flatten(-2), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, DC))
    flow = make_flow(embedding=net)
    images = randn(5, 4, 4, seed=2)  # (5, 4, 4) raw contexts -> (5, DC)
    x = randn(5, D)
    lp = flow.log_prob(x, images)
    assert lp.shape == (5,)
    assert flow(images).batch_shape == (5,)
    assert flow.sample(2, images).shape == (2, 5, D)
    lp.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
    z, _ = flow(x, images)
    torch.testing.assert_close(flow.inverse(z, images)[0], x, rtol=1e-10, atol=1e-10)


@ACTIVATIONS
def test_gradients_reach_a_floating_context(act):
    flow = make_flow(**act)
    c = randn(4, DC, seed=1).requires_grad_()
    flow.log_prob(randn(4, D), c).sum().backward()
    assert c.grad.abs().sum() > 0
    c.grad = None
    flow.rsample(3, c).square().sum().backward()
    assert c.grad.abs().sum() > 0


@ACTIVATIONS
def test_the_distribution_face(act):
    flow = make_flow(**act)
    c = randn(4, DC, seed=1)
    dist = flow(c)
    assert isinstance(dist, torch.distributions.Distribution) and isinstance(dist, ConditionalFlowDistribution)
    assert dist.batch_shape == (4,) and dist.event_shape == (D,)
    x = randn(2, 4, D)
    torch.testing.assert_close(dist.log_prob(x), flow.log_prob(x, c), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow.distribution(c).log_prob(x[0]), flow.log_prob(x[0], c), rtol=1e-12, atol=1e-12)
    assert dist.sample().shape == (4, D) and dist.sample((7,)).shape == (7, 4, D)
    assert not dist.sample((2,)).requires_grad
    assert flow(c[0]).batch_shape == () and flow(c[0]).sample((5,)).shape == (5, D)
    drawn = dist.rsample((3,))
    assert drawn.shape == (3, 4, D) and drawn.requires_grad
    drawn.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in flow.conditioner.parameters())
    # a temperature scales the latent, and the density is that of the tempered draws
    z, logdet = flow(x, c)
    cold = flow.distribution(c, temperature=0.5)
    half = torch.tensor(0.5, dtype=torch.float64)
    expected = torch.distributions.Normal(torch.zeros_like(half), half).log_prob(z).sum(-1) + logdet
    torch.testing.assert_close(cold.log_prob(x), expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="temperature"):
        flow.distribution(c, temperature=-1.0)


@ACTIVATIONS
@pytest.mark.parametrize("kind", ["vectors", "labels"])
def test_the_frozen_flow_is_the_flow_until_the_flow_changes(kind, act):
    flow = make_flow(num_classes=4, **act) if kind == "labels" else make_flow(**act)
    c = torch.tensor([0, 3, 1, 2]) if kind == "labels" else randn(4, DC, seed=1)
    frozen = flow.frozen()
    assert isinstance(frozen, FrozenConditionalLUNet)
    x = randn(2, 4, D)
    for a, b in (*zip(frozen(x, c), flow(x, c)), *zip(frozen.inverse(x, c), flow.inverse(x, c)),
                 (frozen.log_prob(x, c[0]), flow.log_prob(x, c[0]))):
        assert not a.requires_grad
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    assert frozen.sample((5,), c).shape == (5, 4, D) and frozen.sample(3, c[0]).shape == (3, D)
    dist = frozen(c)
    assert dist.batch_shape == (4,) and not dist.has_rsample
    torch.testing.assert_close(dist.log_prob(x), flow.log_prob(x, c), rtol=1e-10, atol=1e-10)
    assert dist.sample((7,)).shape == (7, 4, D)
    with pytest.raises(NotImplementedError, match="without autograd"):
        dist.rsample()
    with pytest.raises(ValueError, match=r"input must have shape \(\.\.\., 3\)"):
        frozen.log_prob(randn(4, D + 1), c)
    before = frozen.log_prob(x, c)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(1.5)
    assert torch.equal(frozen.log_prob(x, c), before)


@ACTIVATIONS
def test_the_density_integrates_to_one_for_several_contexts(act):
    torch.manual_seed(0)
    flow = _perturbed(ConditionalLUNet(2, 1, 2, hidden=8, alpha=0.5, init_scale=0.5, **act).double(), seed=3,
                      scale=0.15)
    side = torch.linspace(-15.0, 15.0, 301, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(side, side, indexing="ij"), dim=-1).reshape(-1, 1, 2)
    contexts = torch.tensor([[-2.0], [0.0], [1.5]], dtype=torch.float64)
    with torch.no_grad():
        density = flow.log_prob(grid, contexts).exp()  # (301^2, 3): every point under every context
        outside = (flow.sample(20_000, contexts).abs() > 15).any(-1).double().mean(0)
    mass = density.sum(0) * (side[1] - side[0]) ** 2
    assert bool((outside < 2e-3).all())
    torch.testing.assert_close(mass, 1.0 - outside, rtol=0, atol=3e-3)


def test_training_learns_the_condition():
    """x | c ~ N((2c, -c), 0.3^2 I), c ~ U(-1.5, 1.5): the conditional flow beats the best
    unconditional Gaussian and comes near the true conditional entropy."""
    gen = torch.Generator().manual_seed(0)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = 3 * torch.rand(n, 1, generator=gen) - 1.5
        return torch.cat([2 * c, -c], dim=1) + 0.3 * torch.randn(n, 2, generator=gen), c

    x, c = draw(2000)
    x_test, c_test = draw(2000)
    torch.manual_seed(0)
    flow = ConditionalLUNet(2, 1, 2, hidden=32).standardize(x, c)
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for step in range(200):
        batch = torch.randint(0, 2000, (256,), generator=gen)
        loss = -flow.log_prob(x[batch], c[batch]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        nll = -flow.log_prob(x_test, c_test).mean().item()
    gaussian = torch.distributions.MultivariateNormal(x.mean(0), torch.cov(x.T))
    unconditional = -gaussian.log_prob(x_test).mean().item()
    truth = math.log(2 * math.pi * math.e * 0.09)  # the true conditional entropy, nats
    assert nll < unconditional - 1.0, (nll, unconditional)
    assert nll < truth + 0.3, (nll, truth)
    # samples for each context sit where that context's data do (their means 2.2 apart)
    with torch.no_grad():
        drawn = flow.sample(2000, torch.tensor([[-1.0], [1.0]]))
    torch.testing.assert_close(drawn.mean(0), torch.tensor([[-2.0, 1.0], [2.0, -1.0]]), rtol=0, atol=0.25)


def test_spline_activations_bend_each_coordinate_as_the_context_asks():
    """x | c for two labels: c = 0 two narrow modes at +-1.5, c = 1 one wide mode at 0. Shifts and scales
    of a context cannot split one mode into two; splines whose knots the context gives can."""
    gen = torch.Generator().manual_seed(0)

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.randint(0, 2, (n,), generator=gen)
        sign = torch.randint(0, 2, (n,), generator=gen) * 2 - 1
        wide, narrow = 0.5 * torch.randn(n, generator=gen), 1.5 * sign + 0.25 * torch.randn(n, generator=gen)
        return torch.where(c == 0, narrow, wide)[:, None], c

    def true_log_prob(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        modes = torch.stack([torch.distributions.Normal(m, 0.25).log_prob(x[:, 0]) for m in (-1.5, 1.5)])
        return torch.where(c == 0, torch.logsumexp(modes, 0) - math.log(2),
                           torch.distributions.Normal(0.0, 0.5).log_prob(x[:, 0]))

    x, c = draw(4000)
    x_test, c_test = draw(4000)
    nll = {}
    for name, act in (("leaky_softplus", {}), ("spline", SPLINE | {"bins": 8})):
        torch.manual_seed(0)
        flow = ConditionalLUNet(1, 4, 3, hidden=32, num_classes=2, **act).standardize(x)
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
        for step in range(300):
            batch = torch.randint(0, 4000, (256,), generator=gen)
            loss = -flow.log_prob(x[batch], c[batch]).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            nll[name] = -flow.log_prob(x_test, c_test).mean().item()
    truth = -true_log_prob(x_test, c_test).mean().item()
    assert nll["spline"] < truth + 0.1, (nll, truth)
    assert nll["leaky_softplus"] > nll["spline"] + 0.3, (nll, truth)
    with torch.no_grad():  # the last flow trained is the spline's: label 0's draws avoid the gap between its modes
        draws = flow.sample(4000, torch.tensor([0, 1]))
    assert (draws[:, 0].abs() < 0.5).double().mean() < 0.02
    assert (draws[:, 1].abs() < 0.5).double().mean() > 0.5


def test_a_new_spline_flow_is_its_lu_layers_alone_for_every_context():
    torch.manual_seed(3)
    flow = ConditionalLUNet(D, DC, 3, **SPLINE).double()
    x = randn(5, D)
    h, logdet = flow.input_standardize(x)
    for block in flow.blocks:
        h, ld = block(h)
        logdet = logdet + ld
    for c in randn(3, DC, seed=1):
        z, got = flow(x, c)
        torch.testing.assert_close(z, h, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got, logdet, rtol=1e-12, atol=1e-12)
    # the spline's outputs of the context network: (blocks - 1) x features x (3 bins - 1)
    assert flow.conditioner[-1].out_features == 3 * 2 * D + 2 * D * (3 * 6 - 1)
    assert "activation=spline, bins=6" in repr(flow) and "spline activations" in repr(flow.frozen())
    for kwargs, match in (({"activation": "relu"}, "activation must be one of"), ({**SPLINE, "bins": 0}, "bins"),
                          ({**SPLINE, "bound": 0.0}, "bound must lie in")):
        with pytest.raises(ValueError, match=match):
            ConditionalLUNet(D, DC, 2, **kwargs)


@ACTIVATIONS
def test_torch_func_and_higher_derivatives(act):
    from torch.func import grad, jacrev, vmap

    flow = make_flow(**act)
    x, c = randn(5, D), randn(5, DC, seed=1)
    jac = jacrev(lambda v: flow(v, c[0])[0])(x[0])
    torch.testing.assert_close(jac, torch.autograd.functional.jacobian(lambda v: flow(v, c[0])[0], x[0]))
    torch.testing.assert_close(vmap(flow.log_prob)(x, c), flow.log_prob(x, c), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(vmap(lambda z, k: flow.inverse(z, k)[0])(x, c), flow.inverse(x, c)[0],
                               rtol=1e-10, atol=1e-10)
    # the score in x and in c, and a second derivative
    score_c = grad(lambda k: flow.log_prob(x[0], k))(c[0])
    assert score_c.shape == (DC,) and score_c.abs().sum() > 0
    hess = torch.autograd.functional.hessian(lambda v: flow.log_prob(v, c[0]), x[0])
    assert hess.shape == (D, D)
    torch.testing.assert_close(hess, hess.T, rtol=1e-9, atol=1e-9)
    rows = x.clone().requires_grad_()
    score = torch.autograd.grad(flow.log_prob(rows, c).sum(), rows, create_graph=True)[0]
    score.square().sum().backward()  # a gradient penalty reaches the weights
    assert all(p.grad is not None for p in flow.conditioner.parameters())


@ACTIVATIONS
def test_log_prob_and_sample_compile_without_graph_breaks(act):
    dynamo.reset()
    try:
        flow = make_flow(torch.float32, **act)
        x, c = randn(8, D, dtype=torch.float32), randn(8, DC, seed=1, dtype=torch.float32)
        explanation = dynamo.explain(lambda x, c: -flow.log_prob(x, c).mean())(x, c)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        assert explanation.graph_count == 1
        explanation = dynamo.explain(lambda c: flow.sample(4, c))(c)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(lambda x, c: flow.log_prob(x, c), backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x, c), flow.log_prob(x, c))
    finally:
        dynamo.reset()


def test_bad_inputs_and_contexts_are_refused_clearly():
    flow = make_flow()
    x, c = randn(4, D), randn(4, DC, seed=1)
    with pytest.raises(ValueError, match=r"input must have shape \(\.\.\., 3\)"):
        flow.log_prob(randn(4, D + 1), c)
    with pytest.raises(ValueError, match=r"context must have shape \(\.\.\., 2\)"):
        flow.log_prob(x, randn(4, DC + 1))
    with pytest.raises(ValueError, match=r"leading shape \(4,\) and the context's \(3,\) do not broadcast"):
        flow.log_prob(x, c[:3])
    with pytest.raises(TypeError, match="context has dtype torch.float32"):
        flow.log_prob(x, c.float())
    with pytest.raises(TypeError, match="input has dtype torch.float32"):
        flow.log_prob(x.float(), c)
    with pytest.raises(TypeError, match="floating dtype"):
        flow.log_prob(x, torch.ones(4, DC, dtype=torch.long))
    with pytest.raises(TypeError, match="context must be a torch.Tensor"):
        flow.log_prob(x, [[0.0, 1.0]])
    bad = c.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="context holds 1 NaN"):
        flow.log_prob(x, bad)
    with pytest.raises(ValueError, match="input holds 1 NaN"):
        flow.inverse(torch.where(torch.arange(D) == 0, float("inf"), x[0]), c[0])
    with pytest.raises(ValueError, match="sample_shape"):
        flow.sample(-1, c)
    with lunet.set_value_checks(False):
        assert torch.isnan(flow.log_prob(x, bad)[1])

    labelled = make_flow(num_classes=3)
    with pytest.raises(TypeError, match=r"integer class labels of shape \(\.\.\.\) in \[0, 3\)"):
        labelled.log_prob(x, torch.zeros(4))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\), got values from 0 to 3"):
        labelled.log_prob(x, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="labels must lie"):
        labelled.sample(2, -1)

    wrong = make_flow(embedding=torch.nn.Linear(5, DC + 1))
    with pytest.raises(ValueError, match=r"embedding network must return \(\.\.\., 2\), got \(4, 3\)"):
        wrong.log_prob(x, randn(4, 5))

    for kwargs, match in (({"num_classes": 3, "embedding": torch.nn.Identity()}, "not both"),
                          ({"embedding": "net"}, "nn.Module"), ({"max_log_scale": 0.0}, "max_log_scale"),
                          ({"hidden": (8, 0)}, "hidden")):
        with pytest.raises((ValueError, TypeError), match=match):
            ConditionalLUNet(D, DC, 2, **kwargs)
    with pytest.raises(ValueError, match="vector contexts"):
        labelled.standardize(x, c)


def test_a_stored_state_is_checked_before_it_is_loaded():
    flow = make_flow()
    state = {k: v.clone() for k, v in flow.state_dict().items()}
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    for other, match in ((ConditionalLUNet(D, DC + 1, 3, hidden=16), r"context_standardize.mean has shape \(2,\), "
                          r"this flow's \(3,\) \(features 3, 3 blocks, contexts of width 3\)"),
                         (ConditionalLUNet(D, DC, 4, hidden=16), "the state lacks blocks.3.lu"),
                         (ConditionalLUNet(D, DC, 2, hidden=16), "the state holds blocks.2.lu"),
                         (ConditionalLUNet(D, DC, 3, hidden=16, num_classes=4), "lacks label_embedding.weight")):
        with pytest.raises(ValueError, match=match):
            other.to(torch.float64).load_state_dict(state)
    edits = (("blocks.1.diag_sign", lambda t: t.__setitem__(0, 5.0), "other than \\+1 and -1"),
             ("input_standardize.std", lambda t: t.__setitem__(2, 0.0), "not a positive number"),
             ("conditioner.0.weight", lambda t: t.__setitem__((0, 0), float("nan")), "1 NaN or infinite value;"),
             ("blocks.0.diag", lambda t: t.__setitem__(1, 1e4), "beyond the"))
    for key, edit, match in edits:
        damaged = {k: v.clone() for k, v in state.items()}
        edit(damaged[key])
        with pytest.raises(ValueError, match=match):
            flow.load_state_dict(damaged)
    for key in before:  # nothing was copied from a refused state
        assert torch.equal(flow.state_dict()[key], before[key]), key
    flow.load_state_dict(state)  # its own state loads, and a part of it without strict
    flow.load_state_dict({k: v for k, v in state.items() if k.startswith("blocks.")}, strict=False)


def test_a_checkpoint_holding_a_conditional_flow_is_checked(tmp_path):
    from lunet.experiments.store.checkpoint import load_model, save_checkpoint

    spec = {"name": "conditional_lunet", "features": D, "context_features": DC, "num_blocks": 3, "hidden": 16,
            "init_scale": 0.5}
    flow = make_flow()
    save_checkpoint({"model_spec": spec, "model": flow.state_dict(), "best_model": None}, tmp_path / "ok.pt")
    loaded, _ = load_model(tmp_path / "ok.pt")
    x, c = randn(5, D), randn(5, DC, seed=1)
    assert isinstance(loaded, ConditionalLUNet) and torch.equal(loaded.log_prob(x, c), flow.log_prob(x, c))

    wide = dict(spec, context_features=DC + 1)
    save_checkpoint({"model_spec": wide, "model": flow.state_dict(), "best_model": None}, tmp_path / "wide.pt")
    with pytest.raises(ValueError, match=r"wide.pt does not match its model spec .*context_standardize.mean has "
                                         r"shape \(2,\), this flow's \(3,\)"):
        load_model(tmp_path / "wide.pt")
    state = flow.state_dict()
    state["blocks.2.diag_sign"][1] = -3.0
    save_checkpoint({"model_spec": spec, "model": state, "best_model": None}, tmp_path / "sign.pt")
    with pytest.raises(ValueError, match="sign.pt holds weights that no model of its kind has: model blocks.2.diag_"):
        load_model(tmp_path / "sign.pt")
