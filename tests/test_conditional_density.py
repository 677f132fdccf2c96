"""lunet.conditional_density: the spline activation with each row's own knots (spline_rows), whose
one-context case takes the unconditional spline's no-autograd kernels, against the plain formulas."""

from __future__ import annotations

import pytest
import torch

from lunet import ConditionalLUNet
from lunet.conditional_density import spline_rows
from lunet.fast.spline_plain import spline_forward_plain, spline_inverse_plain


def _spline_flow(seed: int = 0) -> ConditionalLUNet:
    torch.manual_seed(seed)
    flow = ConditionalLUNet(6, 3, 3, hidden=16, activation="spline", bins=8, init_scale=0.5).double()
    with torch.no_grad():  # knots away from the identity, different for each context
        flow.conditioner[-1].weight.normal_(0, 0.5)
        flow.conditioner[-1].bias.normal_(0, 0.5)
    return flow


@pytest.mark.parametrize("inverse", [False, True], ids=["forward", "inverse"])
def test_one_context_for_every_row_takes_the_kernels_and_gives_the_plain_formulas(inverse, monkeypatch):
    import lunet.spline as spline_module

    calls = []
    for name in ("spline_forward_fast", "spline_inverse_fast"):
        kernel = getattr(spline_module, name)
        monkeypatch.setattr(spline_module, name, lambda *a, _k=kernel, _n=name, **kw: calls.append(_n) or _k(*a, **kw))
    flow = _spline_flow()
    _, _, knots = flow._params(torch.randn(1, 3, dtype=torch.float64))
    h = 3 * torch.randn(500, 6, dtype=torch.float64)  # some beyond the bound of 5: the identity tails
    xk, yk, dk = (t.detach() for t in knots[0, 1])
    formulas = (spline_inverse_plain if inverse else spline_forward_plain)(h, xk, yk, dk, flow.spline[1])
    with torch.no_grad():
        fast = spline_rows(h, knots, 1, flow.spline, inverse)
    assert calls == ["spline_inverse_fast" if inverse else "spline_forward_fast"]
    under_autograd = spline_rows(h.clone().requires_grad_(), knots, 1, flow.spline, inverse)
    assert under_autograd[0].requires_grad and not fast[0].requires_grad
    # the same as each row given the context as its own
    per_row = spline_rows(h, knots.expand(500, *knots.shape[1:]), 1, flow.spline, inverse)
    assert len(calls) == 1  # neither a pass under autograd nor a table per row takes the no-autograd kernels
    for out in (fast, under_autograd, per_row):
        for got, want in zip(out, formulas):
            torch.testing.assert_close(got.detach(), want, rtol=1e-10, atol=1e-10)


def test_sampling_under_one_context_is_the_inverse_of_the_density_pass():
    flow = _spline_flow(1)
    c = torch.randn(3, dtype=torch.float64)
    draws = flow.sample(2000, c, generator=torch.Generator().manual_seed(0))  # no autograd: the kernels
    z, logdet = flow(draws, c)
    back, inverse_logdet = flow.inverse(z, c)
    torch.testing.assert_close(back, draws, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(inverse_logdet, -logdet, rtol=1e-9, atol=1e-9)
    frozen = flow.frozen()
    torch.testing.assert_close(frozen.log_prob(draws, c), flow.log_prob(draws, c), rtol=1e-9, atol=1e-9)
