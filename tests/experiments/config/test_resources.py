"""The memory a model needs, known from its spec (lunet.experiments.config.resources): every number the
model holds is counted."""

from __future__ import annotations

import pytest

from lunet.experiments.config.models import build_model
from lunet.experiments.config.presets import vector_lunet_spec
from lunet.experiments.config.resources import model_elements

SPLINE_SPEC = vector_lunet_spec(3, num_blocks=2, activation="spline", learn_alpha=False)


@pytest.mark.parametrize("spec", [
    SPLINE_SPEC, {**SPLINE_SPEC, "bins": 999}, vector_lunet_spec(6, num_blocks=3, groups=2),
    vector_lunet_spec(4, num_blocks=1), {**vector_lunet_spec(5, num_blocks=3), "learn_alpha": False},
], ids=["spline", "spline-999-bins", "slopes-per-group", "one-block", "fixed-slope"])
def test_the_memory_estimate_counts_every_number_the_model_holds(spec):
    model = build_model(spec)
    assert model_elements(spec) == sum(t.numel() for t in (*model.parameters(), *model.buffers()))
