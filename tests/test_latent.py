"""The latent side of every flow (lunet.latent): the standard normal's log-density, the draws at a
temperature with both arguments checked, where a flow computes, and the temperature at which an
overflowing flow stays finite."""

from __future__ import annotations

import math
import types

import pytest
import torch
from torch import nn

from lunet import LUNet
from lunet.latent import LOG_2PI, finite_temperature, flow_placement, latent_draws, standard_normal_log_prob


@pytest.mark.parametrize("leading", [(), (5,), (2, 3)])
def test_the_log_density_is_the_sum_of_the_coordinates_standard_normal_ones(leading):
    z = torch.randn(*leading, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    lp = standard_normal_log_prob(z)
    assert lp.shape == leading
    torch.testing.assert_close(lp, expected)
    assert LOG_2PI == pytest.approx(math.log(2 * math.pi), rel=1e-15)
    # at the origin: -D/2 log(2 pi)
    assert float(standard_normal_log_prob(torch.zeros(4, dtype=torch.float64))) == pytest.approx(-2 * LOG_2PI)


def test_draws_are_rows_of_the_shape_and_scaled_by_the_temperature():
    cpu = torch.device("cpu")
    z, shape = latent_draws((2, 3), 4, 1.0, torch.float64, cpu, torch.Generator().manual_seed(0))
    assert shape == torch.Size((2, 3)) and z.shape == (6, 4) and z.dtype == torch.float64
    hot, _ = latent_draws((2, 3), 4, 2.5, torch.float64, cpu, torch.Generator().manual_seed(0))
    torch.testing.assert_close(hot, 2.5 * z, rtol=0, atol=0)  # the same draws, scaled
    one, shape = latent_draws(5, 3, 1.0, torch.float32, cpu)
    assert shape == torch.Size((5,)) and one.shape == (5, 3) and one.dtype == torch.float32
    none, shape = latent_draws((), 3, 1.0, torch.float32, cpu)
    assert shape == torch.Size(()) and none.shape == (1, 3)


@pytest.mark.parametrize("sample_shape, temperature, message", [
    (-1, 1.0, "negative"), ("three", 1.0, "sample_shape"), (2, 0.0, "temperature"), (2, math.inf, "temperature"),
    (2, True, "temperature"), (2, 1e35, "too large for torch.float32"),
])
def test_bad_shapes_and_temperatures_are_refused(sample_shape, temperature, message):
    with pytest.raises(ValueError, match=message):
        latent_draws(sample_shape, 3, temperature, torch.float32, torch.device("cpu"))


def test_a_flow_computes_where_its_first_floating_tensor_is():
    assert flow_placement(LUNet(3, 1).double()) == (torch.float64, torch.device("cpu"))
    holder = nn.Module()
    holder.register_buffer("count", torch.zeros(3, dtype=torch.int64))  # no floating tensor
    assert flow_placement(holder) == (torch.get_default_dtype(), torch.device("cpu"))
    frozen = types.SimpleNamespace(dtype=torch.float16, device=torch.device("meta"))
    assert flow_placement(frozen) == (torch.float16, torch.device("meta"))
    assert flow_placement(object()) == (torch.get_default_dtype(), torch.device("cpu"))


def test_the_finite_temperature_is_the_first_halving_at_which_the_inverse_stays_finite():
    scale = 1e30  # an inverse that overflows float32 for latents beyond about 3.4e8
    flow = types.SimpleNamespace(dtype=torch.float32, device=torch.device("cpu"),
                                 inverse=lambda z: (z * scale, None))
    few = torch.ones(3, 2, dtype=torch.float64)
    found = finite_temperature(flow, lambda t: t * few, 1e10)
    assert found is not None
    assert math.log2(1e10 / found) == round(math.log2(1e10 / found))  # 1e10 / 2^k
    biggest = torch.finfo(torch.float32).max
    assert found * scale <= biggest < 2 * found * scale  # the first halving that fits, not a later one


def test_no_finite_temperature_is_none():
    flow = types.SimpleNamespace(dtype=torch.float64, device=torch.device("cpu"),
                                 inverse=lambda z: (torch.full_like(z, math.nan), None))
    assert finite_temperature(flow, lambda t: t * torch.ones(2, 2, dtype=torch.float64), 1.0) is None
