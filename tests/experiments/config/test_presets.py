"""Named settings (lunet.experiments.config.presets): the model specs of each kind of run build the
models they describe, own data deepens from DEEP_VECTOR_ROWS rows, the recipes, the 2-D settings,
and nothing here loads torch."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest

from lunet.experiments.config.models import build_model, check_spec
from lunet.experiments.config.presets import (
    DEEP_VECTOR_ROWS,
    GMM2D,
    IMAGES,
    KINDS,
    MAX_AUTO_CLASSES,
    MAX_LABEL_EMBEDDING,
    RECIPES,
    VECTORS,
    GMM2DSettings,
    Recipe,
    conditional_image_spec,
    conditional_vector_spec,
    paper_lunet_spec,
    vector_lunet_spec,
    vector_num_blocks,
)


def test_the_paper_spec_is_four_blocks_of_784_and_takes_variants():
    spec = paper_lunet_spec()
    assert check_spec(spec) is spec
    assert (spec["name"], spec["features"], spec["num_blocks"]) == ("lunet", 784, 4)
    variant = paper_lunet_spec(2, activation="spline", alpha=0.2)
    assert variant["num_blocks"] == 2 and variant["activation"] == "spline" and variant["alpha"] == 0.2
    assert paper_lunet_spec() == spec  # a variant leaves the defaults as they were


def test_the_conditional_image_spec_is_the_papers_layers_with_ten_classes():
    spec = conditional_image_spec(3, activation="spline")
    paper = paper_lunet_spec(3, activation="spline")
    assert spec["name"] == "conditional_lunet" and spec["num_classes"] == 10
    assert {k: v for k, v in spec.items() if k in paper and k != "name"} == {k: v for k, v in paper.items()
                                                                           if k != "name"}


def test_own_data_deepens_from_the_deep_rows():
    assert vector_num_blocks(0) == vector_num_blocks(DEEP_VECTOR_ROWS - 1) == 4
    assert vector_num_blocks(DEEP_VECTOR_ROWS) == vector_num_blocks(10 * DEEP_VECTOR_ROWS) == 8
    assert vector_lunet_spec(3, rows=DEEP_VECTOR_ROWS)["num_blocks"] == 8
    assert vector_lunet_spec(3, num_blocks=2, rows=DEEP_VECTOR_ROWS)["num_blocks"] == 2  # given: kept


def test_own_data_takes_splines_by_default_and_learned_slopes_on_request():
    spline = vector_lunet_spec(5)
    assert spline["activation"] == "spline" and "alpha" not in spline
    slopes = vector_lunet_spec(5, activation="leaky_softplus")
    assert "activation" not in slopes and slopes["learn_alpha"] is True and 0 < slopes["alpha"] < 1


@pytest.mark.usefixtures("one_thread")
def test_the_specs_of_own_data_build_the_models_they_describe():
    model = build_model(vector_lunet_spec(3, num_blocks=2))
    assert model.features == 3 and model.num_blocks == 2 and model.activation == "spline"
    conditional = build_model(conditional_vector_spec(3, context_features=2, num_classes=None, num_blocks=2))
    assert conditional.features == 3 and conditional.context_features == 2
    labels = conditional_vector_spec(3, context_features=4, num_classes=4, num_blocks=2)
    assert labels["num_classes"] == 4 and build_model(labels).num_classes == 4


def test_the_kinds_and_context_limits():
    # the names run.json records: runs written earlier must still be read by them
    assert (GMM2D, IMAGES, VECTORS) == ("gmm2d", "images", "vectors") and KINDS == (GMM2D, IMAGES, VECTORS)
    assert 1 <= MAX_LABEL_EMBEDDING <= MAX_AUTO_CLASSES


def test_the_2d_settings_need_a_positive_count_of_starts():
    assert GMM2DSettings().starts >= 1
    assert GMM2DSettings(starts=1).starts == 1
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match=f"starts must be a positive integer, got {bad!r}"):
            GMM2DSettings(starts=bad)


def test_each_recipe_is_named_by_its_key_and_frozen():
    assert {"paper", "best"} <= set(RECIPES)
    for name, recipe in RECIPES.items():
        assert isinstance(recipe, Recipe) and recipe.name == name and recipe.summary
        check_spec({**paper_lunet_spec(), **recipe.model})
    with pytest.raises(dataclasses.FrozenInstanceError):
        RECIPES["paper"].name = "other"


def test_the_presets_load_without_torch():
    code = "import sys\nimport lunet.experiments.config.presets\nprint('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
