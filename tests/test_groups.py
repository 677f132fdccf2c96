"""Grouped LU layers and flows: independent flows side by side, taken apart exactly."""

import pytest
import torch

from lunet import LULinear, LUNet


def _flow(groups: int = 3, width: int = 2, learn_alpha: bool = False) -> LUNet:
    torch.manual_seed(0)
    flow = LUNet(groups * width, 4, init_scale=1.0, groups=groups, learn_alpha=learn_alpha).double()
    with torch.no_grad():
        for block in flow.blocks:
            block.bias.normal_()
        for act in flow.activations:
            if learn_alpha:
                act.alpha_logit.uniform_(-3, 1)  # a different slope in every group
    flow.standardize(torch.randn(200, groups * width, dtype=torch.float64) * 3 + 1)
    return flow


def test_a_grouped_layer_maps_each_group_by_its_own_block():
    torch.manual_seed(1)
    layer = LULinear(6, groups=3, init_scale=1.0).double()
    weight = layer.weight()
    off_group = torch.block_diag(*[torch.ones(2, 2)] * 3).double() == 0
    assert torch.all(weight[off_group] == 0)
    x = torch.randn(4, 6, dtype=torch.float64)
    y, logdet = layer(x)
    torch.testing.assert_close(y, x @ weight.T + layer.bias)
    torch.testing.assert_close(logdet, torch.linalg.slogdet(weight)[1].expand(4))
    torch.testing.assert_close(layer.inverse(y)[0], x)


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


@pytest.mark.parametrize("learn_alpha", [False, True], ids=["fixed-slope", "slope-learned-per-group"])
def test_the_split_flows_add_up_to_the_grouped_one(learn_alpha):
    flow = _flow(learn_alpha=learn_alpha)
    parts = flow.split_groups()
    assert [p.features for p in parts] == [2, 2, 2] and all(p.groups == 1 for p in parts)
    x = torch.randn(7, 6, dtype=torch.float64)
    total = sum(part.log_prob(x[:, 2 * g : 2 * g + 2]) for g, part in enumerate(parts))
    torch.testing.assert_close(total, flow.log_prob(x))
    z = torch.randn(5, 6, dtype=torch.float64)
    for g, part in enumerate(parts):
        torch.testing.assert_close(part.inverse(z[:, 2 * g : 2 * g + 2])[0], flow.inverse(z)[0][:, 2 * g : 2 * g + 2])


def test_the_snapshot_of_a_grouped_flow_agrees():
    flow = _flow()
    x = torch.randn(9, 6, dtype=torch.float64)
    torch.testing.assert_close(flow.frozen().log_prob(x), flow.log_prob(x))


def test_a_grouped_flow_counts_only_its_groups_parameters():
    assert LUNet(6, 2, groups=3).num_parameters() == 3 * LUNet(2, 2).num_parameters()


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


def test_a_snapshot_keeps_learned_group_slopes_out_of_its_folding():
    from lunet.frozen import FrozenLUNet, FrozenSequential

    flow = _flow(learn_alpha=True)
    with pytest.raises(ValueError, match="FrozenLUNet folds"):
        FrozenLUNet(flow)
    snapshot = flow.frozen()  # each block folded alone, the activations with a slope per group copied
    assert isinstance(snapshot, FrozenSequential)
    x = torch.randn(20, 6, dtype=torch.float64)
    torch.testing.assert_close(snapshot.log_prob(x), flow.log_prob(x).detach())
    z = torch.randn(20, 6, dtype=torch.float64)
    torch.testing.assert_close(snapshot.inverse(z)[0], flow.inverse(z)[0].detach())
