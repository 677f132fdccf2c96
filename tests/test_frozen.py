"""The frozen flow agrees with the module's own pass (batch sizes, precisions), and no
inference result ever comes from weights that are no longer the module's."""

import pytest
import torch

from lunet import LUNet


def make_net(seed=0, features=32, blocks=4, learn_alpha=False):
    torch.manual_seed(seed)
    # moderately conditioned: tolerances near float32 eps
    net = LUNet(features, blocks, init_scale=0.3, learn_alpha=learn_alpha)
    with torch.no_grad():
        for block in net.blocks:
            block.bias.normal_(0.0, 0.5)
    return net


@pytest.mark.parametrize("learn_alpha", [False, True], ids=["fixed-slope", "learnable-slope"])
def test_frozen_and_module_paths_agree(learn_alpha):
    """The frozen flow's folded pass (standardisation and slopes folded into the matrices)
    against the module's own pass, with a non-trivial standardisation."""
    net = make_net(learn_alpha=learn_alpha)
    net.standardize(torch.randn(500, 32) * 3 + 1)
    if learn_alpha:
        with torch.no_grad():
            for i, act in enumerate(net.activations):
                act.alpha_logit.fill_(-2.0 + i)
    x = torch.randn(64, 32) * 3 + 1
    z_grad, ld_grad = net(x)  # two triangular products per block
    frozen = net.frozen()
    z_frozen, ld_frozen = frozen(x)  # one product with the folded L U per block
    x_frozen = frozen.inverse(z_frozen)[0]
    x_solve = net.inverse(z_grad.detach().requires_grad_())[0]  # triangular solves
    assert torch.allclose(z_grad, z_frozen, rtol=1e-5, atol=1e-5)
    assert torch.allclose(ld_grad, ld_frozen, rtol=1e-6, atol=1e-5)
    assert torch.allclose(frozen.log_prob(x), net.log_prob(x), rtol=1e-5, atol=1e-4)
    assert torch.allclose(x_frozen, x_solve, rtol=1e-4, atol=1e-4)
    assert torch.allclose(x_frozen, x, rtol=1e-4, atol=1e-4)
    assert not z_frozen.requires_grad  # a frozen flow runs without autograd
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    assert torch.allclose(frozen.sample(7, generator=gen()), net.sample(7, generator=gen()), rtol=1e-4, atol=1e-4)


# Every way user code changes weights. Each takes the flow and returns the module whose
# results are then compared (AveragedModel keeps its own copy of the flow).
def _edit_data(net):
    net.blocks[1].lu.data.mul_(0.5)  # .data edits do not bump the parameter's version
    net.blocks[2].diag.data.add_(0.1)
    return net


def _edit_copy_under_no_grad(net):
    with torch.no_grad():
        net.blocks[0].bias.copy_(torch.randn(32))
    return net


def _edit_load_state_dict(net):
    net.load_state_dict(make_net(seed=1).state_dict())
    return net


def _edit_optimiser_step(fused):
    def edit(net):
        opt = torch.optim.Adam(net.parameters(), lr=1e-2, fused=fused)
        loss = -net.log_prob(torch.randn(64, 32)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return net

    return edit


def _edit_averaged_model(net):
    averaged = torch.optim.swa_utils.AveragedModel(net)
    averaged.module.log_prob(torch.randn(4, 32))  # used before the update
    averaged.update_parameters(make_net(seed=2))
    return averaged.module


def _edit_input_standardisation(net):
    with torch.no_grad():
        net.input_std.mul_(2.0)  # folded into the first matrix of a frozen flow
    return net


def _edit_dtype_round_trip(net):
    net.double()
    with torch.no_grad():
        net.blocks[3].lu.mul_(0.7)
    return net.float()


EDITS = {
    "data": _edit_data,
    "copy_under_no_grad": _edit_copy_under_no_grad,
    "load_state_dict": _edit_load_state_dict,
    "adam_foreach": _edit_optimiser_step(fused=False),
    "adam_fused": _edit_optimiser_step(fused=True),
    "averaged_model": _edit_averaged_model,
    "standardisation": _edit_input_standardisation,
    "dtype_round_trip": _edit_dtype_round_trip,
}


@pytest.mark.parametrize("edit", list(EDITS.values()), ids=list(EDITS))
def test_no_grad_results_follow_every_weight_edit(edit):
    """Inference without autograd always reads the module's current weights: after any
    edit, ``log_prob``, ``inverse`` and ``sample`` under ``no_grad`` equal those of a fresh
    module holding the edited weights."""
    net = make_net()
    x, z = torch.randn(8, 32), torch.randn(8, 32)
    with torch.no_grad():
        before = net.log_prob(x), net.inverse(z)[0], net.sample(4, generator=torch.Generator().manual_seed(0))
    edited = edit(net)
    fresh = make_net(seed=3)
    fresh.load_state_dict(edited.state_dict())
    with torch.no_grad():
        after = edited.log_prob(x), edited.inverse(z)[0], edited.sample(4, generator=torch.Generator().manual_seed(0))
        expected = fresh.log_prob(x), fresh.inverse(z)[0], fresh.sample(4, generator=torch.Generator().manual_seed(0))
    for name, old, new, ref in zip(("log_prob", "inverse", "sample"), before, after, expected):
        assert not torch.allclose(old, new), f"{name} did not change with the weights"
        assert torch.equal(new, ref), name
    layer = edited.blocks[1]
    fresh_layer = fresh.blocks[1]
    with torch.no_grad():
        assert torch.equal(layer(x)[0], fresh_layer(x)[0])
        assert torch.equal(layer.inverse(z)[0], fresh_layer.inverse(z)[0])


@pytest.mark.parametrize("edit", list(EDITS.values()), ids=list(EDITS))
def test_a_frozen_flow_keeps_its_weights_and_a_new_one_sees_the_edit(edit):
    net = make_net()
    x, z = torch.randn(8, 32), torch.randn(8, 32)
    frozen = net.frozen()
    before = frozen.log_prob(x), frozen.inverse(z)[0]
    edited = edit(net)
    assert torch.equal(frozen.log_prob(x), before[0]) and torch.equal(frozen.inverse(z)[0], before[1])
    renewed = edited.frozen()
    with torch.no_grad():
        assert torch.allclose(renewed.log_prob(x), edited.log_prob(x), rtol=1e-5, atol=1e-4)
        assert torch.allclose(renewed.inverse(z)[0], edited.inverse(z)[0], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(renewed.log_prob(x), before[0])


def test_a_frozen_flow_follows_the_flows_dtype_and_refuses_other_inputs():
    net = make_net().double()
    frozen = net.frozen()
    assert frozen.dtype == torch.float64 and "a frozen copy" in repr(frozen)
    x = torch.randn(4, 32, dtype=torch.float64)
    assert torch.allclose(frozen.log_prob(x), net.log_prob(x), rtol=1e-10, atol=1e-9)
    with pytest.raises(TypeError, match="dtype"):
        frozen.log_prob(x.float())
    with pytest.raises(ValueError, match="32"):
        frozen.inverse(torch.randn(4, 31, dtype=torch.float64))[0]
    with pytest.raises(ValueError, match="temperature"):
        frozen.sample(3, temperature=float("inf"))


def test_a_non_invertible_flow_cannot_be_frozen():
    net = LUNet(8, 2, diag="raw")
    with torch.no_grad():
        net.blocks[1].diag[3] = 0.0
    with pytest.raises(ValueError, match="not invertible"):
        net.frozen()


def test_density_redoes_pre_activations_beyond_the_fast_activation():
    """Pre-activations above ~83 leave the range where the density pass's activation is exact
    in float32: that batch must be redone exactly, and agree with the training path."""
    net = make_net()
    with torch.no_grad():
        net.blocks[0].bias.fill_(90.0)
        net.blocks[1].bias.fill_(-90.0)
    x = torch.randn(16, 32) * 0.1
    with torch.no_grad():
        assert net.blocks[0](x)[0].min() > 85  # the first pre-activations, the input being standard
    z_fast, ld_fast = net.frozen()(x)
    z_ref, ld_ref = net(x)
    assert torch.allclose(z_fast, z_ref, rtol=1e-5, atol=1e-4)
    assert torch.allclose(ld_fast, ld_ref, rtol=1e-6, atol=1e-3)


def _module(net):
    return net


def _frozen(net):
    return net.frozen()


PASSES = pytest.mark.parametrize("passes", [_module, _frozen], ids=["module", "frozen"])


@PASSES
def test_an_empty_batch_gives_empty_results(passes):
    flow = passes(make_net())
    empty = torch.empty(0, 32)
    z, logdet = flow(empty)
    assert z.shape == (0, 32) and logdet.shape == (0,)
    assert flow.log_prob(empty).shape == (0,)
    assert flow.inverse(empty)[0].shape == (0, 32)


@PASSES
def test_batch_one_and_batch_thousand_agree(passes):
    flow = passes(make_net())
    x = torch.randn(1000, 32)
    with torch.no_grad():
        big = flow.log_prob(x)
        small = torch.cat([flow.log_prob(x[i : i + 1]) for i in range(0, 1000, 97)])
        z = torch.randn(1000, 32)
        inv_big = flow.inverse(z)[0]
        inv_small = torch.cat([flow.inverse(z[i : i + 1])[0] for i in range(0, 1000, 97)])
    assert torch.allclose(big[::97], small, rtol=1e-5, atol=1e-5)
    # samples reach ~1e3 through the slope-a branches: compare relative to their scale
    assert (inv_big[::97] - inv_small).abs().max() < 1e-5 * inv_big.abs().max()


@PASSES
def test_float32_agrees_with_float64(passes):
    flow = passes(make_net())
    flow64 = passes(make_net().double())
    x = torch.randn(200, 32, dtype=torch.float64)
    lp32 = flow.log_prob(x.float()).double()
    lp64 = flow64.log_prob(x)
    s32 = flow.inverse(x.float())[0].double()
    s64 = flow64.inverse(x)[0]
    assert (lp32 - lp64).abs().max().item() < 1e-4 * lp64.abs().max().item()
    assert ((s32 - s64).abs() / s64.abs().clamp_min(1)).max().item() < 1e-3


@pytest.mark.parametrize("batch", [1, 3])
def test_small_batches_of_a_wide_net_agree_with_the_training_path(batch, two_threads):
    """At width 640 the frozen flow's matrices are large enough that a small batch's products
    are split among the threads (``FrozenAffine``): density and sampling must not notice."""
    net = make_net(features=640, blocks=3)
    net.standardize(torch.randn(200, 640) * 2 + 1)
    x = torch.randn(batch, 640) * 2 + 1
    z_ref, ld_ref = net(x)
    x_ref = net.inverse(z_ref.detach().requires_grad_())[0]
    frozen = net.frozen()
    z, ld = frozen(x)
    x_back = frozen.inverse(z)[0]
    assert (z - z_ref).abs().max() < 1e-5 * z_ref.abs().max()
    assert (ld - ld_ref).abs().max() < 1e-5 * ld_ref.abs().max()
    assert (x_back - x_ref).abs().max() < 1e-4 * x_ref.abs().max()
    assert (x_back - x).abs().max() < 1e-3


def test_the_density_pass_off_the_cpu_reads_nothing_back_and_agrees(monkeypatch):
    """A frozen flow on a GPU runs its density pass exactly throughout (``sync_free``): no range
    check read back after the batch. Checked here on the CPU by switching it on."""
    net = make_net()
    x = torch.randn(64, 32)
    fast = net.frozen()
    assert not fast.sync_free  # the CPU keeps the fast activation
    synced = net.frozen()
    synced.sync_free = True
    for frozen in (fast, synced):
        frozen._forward(x)  # the folded matrices are made, once, by a first call
    reads = []
    for name in ("item", "__bool__", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _o=original, _n=name: reads.append(_n) or _o(self, *a))
    z_free, ld_free = synced._forward(x)
    assert reads == []
    z_fast, ld_fast = fast._forward(x)
    assert reads == ["__bool__"]  # the fast pass's range check
    monkeypatch.undo()
    assert torch.allclose(z_free, z_fast, rtol=1e-5, atol=1e-5)
    assert torch.allclose(ld_free, ld_fast, rtol=1e-6, atol=1e-3)
