"""``lunet train`` (lunet.cli.train): one parser per kind of run, the options that do not apply refused,
the named recipes, and a time budget given on the command line."""

import json

import pytest
import torch

from conftest import run_cli
from lunet.cli import main
from lunet.cli.train import model_overrides, parse, train_config
from lunet.experiments.config.presets import RECIPES
from lunet.experiments.config.training import BUDGET_EPOCHS, default_train_config
from lunet.experiments.store.checkpoint import load_checkpoint, load_model
from lunet.spline import MonotoneSpline

# -- the parser of each kind of run ------------------------------------------------------------


def test_cli_rejects_bad_options(capsys):
    assert main(["train", "--dataset", "gmm2d", "--out", "/tmp/unused-lunet", "--lr", "-1"]) == 2
    assert "--lr: must be a positive finite number" in capsys.readouterr().err


def test_each_kind_of_run_has_its_own_options(capsys):
    kinds = {("--dataset", "gmm2d"): ("--starts",), ("--dataset", "mnist"): ("--lam", "--per-class", "--class"),
             ("--data", "x.csv"): ("--val-fraction", "--data-init")}
    others = {option for shown in kinds.values() for option in shown} - {"--data-init"}
    for chosen, shown in kinds.items():
        assert main(["train", *chosen, "--help"]) == 0
        text = capsys.readouterr().out
        assert all(option in text for option in shown), chosen
        assert not [option for option in others - set(shown) if f"{option} " in text], chosen


def test_the_activation_option_is_not_one_of_the_2d_experiment(tmp_path, capsys):
    from lunet.cli import main

    assert main(["train", "--dataset", "gmm2d", "--out", str(tmp_path / "run"), "--activation", "spline"]) == 2
    assert "--activation applies to image data sets and --data only" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


# -- --recipe: named settings that options change, recorded in the run -------------------------


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


def test_the_spline_size_options_reach_the_spec_and_only_with_splines():
    given = model_overrides(parse([*IMAGES, "--recipe", "best", "--bins", "16", "--spline-bound", "8"]))
    assert (given["bins"], given["bound"]) == (16, 8.0)
    assert model_overrides(parse(["--data", "x.csv", "--out", "run", "--bins", "4"]))["bins"] == 4  # own data: splines
    assert model_overrides(parse([*IMAGES, "--input-spline", "--bins", "4"])) == {"input_spline": True, "bins": 4}
    for argv, named in (([*IMAGES, "--bins", "16"], "--bins shapes"),
                        ([*IMAGES, "--recipe", "best", "--activation", "leaky_softplus", "--spline-bound", "3"],
                         "--spline-bound shapes"),
                        (["--data", "x.csv", "--out", "run", "--activation", "leaky_softplus", "--bins", "4",
                          "--spline-bound", "3"], "--bins and --spline-bound shape")):
        with pytest.raises(ValueError, match=named):
            model_overrides(parse(argv))


def test_a_run_with_more_bins_builds_and_resumes_its_splines(tmp_path, fake_mnist):
    run = tmp_path / "run"
    argv = ["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--no-verify", "--out", str(run),
            "--recipe", "best", "--blocks", "2", "--bins", "5", "--spline-bound", "3", "--input-spline",
            "--epochs", "1", "--limit", "300", "--no-progress"]
    assert main(argv) == 0
    model = load_model(run / "checkpoint.pt")[0]
    for spline in (model.activations[0], model.input_spline):
        assert isinstance(spline, MonotoneSpline) and (spline.bins, spline.bound) == (5, 3.0)
    assert main([*argv[:-5], "--epochs", "2", "--limit", "300", "--no-progress", "--resume"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2


def test_an_image_run_with_ema_keeps_and_resumes_the_average_of_its_weights(tmp_path, fake_mnist, capsys):
    run = tmp_path / "run"
    argv = ["train", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--no-verify", "--out", str(run),
            "--recipe", "best", "--blocks", "2", "--ema", "0.99", "--epochs", "1", "--limit", "300", "--no-progress"]
    assert main(argv) == 0
    ckpt = load_checkpoint(run / "checkpoint.pt")
    assert ckpt["train_config"]["ema"] == 0.99 and ckpt["average_updates"] > 0
    assert ckpt["best_epoch"] == 1
    for key, value in ckpt["average_model"].items():
        assert torch.equal(ckpt["best_model"][key], value), key
    assert main([*argv[:-5], "--epochs", "2", "--limit", "300", "--no-progress", "--resume"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["average_updates"] == 2 * ckpt["average_updates"]
    assert main([*argv[:-7], "--ema", "1", *argv[-5:]]) == 2
    assert "--ema: must be a number strictly between 0 and 1" in capsys.readouterr().err


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


# -- --time-budget -----------------------------------------------------------------------------


def test_the_command_line_budget_lifts_the_epochs_unless_they_are_given(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "gmm2d", "--starts", "1", "--time-budget", "0.5", "--out", out,
                   "--no-progress") == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["train_config"]["time_budget"] == 0.5 and ckpt["train_config"]["epochs"] == BUDGET_EPOCHS
    assert ckpt["train_seconds"] >= 0.5
    capped = tmp_path / "capped"
    assert run_cli("train", "--dataset", "gmm2d", "--starts", "1", "--time-budget", "60", "--epochs", "1",
                   "--out", capped, "--no-progress") == 0
    ckpt = load_checkpoint(capped / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["train_seconds"] < 60
