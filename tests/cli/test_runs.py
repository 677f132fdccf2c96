"""The commands on a trained run (lunet.cli.runs): what they say of a run of another kind, and
``evaluate --per-row``, each row's log-likelihood of a run on own data."""

import json

import numpy as np
import pytest
import torch

from conftest import one_line_error, run_cli
from experiments.runs.test_vectors import banana, write_npy
from lunet.cli import main
from lunet.experiments.config.presets import IMAGES
from lunet.experiments.runs.vector_run import evaluate_vectors, load_vector_run
from lunet.experiments.store.folder import RunFolder
from lunet.experiments.store.record import ImageRunSettings, RunRecord, write_run

FAST = ["--blocks", "2", "--batch-size", "64", "--dtype", "float64", "--no-progress"]


def test_image_commands_say_what_a_2d_run_is(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "gmm2d", "--out", str(run), "--epochs", "1", "--blocks", "2",
                 "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "2-D mixture run" in err and "summary.json" in err and "lunet export" in err


# -- per-row log-likelihoods -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A two-epoch run on a banana of width 3 (float64), its training file and a test file."""
    folder = tmp_path_factory.mktemp("rows")
    data = write_npy(folder / "train.npy", banana(200, 10, columns=3))
    test = write_npy(folder / "test.npy", banana(57, 11, columns=3))
    assert run_cli("train", "--data", data, "--out", folder / "run", "--epochs", "2", *FAST) == 0
    return folder / "run", data, test


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("suffix", [".csv", ".npy"])
def test_per_row_output_holds_each_rows_log_likelihood(small_run, tmp_path, capsys, suffix):
    run, _, test = small_run
    out = tmp_path / f"rows{suffix}"
    capsys.readouterr()
    assert run_cli("evaluate", run, "--data", test, "--per-row", out, "--json", tmp_path / "e.json") == 0
    assert f"wrote {out}" in capsys.readouterr().out
    result = json.loads((tmp_path / "e.json").read_text())
    if suffix == ".csv":
        lines = out.read_text().splitlines()
        assert lines[0] == "log_prob_nats"
        scores = np.array([float(v) for v in lines[1:]])
    else:
        scores = np.load(out)
        assert scores.shape == (57, 1)
        scores = scores[:, 0]
    assert scores.shape == (result["num_vectors"],) == (57,)
    assert scores.mean() == pytest.approx(-result["nll_nats_per_vector"], rel=1e-12)
    assert np.array_equal(scores, load_vector_run(run).log_prob(torch.from_numpy(np.load(test))).numpy())
    assert "log_prob" not in result  # the rows go to their file, not into the JSON
    kept = evaluate_vectors(run, torch.from_numpy(np.load(test)), keep_rows=True)["log_prob"]
    assert np.array_equal(kept.numpy(), scores)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("target, fragment", [
    ("{tmp}/rows.txt", "--per-row must name a .npy, .csv, .pt file"),
    ("{test}", "is the --data file this command reads"),
    ("{train}", "is the run's training data"),
    ("{run}/checkpoint.pt", "is the run's own checkpoint.pt"),
    ("{run}/notes.npy", "replaces no file there"),
], ids=["bad suffix", "onto the data file", "onto the training data", "onto the checkpoint", "onto a file in the run"])
def test_per_row_output_is_refused_where_it_cannot_go(small_run, tmp_path, capsys, target, fragment):
    run, train, test = small_run
    (run / "notes.npy").write_bytes(b"the user's own file")
    fill = {"tmp": tmp_path, "test": test, "train": train, "run": run}
    kept = (test, train, run / "checkpoint.pt", run / "notes.npy")
    before = {p: p.read_bytes() for p in kept}
    capsys.readouterr()
    assert run_cli("evaluate", run, "--data", test, "--per-row", target.format(**fill)) == 2
    line = one_line_error(capsys, "evaluate")
    assert fragment.format(**fill) in line, line
    assert {p: p.read_bytes() for p in kept} == before
    assert not (tmp_path / "rows.txt").exists()


@pytest.mark.usefixtures("one_thread")
def test_per_row_output_is_refused_for_an_image_run(tmp_path, capsys):
    folder = RunFolder(tmp_path / "images")
    write_run(folder, RunRecord(IMAGES, ImageRunSettings()))
    assert run_cli("evaluate", folder.path, "--per-row", tmp_path / "rows.csv") == 2
    line = one_line_error(capsys, "evaluate")
    assert "--per-row applies to runs on own data" in line
    assert not (tmp_path / "rows.csv").exists()
