"""FrozenConditionalLUNet (lunet.frozen_conditional): the frozen flow's fast passes, the frozen
unconditional flow's folded products with the context's affine maps between them, against the flow and against
its own plain passes."""

from __future__ import annotations

import pytest
import torch

from lunet import ConditionalLUNet


def _flow(features: int, num_blocks: int, dtype: torch.dtype, num_classes=None, seed: int = 0,
          **kwargs) -> ConditionalLUNet:
    torch.manual_seed(seed)
    flow = ConditionalLUNet(features, 5, num_blocks, hidden=16, num_classes=num_classes, init_scale=0.3,
                            **kwargs).to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    data = 2 * torch.randn(200, features, generator=gen, dtype=dtype) + 1
    flow.standardize(data) if num_classes else flow.standardize(data, torch.randn(200, 5, generator=gen, dtype=dtype))
    with torch.no_grad():  # contexts that matter: the context network's last layer away from zero
        last = flow.conditioner[-1]
        last.weight.normal_(0, 0.3, generator=gen)
        last.bias.normal_(0, 0.3, generator=gen)
    return flow


@pytest.mark.parametrize("activation", ["leaky_softplus", "spline"])
@pytest.mark.parametrize("num_blocks", [1, 2, 4])
@pytest.mark.parametrize("labels", [False, True])
def test_the_fast_passes_are_the_flow_for_mixed_contexts(num_blocks, labels, activation):
    flow = _flow(12, num_blocks, torch.float64, num_classes=4 if labels else None, activation=activation)
    gen = torch.Generator().manual_seed(3)
    c = torch.randint(0, 4, (70,), generator=gen) if labels else torch.randn(70, 5, generator=gen, dtype=torch.float64)
    x = flow.sample(1, c, generator=gen).squeeze(0).detach()
    frozen = flow.frozen()
    with torch.no_grad():
        for got, want in (*zip(frozen(x, c), flow(x, c)), *zip(frozen.inverse(x, c), flow.inverse(x, c))):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
        # one context shared by every row, as a distribution's broadcast holds it
        torch.testing.assert_close(frozen.log_prob(x, c[0]), flow.log_prob(x, c[0]), rtol=1e-9, atol=1e-9)
        draws = frozen.sample(3, c, generator=torch.Generator().manual_seed(9))
        again = flow.sample(3, c, generator=torch.Generator().manual_seed(9))
        torch.testing.assert_close(draws, again, rtol=1e-9, atol=1e-9)


def test_float32_at_width_64_is_as_close_to_the_float64_flow_as_the_module_is():
    flow = _flow(64, 4, torch.float32)
    exact = _flow(64, 4, torch.float64)
    exact.load_state_dict({k: v.double() for k, v in flow.state_dict().items()})
    gen = torch.Generator().manual_seed(4)
    c = torch.randn(300, 5, generator=gen)
    x = flow.sample(1, c, generator=gen).squeeze(0).detach()
    frozen = flow.frozen()
    with torch.no_grad():
        rows, (log_scale, shift, _), *_ = flow._rows(x, c, "input")
        exact_rows, exact_params, *_ = exact._rows(x.double(), c.double(), "input")
        want = exact.forward_rows(exact_rows, *exact_params)
        passes = {"fast": frozen.forward_rows(rows, log_scale, shift),
                  "plain": frozen.plain_forward_rows(rows, log_scale, shift),
                  "module": flow.forward_rows(rows, log_scale, shift)}
        back = frozen.inverse_rows(passes["fast"][0], log_scale, shift)
    errors = {name: [float((got.double() - ref).abs().max()) for got, ref in zip(out, want)]
              for name, out in passes.items()}
    # float32 through four blocks of width 64 keeps a few 1e-4 of the float64 flow; a wrong fold would not
    assert all(e < 1e-3 for pair in errors.values() for e in pair), errors
    torch.testing.assert_close(back[0], rows, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(back[1], -passes["fast"][1], rtol=1e-3, atol=1e-3)


def test_a_pre_activation_beyond_the_fast_activations_range_is_redone_exactly():
    flow = _flow(6, 3, torch.float32)
    with torch.no_grad():  # the first block's shift: +120 on feature 0 for every context
        flow.conditioner[-1].bias[0] = 120.0  # (block, shift | log-scale, feature) flattened
    c = torch.randn(8, 5, generator=torch.Generator().manual_seed(2))
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(3))
    frozen = flow.frozen()
    with torch.no_grad():
        rows, (log_scale, shift, _), *_ = flow._rows(x, c, "input")
        assert float(shift[:, 0, 0].min()) > 100  # where log sigmoid(-u) leaves the normal numbers
        z, logdet = frozen.forward_rows(rows, log_scale, shift)
        want_z, want_logdet = frozen.plain_forward_rows(rows, log_scale, shift)
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
    torch.testing.assert_close(z, want_z, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(logdet, want_logdet, rtol=1e-4, atol=1e-3)


def test_vmap_over_the_frozen_flow_takes_its_plain_passes():
    flow = _flow(5, 3, torch.float64)
    frozen = flow.frozen()
    x = torch.randn(4, 5, dtype=torch.float64)
    c = torch.randn(4, 5, dtype=torch.float64)
    mapped = torch.func.vmap(lambda xi, ci: frozen.log_prob(xi, ci))(x, c)
    torch.testing.assert_close(mapped, frozen.log_prob(x, c), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("activation", ["leaky_softplus", "spline"])
def test_labels_read_from_the_class_tables_broadcast_as_the_flow_and_take_empty_batches(activation):
    flow = _flow(6, 3, torch.float64, num_classes=4, activation=activation)
    frozen = flow.frozen()
    assert frozen._label_affine is not None  # the passes read each class's tables
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 1, 6, generator=gen, dtype=torch.float64)
    c = torch.tensor([2, 0, 3, 2])
    with torch.no_grad():
        for got, want in (*zip(frozen(x, c), flow(x, c)), *zip(frozen.inverse(x, c), flow.inverse(x, c))):
            assert got.shape[:2] == (3, 4)
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
        z, logdet = frozen(x[:0, 0], c[:0])
        assert z.shape == (0, 6) and logdet.shape == (0,)
    assert frozen.sample((2,), c, generator=gen).shape == (2, 4, 6)


def test_kept_row_buffers_never_reach_a_passes_output():
    flow = _flow(6, 3, torch.float64, num_classes=4)
    frozen = flow.frozen()
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(50, 6, generator=gen, dtype=torch.float64)
    first_labels, second_labels = torch.randint(0, 4, (50,), generator=gen), torch.randint(0, 4, (50,), generator=gen)
    z, logdet = frozen(x, first_labels)
    x_back, _ = frozen.inverse(z, first_labels)
    kept = (z.clone(), logdet.clone(), x_back.clone())
    frozen(x, second_labels), frozen.inverse(z, second_labels)  # the same shapes: the same kept buffers
    for got, want in zip((z, logdet, x_back), kept):
        assert torch.equal(got, want)
    with torch.no_grad():
        torch.testing.assert_close(z, flow(x, first_labels)[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x_back, x, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("activation", ["leaky_softplus", "spline"])
def test_labels_out_of_range_are_refused_before_any_table_is_read_even_without_value_checks(activation):
    from lunet.checks import set_value_checks

    frozen = _flow(6, 3, torch.float32, num_classes=4, activation=activation).frozen()
    x = torch.randn(5, 6)
    for bad in (torch.tensor([0, 1, 2, 3, 4]), torch.tensor([0, -1, 2, 3, 1])):
        with pytest.raises(ValueError, match=r"context labels must lie in \[0, 4\)"):
            frozen.log_prob(x, bad)
        with set_value_checks(False):  # the reads by index refuse it, before the compiled loops run
            with pytest.raises((RuntimeError, IndexError), match="out of"):
                frozen.log_prob(x, bad)
            with pytest.raises((RuntimeError, IndexError), match="out of"):
                frozen.sample(2, bad)
    # labels of any integer dtype, in any layout (one label broadcast over the rows: stride 0)
    want = frozen.log_prob(x, torch.tensor([0, 1, 2, 3, 2]))
    torch.testing.assert_close(frozen.log_prob(x, torch.tensor([0, 1, 2, 3, 2], dtype=torch.int32)), want)
    torch.testing.assert_close(frozen.log_prob(x, torch.tensor(2)), frozen.log_prob(x, torch.full((5,), 2)))
    transposed = x.t().contiguous().t()  # the same values, not contiguous
    assert not transposed.is_contiguous()
    torch.testing.assert_close(frozen.log_prob(transposed, torch.tensor([0, 1, 2, 3, 2])), want)
