"""The paper's 2-D experiment (lunet.experiments.runs.gmm2d): a tiny run end to end, and its starts trained
side by side as one grouped flow, the best by validation kept."""

import json

import pytest
import torch

from lunet.cli import main
from lunet.experiments.runs import gmm2d
from lunet.experiments.store.checkpoint import load_checkpoint, load_model
from lunet.experiments.training.trainer import mean_log_prob


def test_the_run_keeps_the_start_with_the_best_validation_nll(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "gmm2d", "--out", str(run), "--epochs", "3", "--blocks", "2", "--starts", "3",
                 "--no-progress"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    nlls = summary["start_val_nll_nats"]
    assert summary["starts"] == 3 and len(nlls) == 3

    # the starts, taken apart from the grouped flow's best weights, score as reported
    grouped, _ = load_model(run / "starts" / "checkpoint.pt", which="best")
    assert grouped.groups == 3 and grouped.features == 6
    val = gmm2d.make_splits(0)["val"]
    flows = grouped.split_groups()
    scored = [-mean_log_prob(f.eval(), val, gmm2d._log_prob_fn, 10000, seed=0) for f in flows]
    assert scored == nlls

    # the run's model is the best of them, as a plain 2-D flow
    best = min(range(3), key=nlls.__getitem__)
    model, info = load_model(run / "checkpoint.pt")
    assert model.features == 2 and model.groups == 1 and info["extra"]["start"] == best
    x = torch.randn(50, 2)
    torch.testing.assert_close(model.log_prob(x), flows[best].log_prob(x), rtol=0, atol=0)
    test = gmm2d.make_splits(0)["test"]
    test_nll = -mean_log_prob(model.eval(), test, gmm2d._log_prob_fn, 10000, seed=0)
    assert summary["test_nll_nats"] == test_nll


def test_one_start_is_a_plain_run(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "gmm2d", "--out", str(run), "--epochs", "2", "--blocks", "2", "--starts", "1",
                 "--no-progress"]) == 0
    assert load_checkpoint(run / "starts" / "checkpoint.pt")["model_spec"]["groups"] == 1
    assert json.loads((run / "summary.json").read_text())["start_val_nll_nats"][0] > 0


def test_cli_tiny_gmm2d_run(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--dataset", "gmm2d", "--out", str(out), "--epochs", "3", "--blocks", "3", "--no-progress"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "KL" in printed and "entropy" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kl_nats"] == pytest.approx(summary["test_nll_nats"] - summary["entropy_nats"])
    assert summary["epochs"] == 3 and summary["model"]["num_blocks"] == 3
    for png in ("density.png", "samples.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a second run into the same folder is refused with a hint, then allowed with --overwrite
    assert main(["train", "--dataset", "gmm2d", "--out", str(out), "--epochs", "1", "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--dataset", "gmm2d", "--out", str(out), "--epochs", "1", "--blocks", "3", "--no-progress",
                 "--overwrite"]) == 0
