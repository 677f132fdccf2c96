"""Compositions of invertible transforms (lunet.transforms): a Sequential runs its parts in order and
adds their log-dets, an Inverse swaps a transform's passes and shares its weights, and a composition's
frozen copy computes as it does."""

from __future__ import annotations

import pytest
import torch

from lunet import Inverse, LeakySoftplus, LULinear, Sequential, Standardize


def parts():
    torch.manual_seed(0)
    return [LULinear(4).double(), LeakySoftplus(0.1).double(), LULinear(4).double()]


def test_a_sequential_needs_a_part():
    with pytest.raises(ValueError, match="at least one transform"):
        Sequential()


def test_a_sequential_is_its_parts_in_order_and_its_log_det_their_sum():
    a, act, b = parts()
    flow = Sequential(a, act, b)
    assert len(flow) == 3 and list(flow) == [a, act, b] and flow[1] is act
    assert flow.features == 4
    x = torch.randn(5, 4, dtype=torch.float64)
    h1, ld1 = a(x)
    h2, ld2 = act(h1)
    z_expected, ld3 = b(h2)
    z, logdet = flow(x)
    torch.testing.assert_close(z, z_expected)
    torch.testing.assert_close(logdet, ld1 + ld2 + ld3)
    back, inverse_logdet = flow.inverse(z)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(inverse_logdet, -logdet)
    assert flow.reference() is next(a.parameters())  # the first part's first weight


def test_the_order_of_the_parts_matters():
    a, act, b = parts()
    x = torch.randn(5, 4, dtype=torch.float64)
    assert not torch.allclose(Sequential(a, act, b)(x)[0], Sequential(b, act, a)(x)[0])


def test_an_inverse_swaps_the_passes_and_shares_the_weights():
    a, act, b = parts()
    inner = Sequential(a, act, b)
    flipped = Inverse(inner)
    assert flipped.features == 4
    assert all(p is q for p, q in zip(flipped.parameters(), inner.parameters()))
    assert flipped.reference() is inner.reference()
    y = torch.randn(6, 4, dtype=torch.float64)
    x, logdet = flipped(y)
    expected, expected_logdet = inner.inverse(y)
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(logdet, expected_logdet)
    torch.testing.assert_close(flipped.inverse(x)[0], y)
    with torch.no_grad():
        a.bias.add_(1.0)  # a change to the transform is the inverse's too
    torch.testing.assert_close(flipped(y)[0], inner.inverse(y)[0])


class Shift(torch.nn.Module):
    """``y = x + 1``: a module of the contract that is no Transform (no reference, no width)."""

    def forward(self, x):
        return x + 1, torch.zeros(x.shape[:-1], dtype=x.dtype)

    def inverse(self, y):
        return y - 1, torch.zeros(y.shape[:-1], dtype=y.dtype)


def test_an_inverse_of_a_module_of_ones_own_runs_its_inverse_and_names_no_reference():
    flipped = Inverse(Shift())
    assert flipped.reference() is None and flipped.features is None
    y = torch.randn(3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x, logdet = flipped(y)
    torch.testing.assert_close(x, y - 1)
    torch.testing.assert_close(logdet, torch.zeros(3, dtype=torch.float64))
    assert Inverse(Standardize(3)).features == 3


def test_the_frozen_copy_computes_as_the_composition_did_when_frozen():
    a, act, b = parts()
    flow = Sequential(a, act, b)
    frozen = flow.frozen()
    x = torch.randn(9, 4, dtype=torch.float64)
    z, logdet = flow(x)
    fz, flogdet = frozen.forward(x)
    torch.testing.assert_close(fz, z.detach())
    torch.testing.assert_close(flogdet, logdet.detach())
    with torch.no_grad():
        b.bias.add_(1.0)
    torch.testing.assert_close(frozen.forward(x)[0], z.detach())  # its own copy of the weights
    assert not torch.allclose(flow(x)[0], z)
