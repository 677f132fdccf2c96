"""Input checks (lunet.checks): the value checks switched off and on again, and the shape checks that
stay when they are off."""

import pytest
import torch

import lunet
from conftest import random_bias_flow


def test_value_checks_can_be_switched_off_and_come_back():
    flow = random_bias_flow()
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
    flow = random_bias_flow()
    with lunet.set_value_checks(False), pytest.raises(ValueError, match=r"\(\.\.\., 6\)"):
        flow.log_prob(torch.randn(3, 5))
