"""lunet.conditional_density: the spline activation with each row's own knots (spline_rows), whose
one-context case takes the unconditional spline's no-autograd kernels, and class labels, whose rows
go label by label through the same passes (group_rows), against the plain formulas of a table per row."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from fast.test_spline import passes  # noqa: F401 (every test by the compiled loops and in torch ops)
from lunet import ConditionalLUNet
from lunet.conditional_density import broadcast_rows, spline_rows
from lunet.fast import native
from lunet.fast.spline_plain import spline_forward_plain, spline_inverse_plain


def _spline_flow(seed: int = 0, **context) -> ConditionalLUNet:
    torch.manual_seed(seed)
    flow = ConditionalLUNet(6, 3, 3, hidden=16, activation="spline", bins=8, init_scale=0.5, **context).double()
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
        fast = spline_rows(h, knots[:, 1], flow.spline, inverse)
    assert calls == ["spline_inverse_fast" if inverse else "spline_forward_fast"]
    under_autograd = spline_rows(h.clone().requires_grad_(), knots[:, 1], flow.spline, inverse)
    assert under_autograd[0].requires_grad and not fast[0].requires_grad
    # the same as each row given the context as its own
    per_row = spline_rows(h, knots[:, 1].expand(500, *knots.shape[2:]), flow.spline, inverse)
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


def _count_kernels(monkeypatch) -> list[str]:
    import lunet.spline as spline_module

    calls: list[str] = []
    for name in ("spline_forward_fast", "spline_inverse_fast"):
        kernel = getattr(spline_module, name)
        monkeypatch.setattr(spline_module, name, lambda *a, _k=kernel, _n=name, **kw: calls.append(_n) or _k(*a, **kw))
    monkeypatch.setattr(spline_module.SplineForward, "apply",
                        lambda *a, _k=spline_module.SplineForward.apply: calls.append("SplineForward") or _k(*a))
    return calls


def _per_row(flow: ConditionalLUNet, x: torch.Tensor, labels: torch.Tensor, inverse: bool = False):
    """The passes with each row's own knot tables (the plain formulas), in the batch's order."""
    rows, params, _ = broadcast_rows(x, flow._params(labels), "input")
    return (flow.inverse_rows if inverse else flow.forward_rows)(rows, *params)


def test_labels_go_label_by_label_and_give_what_each_row_gets_alone(monkeypatch):
    flow = _spline_flow(2, num_classes=4)
    gen = torch.Generator().manual_seed(3)
    labels = torch.tensor([2, 0, 2, 3, 0, 0, 2, 3, 3, 2, 0, 2])  # label 1 absent, the rest shuffled
    x = 3 * torch.randn(12, 6, generator=gen, dtype=torch.float64)
    import lunet.frozen_conditional as frozen_module
    import lunet.spline as spline_module

    calls = []
    for module, who in ((spline_module, "module"), (frozen_module, "frozen")):
        grouped = module.grouped_passes
        monkeypatch.setattr(module, "grouped_passes", lambda h, tables, counts, splines, inverse=False, *a, _p=grouped,
                            _w=who: calls.append((_w, counts, splines, inverse)) or _p(h, tables, counts, splines,
                                                                                     inverse, *a))
    labelled = frozen_module.labelled_passes
    monkeypatch.setattr(frozen_module, "labelled_passes", lambda h, tables, rows, inverse=False, _p=labelled:
                        calls.append(("frozen, each row by its label", rows.tolist(), inverse)) or _p(h, tables, rows,
                                                                                                       inverse))
    with torch.no_grad():
        z, logdet = flow(x, labels)
        back, back_logdet = flow.inverse(z, labels)
        frozen = flow.frozen()
        frozen_z, frozen_logdet = frozen(x, labels)
    # one pass of every label's rows per spline activation (2), each way; the module stacks the tables
    # of the labels present (0, 2, 3: 4, 5 and 3 rows), the frozen flow those of every label, once;
    # the compiled loops read each row's tables by its label, the rows left in the batch's order
    present = ([4, 5, 3], [0, 1, 2])
    frozen_calls = ([("frozen, each row by its label", labels.tolist(), False)] * 2 if native.kernels() is not None
                    else [("frozen", [4, 5, 3], [0, 2, 3], False)] * 2)
    assert calls == [("module", *present, False)] * 2 + [("module", *present, True)] * 2 + frozen_calls
    want_z, want_logdet = _per_row(flow, x, labels)
    torch.testing.assert_close(z, want_z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet, want_logdet, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(back_logdet, -logdet, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(frozen_z, want_z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(frozen_logdet, want_logdet, rtol=1e-10, atol=1e-10)
    # draws: the latent in the batch's order, whatever order the passes take
    draws = flow.sample(2, labels, generator=torch.Generator().manual_seed(9))
    latent = torch.randn(2, 12, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    torch.testing.assert_close(flow(draws, labels)[0], latent, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(frozen.sample(2, labels, generator=torch.Generator().manual_seed(9)), draws,
                               rtol=1e-10, atol=1e-10)


def test_training_label_by_label_gives_the_per_row_gradients(monkeypatch):
    flow = _spline_flow(4, num_classes=3)
    gen = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 3, (40,), generator=gen)
    x = (2 * torch.randn(40, 6, generator=gen, dtype=torch.float64)).requires_grad_()
    calls = _count_kernels(monkeypatch)
    z, logdet = flow(x, labels)
    assert calls == ["SplineForward"] * 2  # the written-out backward, every label at once, per activation
    loss = (z.square() * torch.linspace(0.5, 2, 6, dtype=torch.float64)).sum() - logdet.sum()
    grouped = torch.autograd.grad(loss, [x, *flow.parameters()])
    want_z, want_logdet = _per_row(flow, x, labels)
    want = (want_z.square() * torch.linspace(0.5, 2, 6, dtype=torch.float64)).sum() - want_logdet.sum()
    per_row = torch.autograd.grad(want, [x, *flow.parameters()])
    names = ["x", *(name for name, _ in flow.named_parameters())]
    for name, got, ref in zip(names, grouped, per_row):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-10, msg=lambda m, n=name: f"{n}: {m}")
    # second derivatives (the written-out backward gives way to the plain formulas, each row its label's tables)
    score = torch.autograd.grad(flow(x, labels)[1].sum(), x, create_graph=True)[0]
    want_score = torch.autograd.grad(_per_row(flow, x, labels)[1].sum(), x, create_graph=True)[0]
    torch.testing.assert_close(score, want_score, rtol=1e-9, atol=1e-10)
    penalty = torch.autograd.grad(score.square().sum(), flow.conditioner[-1].weight)[0]
    want_penalty = torch.autograd.grad(want_score.square().sum(), flow.conditioner[-1].weight)[0]
    torch.testing.assert_close(penalty, want_penalty, rtol=1e-8, atol=1e-10)
    # a draw differentiable in the weights goes label by label too
    draws = flow.rsample(3, labels[:5], generator=torch.Generator().manual_seed(1))
    draws.sum().backward()
    assert flow.label_embedding.weight.grad is not None and flow.blocks[0].lu.grad is not None


def test_labels_broadcast_and_an_empty_batch():
    flow = _spline_flow(6, num_classes=4)
    x = torch.randn(3, 1, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.tensor([[1, 3, 0, 1]])
    with torch.no_grad():
        z, logdet = flow(x, labels)
        assert z.shape == (3, 4, 6) and logdet.shape == (3, 4)
        torch.testing.assert_close(logdet[2, 1], flow(x[2, 0], labels[0, 1])[1], rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(z[1, 3], flow(x[1, 0], 1)[0], rtol=1e-10, atol=1e-10)
        empty = flow.log_prob(torch.zeros(0, 6, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
        assert empty.shape == (0,)
        assert flow.sample(0, labels).shape == (0, 1, 4, 6)
    with pytest.raises(ValueError, match=r"leading shape \(3,\) and the context's \(2,\)"):
        flow(x[:, 0], torch.tensor([0, 1]))


def test_labels_with_splines_compile_without_graph_breaks():
    dynamo.reset()
    try:
        flow = _spline_flow(7, num_classes=4).float()
        x = torch.randn(8, 6, generator=torch.Generator().manual_seed(2))
        labels = torch.tensor([0, 1, 1, 3, 2, 0, 3, 3])
        explanation = dynamo.explain(lambda x, c: -flow.log_prob(x, c).mean())(x, labels)
        assert explanation.graph_break_count == 0, explanation.break_reasons
        compiled = torch.compile(lambda x, c: flow.log_prob(x, c), backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(x, labels), flow.log_prob(x, labels), rtol=1e-4, atol=1e-4)
    finally:
        dynamo.reset()


def test_stacked_tables_count_bins_as_exactly_as_one_spline_in_float32():
    """Flat bin indices beyond float32's half-integers (2^23 entries): each group counts from its own
    first feature, so the stack's third group, from 2^23 on, maps as that spline alone."""
    from lunet.spline import knot_tables, spline_pass

    n, bins = 1 << 19, 8
    gen = torch.Generator().manual_seed(0)
    xk, yk, dk = knot_tables(torch.randn(3, n, bins, generator=gen), torch.randn(3, n, bins, generator=gen),
                             torch.randn(3, n, bins - 1, generator=gen), 5.0)
    v = 4 * torch.rand(3, n, generator=gen) - 2
    with torch.no_grad():
        for inverse in (False, True):
            grouped = spline_pass(v, xk, yk, dk, 5.0, inverse, counts=[1, 1, 1])
            alone = [spline_pass(v[g:g + 1], xk[g], yk[g], dk[g], 5.0, inverse) for g in range(3)]
            torch.testing.assert_close(grouped[0], torch.cat([a for a, _ in alone]), rtol=0, atol=0)
            torch.testing.assert_close(grouped[1], torch.cat([ld for _, ld in alone]), rtol=0, atol=0)


def test_batched_gradients_of_the_log_det_alone():
    """``jacobian(vectorize=True)`` of the log-det alone: a batched gradient reaches the written-out
    backward through the log-det while the values' gradient is plain zeros."""
    flow = _spline_flow(9, num_classes=5)
    labels = torch.tensor([4, 0, 4, 2, 1, 0])
    x = torch.randn(6, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v, labels)[1], x, vectorize=True)
    want = torch.autograd.functional.jacobian(lambda v: _per_row(flow, v, labels)[1], x)
    torch.testing.assert_close(jac, want, rtol=1e-9, atol=1e-10)
