"""Every fast path agrees with the exact reference: the frozen-weight cache, batch sizes, precisions."""

import pytest
import torch

from lunet import LULinear, LUNet


def make_net(seed=0, dim=32, blocks=4, learn_alpha=False):
    torch.manual_seed(seed)
    # moderately conditioned: tolerances near float32 eps
    net = LUNet(dim, blocks, init_scale=0.3, learn_alpha=learn_alpha)
    with torch.no_grad():
        for block in net.blocks:
            block.bias.normal_(0.0, 0.5)
    return net


@pytest.mark.parametrize("learn_alpha", [False, True], ids=["fixed-slope", "learnable-slope"])
def test_cached_and_uncached_paths_agree(learn_alpha):
    """The folded frozen pass (standardisation and slopes folded into the matrices)
    against the training path, with a non-trivial standardisation."""
    net = make_net(learn_alpha=learn_alpha)
    net.standardize(torch.randn(500, 32) * 3 + 1)
    if learn_alpha:
        with torch.no_grad():
            for i, act in enumerate(net.activations):
                act.alpha_logit.fill_(-2.0 + i)
    x = torch.randn(64, 32) * 3 + 1
    z_grad, ld_grad = net(x)  # grad enabled: two triangular products per block
    with torch.no_grad():
        z_cached, ld_cached = net(x)  # one product with the cached L U per block
        x_cached = net.inverse(z_cached)
    x_solve = net.inverse(z_grad.detach().requires_grad_())  # triangular solves
    assert torch.allclose(z_grad, z_cached, rtol=1e-5, atol=1e-5)
    assert torch.allclose(ld_grad, ld_cached, rtol=1e-6, atol=1e-5)
    assert torch.allclose(x_cached, x_solve, rtol=1e-4, atol=1e-4)
    assert torch.allclose(x_cached, x, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("fused", [False, True], ids=["foreach", "fused"])
def test_cache_is_invalidated_by_an_optimiser_step(fused):
    """A fused step leaves the parameters' versions alone: the forward before it must drop the caches."""
    net = make_net()
    x = torch.randn(16, 32)
    with torch.no_grad():
        before = net.log_prob(x)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, fused=fused)
    loss = -net.log_prob(torch.randn(64, 32)).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    with torch.no_grad():
        after = net.log_prob(x)
    fresh = make_net()
    fresh.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert not torch.allclose(before, after)
        assert torch.allclose(after, fresh.log_prob(x), atol=1e-5)
        assert torch.allclose(net.inverse(net(x)[0]), x, atol=1e-4)


def test_cache_is_invalidated_by_load_state_dict_and_in_place_edits():
    net, other = make_net(seed=0), make_net(seed=1)
    x = torch.randn(8, 32)
    with torch.no_grad():
        net.log_prob(x)  # fills the caches
        net.load_state_dict(other.state_dict())
        assert torch.allclose(net.log_prob(x), other.log_prob(x), atol=1e-5)
        net.blocks[1].lu.mul_(0.5)
        other.blocks[1].lu.mul_(0.5)
        assert torch.allclose(net.log_prob(x), other.log_prob(x), atol=1e-5)
        net.blocks[2].diag.add_(0.1)
        z = torch.randn(8, 32)
        assert torch.allclose(net(net.inverse(z))[0], z, atol=1e-4)
        folded, unfolded = net.log_prob(x), net.inverse(z)
        net.input_std.mul_(2.0)  # folded into the first matrix of each direction
        refolded, reunfolded = net.log_prob(x), net.inverse(z)
    assert not torch.allclose(folded, refolded) and not torch.allclose(unfolded, reunfolded)
    assert torch.allclose(refolded, net.log_prob(x), rtol=1e-5, atol=1e-4)  # the training path
    assert torch.allclose(reunfolded, net.inverse(z.requires_grad_()), rtol=1e-4, atol=1e-4)


def test_cache_is_invalidated_by_a_changed_learnable_slope():
    net = make_net(learn_alpha=True)
    x = torch.randn(8, 32)
    z = torch.randn(8, 32)
    with torch.no_grad():
        before, inverse_before = net.log_prob(x), net.inverse(z)
        net.activations[1].alpha_logit.add_(2.2)  # a: 0.1 -> 0.5, whose inverse table has another step
        after, inverse_after = net.log_prob(x), net.inverse(z)
    assert not torch.allclose(before, after) and not torch.allclose(inverse_before, inverse_after)
    assert torch.allclose(after, net.log_prob(x), rtol=1e-5, atol=1e-4)  # the training path
    assert torch.allclose(inverse_after, net.inverse(z.requires_grad_()), rtol=1e-4, atol=1e-4)


def test_cache_follows_dtype_moves():
    net = make_net()
    x = torch.randn(8, 32, dtype=torch.float64)
    with torch.no_grad():
        lp32 = net.log_prob(x.float())
        net.double()
        lp64 = net.log_prob(x)
        assert lp64.dtype == torch.float64
        net.float()
        assert torch.equal(net.log_prob(x.float()), lp32)


def test_training_mode_holds_no_cached_matrices():
    layer = LULinear(16)
    with torch.no_grad():
        layer(torch.randn(4, 16))
    assert layer._cache is not None
    layer(torch.randn(4, 16))  # a training-mode forward drops the frozen copies
    assert layer._cache is None


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
        z_fast, ld_fast = net(x)
    z_ref, ld_ref = net(x)  # grad enabled: the training path
    assert torch.allclose(z_fast, z_ref, rtol=1e-5, atol=1e-4)
    assert torch.allclose(ld_fast, ld_ref, rtol=1e-6, atol=1e-3)


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["train-path", "cached-path"])
def test_an_empty_batch_gives_empty_results(grad_enabled):
    net = make_net()
    empty = torch.empty(0, 32)
    with torch.set_grad_enabled(grad_enabled):
        z, logdet = net(empty)
        assert z.shape == (0, 32) and logdet.shape == (0,)
        assert net.log_prob(empty).shape == (0,)
        assert net.inverse(empty).shape == (0, 32)


def test_batch_one_and_batch_thousand_agree():
    net = make_net()
    x = torch.randn(1000, 32)
    with torch.no_grad():
        big = net.log_prob(x)
        small = torch.cat([net.log_prob(x[i : i + 1]) for i in range(0, 1000, 97)])
        z = torch.randn(1000, 32)
        inv_big = net.inverse(z)
        inv_small = torch.cat([net.inverse(z[i : i + 1]) for i in range(0, 1000, 97)])
    assert torch.allclose(big[::97], small, rtol=1e-5, atol=1e-5)
    # samples reach ~1e3 through the slope-a branches: compare relative to their scale
    assert (inv_big[::97] - inv_small).abs().max() < 1e-5 * inv_big.abs().max()


@pytest.mark.parametrize("grad_enabled", [True, False], ids=["train-path", "cached-path"])
def test_float32_agrees_with_float64(grad_enabled):
    net = make_net()
    net64 = make_net().double()
    x = torch.randn(200, 32, dtype=torch.float64)
    with torch.set_grad_enabled(grad_enabled):
        lp32 = net.log_prob(x.float()).double()
        lp64 = net64.log_prob(x)
        s32 = net.inverse(x.float()).double()
        s64 = net64.inverse(x)
    assert (lp32 - lp64).abs().max().item() < 1e-4 * lp64.abs().max().item()
    assert ((s32 - s64).abs() / s64.abs().clamp_min(1)).max().item() < 1e-3


@pytest.mark.parametrize("batch", [1, 3])
def test_small_batches_of_a_wide_net_agree_with_the_training_path(batch, two_threads):
    """At width 640 the frozen matrices are large enough that a small batch's products
    are split among the threads (``FrozenAffine``): density and sampling must not notice."""
    net = make_net(dim=640, blocks=3)
    net.standardize(torch.randn(200, 640) * 2 + 1)
    x = torch.randn(batch, 640) * 2 + 1
    z_ref, ld_ref = net(x)
    x_ref = net.inverse(z_ref.detach().requires_grad_())
    with torch.no_grad():
        z, ld = net(x)
        x_back = net.inverse(z)
    layer = net.blocks[0]  # a layer's own cache takes the same products
    y_ref = layer(x)[0]
    with torch.no_grad():
        y, x_layer = layer(x)[0], layer.inverse(y_ref)
    assert (y - y_ref).abs().max() < 1e-5 * y_ref.abs().max()
    assert (x_layer - x).abs().max() < 1e-4 * x.abs().max()
    assert (z - z_ref).abs().max() < 1e-5 * z_ref.abs().max()
    assert (ld - ld_ref).abs().max() < 1e-5 * ld_ref.abs().max()
    assert (x_back - x_ref).abs().max() < 1e-4 * x_ref.abs().max()
    assert (x_back - x).abs().max() < 1e-3
