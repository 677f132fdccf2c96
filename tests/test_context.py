"""lunet.context: the context network's shape and zero start, and the context side's checks."""

from __future__ import annotations

import pytest
import torch

from lunet import ConditionalLUNet
from lunet.context import context_network


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
