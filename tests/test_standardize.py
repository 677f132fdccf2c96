"""Standardize: every feature scaled by its own spread at any scale; constant features, too few
rows and a width of zero refused with a message that names them."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from lunet import LUNet, Standardize

DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])


def make_data(rows: int = 500) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    spread = torch.tensor([1.0, 0.1, 5.0], dtype=torch.float64)
    mean = torch.tensor([0.0, 3.0, -2.0], dtype=torch.float64)
    return torch.randn(rows, 3, generator=gen, dtype=torch.float64) * spread + mean


@DTYPES
@pytest.mark.parametrize("scale", [1e-30, 1e-5, 2.0**-30, 1e-3, 1.0, 1e4, 1e30], ids=str)
def test_scaling_the_data_shifts_the_log_density_by_the_log_of_the_scale(dtype, scale):
    data = make_data()
    torch.manual_seed(1)
    flow = LUNet(3, 2).to(dtype).standardize(data.to(dtype))
    scaled = copy.deepcopy(flow).standardize((data * scale).to(dtype))
    x = data[:7]
    shift = scaled.log_prob((x * scale).to(dtype)).double() - flow.log_prob(x.to(dtype)).double()
    expected = torch.full_like(shift, -3 * math.log(scale))
    tol = 1e-9 if dtype == torch.float64 else 1e-4 * max(1.0, abs(expected[0].item()))
    torch.testing.assert_close(shift, expected, rtol=0, atol=tol)
    torch.testing.assert_close(scaled.input_std.double() / scale, data.to(dtype).double().std(0), rtol=1e-5, atol=0)


def test_a_constant_feature_is_refused_by_name():
    data = make_data(50)
    data[:, 1] = 0.25
    with pytest.raises(ValueError, match=r"^feature 1 \(counting from 0\) of the data is constant"):
        Standardize(3).fit(data)
    with pytest.raises(ValueError, match="feature 1 .* constant"):
        LUNet(3, 2).double().standardize(data)
    with pytest.raises(ValueError, match=r"features 0, 1, 2 \(3 of 3"):
        Standardize(3).fit(make_data(1).repeat(20, 1))  # one row, duplicated
    # an explicit floor is the caller's choice of spread
    fitted = Standardize(3).double().fit(data, min_std=0.5)
    assert fitted.std[1] == 0.5 and fitted.std[0] > 0.5
    with pytest.raises(ValueError, match="min_std"):
        Standardize(3).fit(data, min_std=-1.0)


def test_a_spread_needs_two_rows_and_a_standardisation_a_width():
    with pytest.raises(ValueError, match="at least 2 rows"):
        Standardize(3).fit(make_data(1))
    for width in (0, -2, 2.5):
        with pytest.raises(ValueError, match="features must be a positive integer"):
            Standardize(width)
