"""torch.compile: log_prob, sample and a training step trace as one graph (no host
synchronisation, no graph break) and compute what the eager passes compute."""

import pytest
import torch
import torch._dynamo as dynamo

from conftest import random_bias_flow
from lunet import LeakySoftplus, LULinear, Sequential


@pytest.fixture(autouse=True)
def fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


def _explain(fn, *args):
    return dynamo.explain(fn)(*args)


@pytest.mark.parametrize("learn_alpha", [False, True], ids=["fixed-slope", "learned-slope"])
def test_log_prob_and_the_loss_gradient_trace_as_one_graph(learn_alpha):
    flow = random_bias_flow(learn_alpha)
    x = torch.randn(32, 6)
    explanation = _explain(lambda x: -flow.log_prob(x).mean(), x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_sample_traces_as_one_graph():
    flow = random_bias_flow()
    explanation = _explain(lambda n: flow.sample((n,)), 5)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_a_frozen_flows_passes_off_the_cpu_trace_as_one_graph_and_compute_the_eager_results():
    # off the CPU a frozen flow reads nothing back (sync_free, switched on here); its plans and
    # inverse tables are built by a first eager call, which a compiled pass then finds made
    frozen = random_bias_flow().frozen()
    frozen.sync_free = True
    x = torch.randn(20, 6)
    eager_lp, eager_x = frozen.log_prob(x), frozen.inverse(x)[0]
    for fn in (frozen.log_prob, frozen.inverse, lambda x: frozen.sample(x.shape[0])):
        explanation = _explain(fn, x)
        assert explanation.graph_break_count == 0, explanation.break_reasons
    torch.testing.assert_close(torch.compile(frozen.log_prob, backend="aot_eager", fullgraph=True)(x), eager_lp)
    torch.testing.assert_close(torch.compile(frozen.inverse, backend="aot_eager", fullgraph=True)(x)[0], eager_x)


def test_a_composition_traces_as_one_graph_both_ways():
    torch.manual_seed(1)
    seq = Sequential(LULinear(5, init="random"), LeakySoftplus(0.2), LULinear(5, init="random"))
    y = torch.randn(7, 5)
    for fn in (seq, seq.inverse):
        explanation = _explain(fn, y)
        assert explanation.graph_break_count == 0, explanation.break_reasons


def test_a_compiled_training_step_matches_the_eager_one():
    eager, compiled = random_bias_flow(), random_bias_flow()
    loss_fn = torch.compile(lambda x: -compiled.log_prob(x).mean(), backend="aot_eager", fullgraph=True)
    x = torch.randn(32, 6)
    loss_e = -eager.log_prob(x).mean()
    loss_c = loss_fn(x)
    loss_e.backward()
    loss_c.backward()
    torch.testing.assert_close(loss_c, loss_e)
    for (name, pe), pc in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(pc.grad, pe.grad, msg=name)


def test_compiled_sampling_inverts_the_compiled_density_pass():
    flow = random_bias_flow()
    inverse = torch.compile(flow.inverse, backend="aot_eager", fullgraph=True)
    forward = torch.compile(flow.forward, backend="aot_eager", fullgraph=True)
    z = torch.randn(20, 6)
    x, ladj = inverse(z)
    torch.testing.assert_close(x, flow.inverse(z)[0])
    z_back, ladj_fwd = forward(x)
    torch.testing.assert_close(z_back, z, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ladj, -ladj_fwd, rtol=1e-4, atol=1e-4)
