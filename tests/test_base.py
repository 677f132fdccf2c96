"""The transform base (lunet.base): row hooks behind one check at the boundary."""

from __future__ import annotations

import pytest
import torch

import lunet.base
from lunet import LULinear, LUNet, Sequential, Transform


class Scale(Transform):
    """A contract-keeping transform of one's own: ``y = 2 x``, through the row hooks alone."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("factor", torch.tensor(2.0))

    def reference(self) -> torch.Tensor:
        return self.factor

    def forward_rows(self, x):
        return 2 * x, torch.full(x.shape[:1], self.features * 0.6931471805599453, dtype=x.dtype)

    def inverse_rows(self, y):
        return y / 2, torch.full(y.shape[:1], -self.features * 0.6931471805599453, dtype=y.dtype)


@pytest.mark.parametrize("leading", [(), (5,), (2, 3)])
def test_a_transform_of_ones_own_gets_the_contract_from_two_row_hooks(leading):
    t = Scale(3)
    x = torch.randn(*leading, 3)
    y, logdet = t(x)
    assert y.shape == x.shape and logdet.shape == leading
    back, inverse_logdet = t.inverse(y)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(logdet, -inverse_logdet)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        t(torch.randn(4, 2))
    with pytest.raises(TypeError, match="dtype"):
        t(torch.randn(4, 3, dtype=torch.float64))


def test_it_composes_with_lunets_parts_and_the_log_dets_add_up():
    torch.manual_seed(0)
    layer = LULinear(3)
    flow = Sequential(Scale(3), layer)
    x = torch.randn(6, 3)
    z, logdet = flow(x)
    torch.testing.assert_close(z, layer(2 * x)[0])
    torch.testing.assert_close(logdet, layer.log_abs_det().expand(6) + 3 * 0.6931471805599453)
    with pytest.raises(ValueError, match="LULinear takes 4 features, got 3"):
        Sequential(Scale(3), LULinear(4))(x)


class Shift(Transform):
    """``y = x + 1``: a row hook whose log-det, 0 for every row, is returned once as a 0-dim tensor."""

    features = 3

    def forward_rows(self, x):
        return x + 1, torch.zeros(())

    def inverse_rows(self, y):
        return y - 1, torch.zeros(())


@pytest.mark.parametrize("leading", [(), (5,), (2, 3)])
def test_a_log_det_the_same_for_every_row_may_be_given_once(leading):
    torch.manual_seed(2)
    layer = LULinear(3)
    x = torch.randn(*leading, 3)
    for t, expected in ((Shift(), torch.zeros(leading)), (layer, layer.log_abs_det().expand(leading)),
                        (Sequential(Shift(), layer, Shift()), layer.log_abs_det().expand(leading)),
                        (Sequential(Scale(3), layer), layer.log_abs_det() + 3 * 0.6931471805599453)):
        y, logdet = t(x)
        assert logdet.shape == leading
        torch.testing.assert_close(logdet, expected.expand(leading))
        back, inverse_logdet = t.inverse(y)
        assert inverse_logdet.shape == leading
        torch.testing.assert_close(back, x)
        torch.testing.assert_close(inverse_logdet, -logdet)


def test_a_composition_checks_its_input_once(monkeypatch):
    calls = []
    original = lunet.base.check_features
    monkeypatch.setattr(lunet.base, "check_features", lambda *a, **k: calls.append(1) or original(*a, **k))
    net = LUNet(4, 3)
    x = torch.randn(8, 4)
    z, _ = net(x)
    net.inverse(z)
    assert len(calls) == 2  # one per pass, at the boundary: not one per part
