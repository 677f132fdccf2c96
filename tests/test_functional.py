"""lunet.functional: the leaky softplus maths on tensors of any shape, and the slopes whose inverse is
exact (the inverse tables and their Newton steps)."""

import functools
import math
import re

import pytest
import torch

from lunet import LUNet
from lunet import functional as F
from lunet.functional import ALPHA_MIN, cached_inverse_table, inverse_table, newton_step, table_step
from lunet.layers import LeakySoftplus


@pytest.mark.parametrize("shape", [(), (7,), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_any_shape_round_trips(shape, dtype):
    x = 8 * torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    y = F.leaky_softplus(x, 0.1)
    assert y.shape == x.shape and F.leaky_softplus_log_derivative(x, 0.1).shape == x.shape
    back = F.leaky_softplus_inverse(y, 0.1)
    eps = torch.finfo(dtype).eps
    assert ((back - x).abs() <= 8 * eps * x.abs().clamp_min(1)).all()


def test_the_definition_and_the_log_derivative():
    x = torch.linspace(-40, 40, 801, dtype=torch.float64, requires_grad=True)
    a = 0.3
    y = F.leaky_softplus(x, a)
    reference = a * x + (1 - a) * torch.log1p(torch.exp(-x.abs())) + (1 - a) * x.clamp_min(0)
    torch.testing.assert_close(y, reference, rtol=1e-14, atol=1e-14)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(F.leaky_softplus_log_derivative(x.detach(), a), grad.log(), rtol=1e-13, atol=1e-13)


def test_the_inverse_gradients_are_the_implicit_ones():
    y = torch.randn(6, dtype=torch.float64, requires_grad=True)
    slope = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, a: F.leaky_softplus_inverse(v, a), (y, slope))
    x = F.leaky_softplus_inverse(y, slope)
    (dx_dy,) = torch.autograd.grad(x.sum(), y)
    torch.testing.assert_close(dx_dy, 1 / F.leaky_softplus_derivative(x.detach(), 0.2), rtol=1e-12, atol=1e-12)


def test_a_slope_outside_the_exact_range_is_refused():
    with pytest.raises(ValueError, match=r"\[0.0001, 1\)"):
        F.leaky_softplus_inverse(torch.zeros(3), 1e-6)


# -- the slopes whose inverse is exact, [ALPHA_MIN, 1), and the refusal of all others -----------
#
# Below ALPHA_MIN the inverse table used to be accepted and wrong (by about 1.0 in x at a = 1e-6,
# even in float64); a learnable slope that drifts out of the range must be refused by the inverse
# just as a fixed one is by the constructor.


DTYPES = [torch.float32, torch.float64]
# Worst error we accept, in units of the dtype's epsilon, relative to max(|x|, 1);
# measured: at most 3 over the whole range.
ULPS = 8
# Both ends of the range and the slopes between whose tables need the most
# Newton steps (1.3e-4: four in float64; 2.9e-4: three in float32).
SLOPES = [ALPHA_MIN, 1.3e-4, 2.9e-4, 1e-3, 0.02, 0.1, 0.5, 1 - 1e-9, 1 - 2**-52]
RANGE_MESSAGE = re.escape(f"alpha must lie in [{ALPHA_MIN:g}, 1)")
CPU = torch.device("cpu")


def reference_roots(y, alpha):
    """f^{-1}(y) in float64, by Newton's method from min(y, y/alpha), right of the root,
    where it decreases monotonically, run until no step moves x any more."""
    y = y.double()
    x = torch.minimum(y, y / alpha)
    for _ in range(500):
        step = newton_step(x, y, alpha)
        x = x - step
        if bool((step.abs() <= 1e-15 * x.abs().clamp_min(1.0)).all()):
            break
    return x - newton_step(x, y, alpha)


@functools.lru_cache(maxsize=None)
def activation(alpha, dtype):
    """One fixed-slope layer per (slope, dtype), shared so that its table is built once."""
    return LeakySoftplus(alpha).to(dtype)


def rel_err(a, b):
    return ((a.double() - b.double()).abs() / b.double().abs().clamp_min(1.0)).max().item()


def probe_inputs(dtype):
    """x from -1e4 to 1e4, densely across the bend (-40, 40), and near 0 on both sides."""
    x = torch.cat(
        [
            torch.linspace(-1e4, 1e4, 2001, dtype=torch.float64),
            torch.linspace(-40.0, 40.0, 2001, dtype=torch.float64),
            torch.logspace(-30, 0, 31, dtype=torch.float64),
            -torch.logspace(-30, 0, 31, dtype=torch.float64),
            torch.zeros(1, dtype=torch.float64),
        ]
    )
    return x.to(dtype).reshape(-1, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", SLOPES)
def test_round_trip_is_exact_across_the_accepted_slopes(alpha, dtype):
    act = activation(alpha, dtype)
    x = probe_inputs(dtype)
    with torch.no_grad():
        y, _ = act(x)
        back = act.inverse(y)[0]
    assert torch.isfinite(y).all()
    assert rel_err(back, x) <= ULPS * torch.finfo(dtype).eps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", SLOPES)
def test_inverse_matches_the_root_between_table_nodes(alpha, dtype):
    """Mid-cell and third-cell points, where the cubics' start errs most, against a
    float64 root from Newton's method run to convergence (independent of the table
    and its precomputed step count): every cell of the first 4096, which hold the
    left end and the bend at y = 0 for every slope, every 5th beyond, the last 16,
    and 8 cells past either end."""
    act = activation(alpha, dtype)
    rows, h, first, _ = cached_inverse_table(alpha, dtype, CPU)
    last = first + rows.shape[0]
    cells = torch.cat(
        [
            torch.arange(first - 8, first + 4096),
            torch.arange(first + 4096, last, 5),
            torch.arange(last - 16, last + 8),
        ]
    ).double()
    y = torch.cat([(cells + 0.5) * h, (cells + 1 / 3) * h]).to(dtype).reshape(-1, 1)
    with torch.no_grad():
        x = act.inverse(y)[0]
    assert rel_err(x, reference_roots(y, alpha)) <= ULPS * torch.finfo(dtype).eps


@pytest.mark.parametrize("learnable", [False, True])
@pytest.mark.parametrize("alpha", [1e-6, 5e-5, ALPHA_MIN * (1 - 1e-9), 1.0, 1.5, 0.0, -0.1, math.nan])
def test_slopes_outside_the_range_are_refused(alpha, learnable):
    with pytest.raises(ValueError, match=RANGE_MESSAGE):
        LeakySoftplus(alpha, learn_alpha=learnable)
    with pytest.raises(ValueError, match=RANGE_MESSAGE):
        LUNet(3, 2, alpha=alpha, learn_alpha=learnable)


@pytest.mark.parametrize("logit", [math.log(5e-5 / (1 - 5e-5)), -200.0, 40.0], ids=["below", "zero", "one"])
def test_a_learnable_slope_that_drifted_out_is_refused_by_the_inverse(logit):
    """A learnable slope drifted below ALPHA_MIN, underflowed to 0 or rounded up to
    1.0 (float32's sigmoid of 40): the inverse raises the constructor's ValueError,
    with and without autograd, in the layer, in the flow and in a frozen copy of it."""
    act = LeakySoftplus(0.1, learn_alpha=True)
    y = torch.randn(5, 3)
    act.inverse(y)[0]  # in range: fine
    with torch.no_grad():
        act.alpha_logit.fill_(logit)
    assert not ALPHA_MIN <= float(act.alpha) < 1.0
    with torch.no_grad(), pytest.raises(ValueError, match=RANGE_MESSAGE):
        act.inverse(y)[0]
    with pytest.raises(ValueError, match=RANGE_MESSAGE):
        act.inverse(y.requires_grad_())[0]
    net = LUNet(3, 2, learn_alpha=True)
    z = torch.randn(4, 3)
    net.frozen().inverse(z)[0]  # in range: fine
    with torch.no_grad():
        net.inverse(z)[0]
        net.activations[0].alpha_logit.fill_(logit)
        with pytest.raises(ValueError, match=RANGE_MESSAGE):
            net.inverse(z)[0]
    with pytest.raises(ValueError, match=RANGE_MESSAGE):
        net.inverse(z)[0]
    with pytest.raises(ValueError, match=RANGE_MESSAGE):
        net.frozen().inverse(z)[0]


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_learnable_slope_at_the_floor_still_inverts(dtype):
    """float32's sigmoid puts a learnable slope of ALPHA_MIN a few ulps below it: the
    inverse must still serve it, exactly."""
    act = LeakySoftplus(ALPHA_MIN, learn_alpha=True).to(dtype)
    if dtype == torch.float32:
        assert float(act.alpha) < ALPHA_MIN  # the case this test is about
    x = probe_inputs(dtype)
    with torch.no_grad():
        back = act.inverse(act(x)[0])[0]
    assert rel_err(back, x) <= ULPS * torch.finfo(dtype).eps


def test_the_default_slope_costs_no_extra_newton_steps():
    """At a = 0.1 the table and the step counts are as before: none in float32, one in float64."""
    assert table_step(0.1) == 2.0**-8
    assert inverse_table(0.1, torch.float32, CPU)[3] == 0
    assert inverse_table(0.1, torch.float64, CPU)[3] == 1


@pytest.mark.parametrize("alpha", SLOPES)
def test_step_counts_and_table_sizes_stay_small(alpha):
    """Certified step counts over the range: at most 3 (float32) and 4 (float64); the
    tables of small slopes grow, but stay within about 90,000 cells."""
    s32 = cached_inverse_table(alpha, torch.float32, CPU)
    s64 = cached_inverse_table(alpha, torch.float64, CPU)
    assert s32[3] <= 3 and s64[3] <= 4
    assert s64[0].shape[0] <= 90200
    assert table_step(alpha) <= 4 * alpha
