"""Input checks (lunet.checks): the value checks switched off and on again, and the shape checks that
stay when they are off."""

import pytest
import torch

import lunet
from lunet import LUNet


def _flow(learn_alpha: bool = False) -> LUNet:
    torch.manual_seed(0)
    flow = LUNet(6, 3, init="random", init_scale=1.0, learn_alpha=learn_alpha)
    with torch.no_grad():
        for block in flow.blocks:
            block.bias.normal_()
    return flow


def test_value_checks_can_be_switched_off_and_come_back():
    flow = _flow()
    bad = torch.full((2, 6), float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(bad)
    with lunet.set_value_checks(False):
        assert torch.isnan(flow.log_prob(bad)).all()
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(bad)
    lunet.set_value_checks(False)
    try:
        assert torch.isnan(flow.log_prob(bad)).all()
    finally:
        lunet.set_value_checks(True)
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(bad)


def test_shape_checks_stay_when_value_checks_are_off():
    flow = _flow()
    with lunet.set_value_checks(False), pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        flow.log_prob(torch.randn(3, 5))
