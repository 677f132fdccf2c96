"""A frozen composition (lunet.frozen_sequential): an LU-Net with spline activations, or with
slopes learned per group, gives a FrozenSequential whose density, inverse and sampling agree with the flow's."""

import pytest
import torch

from fast.test_spline import DTYPES, TOL
from lunet import LUNet
from lunet.frozen import FrozenLUNet
from lunet.frozen_sequential import FrozenSequential
from test_flow import _flow
from test_spline import spline_lunet


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_frozen_spline_lunet_matches_the_module(dtype):
    torch.manual_seed(2)
    net = LUNet(12, 3, activation="spline", bins=8, bound=3.0, init_scale=0.5).to(dtype)
    with torch.no_grad():
        for act in net.activations:
            for p in act.parameters():
                p.normal_(0.0, 0.7)
    net.standardize(torch.randn(200, 12, dtype=dtype) * 2 + 1)
    frozen = net.frozen()
    x = torch.randn(257, 12, dtype=dtype) * 2 + 1  # more rows than one block of the fast passes
    with torch.no_grad():
        torch.testing.assert_close(frozen.log_prob(x), net.log_prob(x), **TOL[dtype])
        z, ld = frozen.forward(x)
        back, inv_ld = frozen.inverse(z)
    torch.testing.assert_close(back, x, **TOL[dtype])
    torch.testing.assert_close(inv_ld, -ld, **TOL[dtype])
    torch.manual_seed(5)
    drawn = frozen.sample(9)
    torch.manual_seed(5)
    torch.testing.assert_close(drawn, net.sample(9), **TOL[dtype])


def test_a_frozen_spline_lunet_gives_the_flows_figures():
    net = spline_lunet()
    net.standardize(torch.randn(100, 6, dtype=torch.float64) * 2 + 1)
    x = torch.randn(2, 3, 6, dtype=torch.float64)
    frozen = net.frozen()
    torch.testing.assert_close(frozen.log_prob(x), net.log_prob(x), atol=1e-10, rtol=0)
    torch.manual_seed(3)
    expected = net.sample((2, 2), temperature=0.7)
    torch.manual_seed(3)
    torch.testing.assert_close(frozen.sample((2, 2), temperature=0.7), expected, atol=1e-10, rtol=0)


def test_a_frozen_flow_keeps_learned_group_slopes_out_of_its_folding():
    flow = _flow(learn_alpha=True)
    with pytest.raises(ValueError, match="FrozenLUNet folds"):
        FrozenLUNet(flow)
    frozen = flow.frozen()  # each block folded alone, the activations with a slope per group copied
    assert isinstance(frozen, FrozenSequential)
    x = torch.randn(20, 6, dtype=torch.float64)
    torch.testing.assert_close(frozen.log_prob(x), flow.log_prob(x).detach())
    z = torch.randn(20, 6, dtype=torch.float64)
    torch.testing.assert_close(frozen.inverse(z)[0], flow.inverse(z)[0].detach())
