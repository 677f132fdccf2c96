"""``lunet train --recipe``: named settings that options change, recorded in the run."""

from __future__ import annotations

import json

import pytest

from lunet.cli import main
from lunet.cli.train import model_overrides, parse, train_config
from lunet.experiments.config.presets import RECIPES
from lunet.experiments.config.training import default_train_config
from lunet.experiments.store.checkpoint import load_model
from lunet.spline import MonotoneSpline

IMAGES = ["--dataset", "mnist", "--out", "run"]


def test_the_paper_recipe_is_the_default():
    default, paper = parse(IMAGES), parse([*IMAGES, "--recipe", "paper"])
    assert train_config(default) == train_config(paper) == default_train_config("mnist")
    assert model_overrides(default) == model_overrides(paper) == {}


def test_the_best_recipe_sets_its_model_and_schedule_and_options_win():
    best = parse([*IMAGES, "--recipe", "best"])
    assert model_overrides(best)["activation"] == "spline"
    assert train_config(best).epochs == RECIPES["best"].train["epochs"] != default_train_config("mnist").epochs
    changed = parse([*IMAGES, "--recipe", "best", "--epochs", "3", "--activation", "leaky_softplus"])
    assert train_config(changed).epochs == 3
    assert "activation" not in model_overrides(changed)


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "gmm2d", "--out", "run", "--recipe", "best"], "--recipe applies to image data sets only"),
    ([*IMAGES, "--model", "realnvp", "--recipe", "best"], "--recipe applies to --model lunet only"),
])
def test_the_recipe_is_an_option_of_lunet_image_runs_only(argv, message):
    with pytest.raises(ValueError, match=message):
        parse(argv)


def test_a_recipe_run_records_its_name_and_model_and_resumes(tmp_path, fake_mnist):
    run = tmp_path / "run"
    argv = ["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--no-verify", "--out", str(run),
            "--recipe", "best", "--blocks", "2", "--epochs", "1", "--limit", "300", "--no-progress"]
    assert main(argv) == 0
    record = json.loads((run / "run.json").read_text())
    assert record["recipe"] == "best" and record["model"]["activation"] == "spline"
    assert record["data_init"] == RECIPES["best"].run["data_init"] == "standardize"
    model, _ = load_model(run / "checkpoint.pt")
    assert all(isinstance(a, MonotoneSpline) for a in model.activations)
    assert main([*argv[:-3], "--epochs", "2", "--limit", "300", "--no-progress", "--resume"]) == 0
    assert main([*argv[:10], "--recipe", "paper", *argv[12:], "--resume"]) == 2  # another run's settings


def test_a_start_given_with_the_recipe_wins(tmp_path, fake_mnist):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--no-verify", "--out", str(run),
                 "--recipe", "best", "--data-init", "gaussian", "--blocks", "2", "--epochs", "1", "--limit", "900",
                 "--no-progress"]) == 0
    assert json.loads((run / "run.json").read_text())["data_init"] == "gaussian"
