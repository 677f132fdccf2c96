"""`lunet train` and the run commands on the 2-D mixture: help, a tiny run, refusals, export."""

import json
import subprocess
import sys

import pytest
import torch

from lunet.cli import main
from lunet.experiments.store.checkpoint import load_model


def test_cli_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "lunet.cli", "--help"], capture_output=True, text=True, check=True)
    for command in ("train", "evaluate", "sample", "interpolate", "agreement"):
        assert command in out.stdout


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


def test_cli_rejects_bad_options(capsys):
    assert main(["train", "--dataset", "gmm2d", "--out", "/tmp/unused-lunet", "--lr", "-1"]) == 2
    assert "--lr: must be a positive finite number" in capsys.readouterr().err


@pytest.mark.parametrize("command", [
    ["train", "--dataset", "gmm2d", "--epochs", "1"],
    ["train", "--dataset", "mnist", "--limit", "100", "--epochs", "1", "--data-dir", "."],  # no data there
    ["bench", "--micro"],
], ids=["train-2d", "train-images", "bench"])
def test_a_gpu_asked_for_where_there_is_none_fails_with_one_line(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if command[0] == "train":
        command = command + ["--out", str(tmp_path / "run")]
    assert main(command + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lunet {command[0]}: error: device 'cuda' was requested but CUDA is not available here; "
                   f"use --device cpu"]
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_metrics_name_their_unit_and_hold_the_figures_the_console_shows(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "gmm2d", "--out", str(out), "--epochs", "2", "--eval-every", "1",
                 "--blocks", "2", "--starts", "1"]) == 0
    printed = capsys.readouterr()
    rows = [json.loads(line) for line in (out / "starts" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_nll_nats", "val_nll_nats", "lr", "train_seconds", "steps"}
    assert rows[0]["steps"] == "eager"
    shown = printed.out + printed.err  # the epoch lines go through the progress bar's stream
    for r in rows:
        assert f"train {r['train_nll_nats']:.4f} nats  val {r['val_nll_nats']:.4f} nats" in shown
    assert "epochs," in printed.out and "s training" in printed.out
    assert (out / "starts" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("seconds, text", [(0.04, "0.0 s"), (9.96, "10.0 s"), (42.4, "42 s"), (185, "3 min 05 s"),
                                           (3725, "1 h 02 min")])
def test_durations_read_as_people_write_them(seconds, text):
    from lunet.experiments.training.log import format_seconds

    assert format_seconds(seconds) == text


def test_export_of_a_2d_run_loads_as_the_runs_best_model(tmp_path, capsys):

    run = tmp_path / "run"
    assert main(["train", "--dataset", "gmm2d", "--out", str(run), "--epochs", "2", "--blocks", "2",
                 "--no-progress"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "model.pt")]) == 0
    assert "load_model" in capsys.readouterr().out
    model, info = load_model(tmp_path / "model.pt")
    trained, _ = load_model(run / "checkpoint.pt", which="best")
    assert info["run"] == {"dataset": "gmm2d"} and "optimizer" not in info
    x = torch.randn(5, 2)
    torch.testing.assert_close(model.log_prob(x), trained.log_prob(x), rtol=0, atol=0)


def test_image_commands_say_what_a_2d_run_is(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "gmm2d", "--out", str(run), "--epochs", "1", "--blocks", "2",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "2-D mixture run" in err and "summary.json" in err and "lunet export" in err


def test_export_refuses_a_folder_without_a_run(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "m.pt")]) == 2
    assert "holds no run made by `lunet train`" in capsys.readouterr().err








