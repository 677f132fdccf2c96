"""``lunet train --dataset mnist --conditional``: one conditional LU-Net for every class, on a small
subset of the real files (the first 1,000 training images, 200 test images, one epoch)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import one_line_error, read_metrics, run_cli
from experiments.runs.test_images import DATA, PNG_MAGIC, SMALL, TEST_LIMIT, TRAIN_LIMIT, _data_present, full_log_prob
from lunet import ConditionalLUNet
from lunet.experiments.data.mnist import load_dataset
from lunet.experiments.runs.images import LabelledFlow, load_run_models
from lunet.experiments.store.checkpoint import load_model

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(not _data_present("mnist"), reason=f"MNIST IDX files not found under {DATA}/mnist")]


def train(out, *extra):
    return run_cli("train", "--dataset", "mnist", "--conditional", "--out", out, "--limit", TRAIN_LIMIT,
                   "--data-dir", DATA, *SMALL, *extra)


@pytest.fixture(scope="module")
def cond_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("conditional") / "run"
    assert train(run) == 0
    return run


def test_one_model_for_every_class_is_scored_under_each_label(cond_run, tmp_path):
    record = json.loads((cond_run / "run.json").read_text())
    assert record["kind"] == "conditional" and record["model"]["name"] == "conditional_lunet"
    assert record["model"]["num_classes"] == 10 and not list(cond_run.glob("class-*"))
    model, _ = load_model(cond_run / "checkpoint.pt")
    assert isinstance(model, ConditionalLUNet)

    out = tmp_path / "eval.json"
    assert run_cli("evaluate", cond_run, "--json", out, "--limit", TEST_LIMIT, "--data-dir", DATA,
                   "--draws", "1") == 0
    result = json.loads(out.read_text())
    assert result["kind"] == "conditional" and set(result["per_class"]) == {str(c) for c in range(10)}
    assert result["num_parameters_free"] == model.num_parameters()
    # each test image under its own label: the model's log p(x | label), computed here
    images, labels = load_dataset("mnist", "test", data_dir=DATA)
    images, labels = images[:TEST_LIMIT], labels[:TEST_LIMIT]
    total = []
    for c in range(10):
        pixels = images[labels == c]
        total.append(full_log_prob(LabelledFlow(model.eval(), c), pixels, seed=1000)[0])
    own = torch.cat(total)
    assert result["bits_per_dim"] == pytest.approx(float((-own / 784 + math.log(256)).mean() / math.log(2)),
                                                   rel=1e-4)
    # log p(x) >= log p(x | own label) - log 10: the marginal can be no worse by more than that
    assert result["bits_per_dim_marginal"] <= result["bits_per_dim"] + math.log2(10) / 784 + 1e-3
    assert 0.0 <= result["bayes_classifier_accuracy"] <= 1.0


def test_samples_one_row_per_class_and_resume(cond_run, tmp_path):
    picture = tmp_path / "grid.png"
    assert run_cli("sample", cond_run, "--out", picture, "--per-row", "3") == 0
    assert picture.read_bytes()[:8] == PNG_MAGIC
    settings, models, ckpts = load_run_models(cond_run)
    assert len(models) == 10 and len(ckpts) == 1 and [m.label for m in models] == list(range(10))
    assert train(cond_run, "--resume", "--epochs", "2") == 0
    assert [row["epoch"] for row in read_metrics(cond_run)] == [1, 2]


def test_a_conditional_run_with_splines_whose_knots_the_class_sets(tmp_path):
    run = tmp_path / "spline"
    assert train(run, "--activation", "spline", "--limit", "300") == 0
    record = json.loads((run / "run.json").read_text())
    assert record["model"]["activation"] == "spline" and "learn_alpha" not in record["model"]
    model, _ = load_model(run / "checkpoint.pt")
    assert isinstance(model, ConditionalLUNet) and model.spline == (8, 5.0)
    images, labels = load_dataset("mnist", "test", data_dir=DATA)
    x = images[:20].reshape(20, -1).double().add(0.5).div(256).to(model.reference().dtype)
    with torch.no_grad():  # each image under its own label: the inverse gives it back
        z, _ = model(x, labels[:20])
        torch.testing.assert_close(model.inverse(z, labels[:20])[0], x, rtol=1e-3, atol=1e-3)
        # the trained knots differ between classes: the class bends the coordinates, not only shifts them
        knots = model._params(torch.arange(10))[2]
    assert float((knots[0] - knots[1]).abs().max()) > 1e-4


@pytest.mark.parametrize("extra, fragment", [
    (["--per-class"], "--per-class applies to runs without --conditional"),
    (["--recipe", "best"], "--recipe applies to runs without --conditional"),
    (["--learn-alpha"], "--learn-alpha applies to runs without --conditional"),
])
def test_conditional_options_that_do_not_apply_are_refused(tmp_path, capsys, extra, fragment):
    assert train(tmp_path / "new", *extra) == 2
    assert fragment in one_line_error(capsys, "train")
    assert not (tmp_path / "new").exists()


def test_commands_without_a_conditional_form_say_so(cond_run, tmp_path, capsys):
    assert run_cli("ood", cond_run, "--against", "fashion-mnist", "--limit", "10") == 2
    assert "this run is one conditional LU-Net" in one_line_error(capsys, "ood")
    assert run_cli("interpolate", cond_run, "--out", tmp_path / "i.png") == 2
    assert "needs an unconditional or single-class run" in one_line_error(capsys, "interpolate")
