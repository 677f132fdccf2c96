"""Model specs (lunet.experiments.config.models): their form checked, contents quoted short in
messages, and the model each one builds, a setting the model lacks refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from baselines.test_realnvp import TINY
from lunet import ConditionalLUNet, LUNet
from lunet.experiments.config.models import MODEL_NAMES, build_model, check_spec, short_repr, shortened

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_spec_of_plain_values_and_a_known_name_is_returned_as_it_is():
    spec = {"name": "lunet", "features": 3, "num_blocks": 2, "alpha": 0.1, "learn_alpha": False, "groups": None}
    assert check_spec(spec) is spec
    assert set(MODEL_NAMES) == {"lunet", "realnvp", "conditional_lunet"}


@pytest.mark.parametrize("spec, message", [
    ([1, 2], "a model spec is a dict with a 'name' and the model's settings, got a list ([1, 2])"),
    ({"name": "lunet", "features": [3]},
     "the model spec's entry 'features' is not a number, a string or a boolean: [3]"),
    ({"name": "lunet", 3: 1}, "the model spec's entry 3 is not a number"),
    ({"name": "glow", "features": 3}, "unknown model name 'glow' in model spec; expected one of 'lunet', 'realnvp'"),
    ({"features": 3}, "unknown model name None"),
], ids=["list", "list-value", "int-key", "unknown-name", "no-name"])
def test_anything_else_is_refused_saying_what_it_is(spec, message):
    with pytest.raises(ValueError) as caught:
        check_spec(spec)
    assert str(caught.value).startswith(message)


def test_long_contents_are_cut_to_one_readable_line():
    assert shortened("abc", 5) == "abc"
    cut = shortened("x" * 1000)
    assert len(cut) == 300 and cut.endswith("...") and cut.startswith("x" * 297)
    assert short_repr("short") == "'short'"
    long = short_repr(list(range(1000)))
    assert len(long) == 120 and long.startswith("[0, 1, 2") and long.endswith("...")
    with pytest.raises(ValueError) as caught:
        check_spec({"name": "x" * 10_000})
    assert len(str(caught.value)) < 300


def test_a_spec_builds_its_model_and_survives_json():
    spec = json.loads(json.dumps({"name": "lunet", "features": 3, "num_blocks": 2, "alpha": 0.2}))
    model = build_model(spec)
    assert isinstance(model, LUNet) and model.features == 3 and model.num_blocks == 2
    assert spec["name"] == "lunet"  # the caller's spec is left as it was
    conditional = build_model({"name": "conditional_lunet", "features": 2, "num_blocks": 2, "context_features": 3})
    assert isinstance(conditional, ConditionalLUNet)
    torch.manual_seed(0)
    x = torch.randn(4, 3)
    torch.manual_seed(1)
    a = build_model(spec)
    torch.manual_seed(1)
    b = build_model(spec)
    torch.testing.assert_close(a.log_prob(x), b.log_prob(x))  # the same spec and seed: the same model


def test_a_spec_with_a_setting_the_model_lacks_is_refused_by_name():
    old_spec = {"name": "realnvp", **{k: v for k, v in TINY.items() if k != "num_res_blocks"}, "num_blocks": 2}
    with pytest.raises(ValueError, match="'num_blocks' is no setting of RealNVP"):
        build_model(old_spec)


def test_a_lunet_spec_with_an_unknown_setting_is_refused_by_name():
    with pytest.raises(ValueError, match="the model spec's 'width' is no setting of LUNet"):
        build_model({"name": "lunet", "features": 3, "num_blocks": 2, "width": 9})
