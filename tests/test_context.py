"""lunet.context: the context network's shape and zero start, and the context side's checks."""

from __future__ import annotations

import pytest
import torch

from lunet import ConditionalLUNet
from lunet.conditional_density import RowPlan, broadcast_rows
from lunet.context import context_network, read_params
from lunet.latent import standard_normal_log_prob


def test_the_context_network_has_the_asked_widths_and_starts_at_zero():
    net = context_network(3, (8, 5), 7)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 8), (8, 5), (5, 7)]
    assert torch.equal(net(torch.randn(4, 3)), torch.zeros(4, 7))
    assert len([m for m in context_network(2, 16, 1) if isinstance(m, torch.nn.Linear)]) == 3  # an int: two layers
    with pytest.raises(ValueError, match="hidden"):
        context_network(2, (4, 0), 1)


def test_the_context_side_embeds_each_kind_of_context():
    vectors = ConditionalLUNet(2, 3, 1).double()
    c = torch.randn(5, 3, dtype=torch.float64)
    assert torch.equal(vectors.embed(c), c)  # the context standardisation starts as the identity
    assert vectors.context_shape(c[None]) == (1, 5)
    labels = ConditionalLUNet(2, 4, 1, num_classes=6)
    assert labels.embed(torch.tensor([[0, 5]])).shape == (1, 2, 4) and labels.context_shape(2) == ()
    net = torch.nn.Linear(9, 4)
    raw = ConditionalLUNet(2, 4, 1, embedding=net)
    assert raw.context_shape(torch.randn(3, 9)) == (3,)
    assert torch.equal(raw.embed(torch.ones(1, 9)), net(torch.ones(1, 9)))
    with pytest.raises(ValueError, match="not both"):
        ConditionalLUNet(2, 4, 1, num_classes=3, embedding=net)


@pytest.mark.parametrize("activation", ["leaky_softplus", "spline"])
def test_labels_outnumbering_the_classes_read_each_class_once_with_the_same_values_and_gradients(activation):
    torch.manual_seed(0)
    flow = ConditionalLUNet(3, 4, 3, num_classes=3, activation=activation, bins=4).double()
    with torch.no_grad():
        flow.conditioner[-1].weight.normal_(0, 0.3)
    labels = torch.tensor([[2, 0, 1, 2], [1, 1, 0, 2]])  # (2, 4): more labels than classes
    per_row = read_params(flow.conditioner(flow.embed(labels)), flow.num_blocks, flow.features,
                          flow.max_log_scale, flow.spline)
    calls = []
    hook = flow.conditioner.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[:-1]))
    params = flow._params(labels)
    hook.remove()
    assert calls == [(3,)]  # the network ran on the three classes, not the eight rows
    for mine, theirs in zip(params, per_row):
        if theirs is None:
            assert mine is None
            continue
        assert mine.shape == theirs.shape
        torch.testing.assert_close(mine, theirs)
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    grads = torch.autograd.grad(flow.log_prob(x, labels).sum(), list(flow.conditioner.parameters())
                                + [flow.label_embedding.weight])

    def per_row_log_prob():
        plan = RowPlan(*broadcast_rows(x, per_row, "input"))
        z, logdet = plan.restore(*flow.forward_rows(plan.rows, *plan.params))
        return standard_normal_log_prob(z) + logdet

    torch.testing.assert_close(flow.log_prob(x, labels), per_row_log_prob())
    expected = torch.autograd.grad(per_row_log_prob().sum(), list(flow.conditioner.parameters())
                                   + [flow.label_embedding.weight])
    for mine, theirs in zip(grads, expected):
        torch.testing.assert_close(mine, theirs)
