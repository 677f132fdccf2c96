"""Runs on users' own feature vectors (lunet.experiments.runs.vectors, ``lunet train --data FILE``):
training, evaluating and sampling; the defaults, with the Gaussian baseline beside every run; early
stopping; spline activations."""

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from baselines.test_gaussian import closed_form_log_density
from conftest import read_metrics, run_cli
from lunet.cli import main
from lunet.experiments.config.models import build_model
from lunet.experiments.config.presets import DEEP_VECTOR_ROWS, vector_lunet_spec, vector_num_blocks
from lunet.experiments.config.training import VECTOR_PATIENCE, TrainConfig, vector_train_config
from lunet.experiments.runs.vector_report import describe_samples, sample_report
from lunet.experiments.runs.vector_run import evaluate_vectors, load_vector_run
from lunet.experiments.runs.vectors import split_rows, train_vectors
from lunet.experiments.store.checkpoint import load_checkpoint, load_model
from lunet.spline import MonotoneSpline

D = 3
FAST = ["--blocks", "2", "--batch-size", "64", "--dtype", "float64", "--eval-every", "1", "--no-progress"]


def make_rows(n, seed):
    """(n, 3) float64: x0 ~ N(0, 1), x1 = x0² + 0.5 N(0, 1), x2 ~ N(0, 1)."""
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(n)
    return np.stack([x0, x0**2 + 0.5 * rng.standard_normal(n), rng.standard_normal(n)], axis=1)


def write_csv(path, rows, header=None):
    lines = ([",".join(header)] if header else []) + [",".join(repr(float(v)) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_npy(path, rows):
    np.save(path, rows)
    return path


def train(data, out, *options, epochs=3):
    return main(["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), *FAST, *options])


def best_nll_per_dim(run, x):
    """The test NLL of the run's best model, computed here from its checkpoint (in the model's own dtype)."""
    model, _ = load_model(run / "checkpoint.pt")
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        return float(-model.log_prob(torch.as_tensor(x).to(dtype)).double().mean() / x.shape[1])


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_end_to_end_on_a_csv_with_header_and_on_an_npy(tmp_path, capsys):
    rows, test_rows = make_rows(300, 0), make_rows(120, 1)
    test_file = write_npy(tmp_path / "test.npy", test_rows)
    runs = {}
    for kind, data in (("csv", write_csv(tmp_path / "train.csv", rows, header=["x0", "x1", "x2"])),
                       ("npy", write_npy(tmp_path / "train.npy", rows))):
        run = runs[kind] = tmp_path / f"run-{kind}"
        assert train(data, run, "--seed", "5") == 0
        printed = capsys.readouterr().out
        assert "270 training and 30 validation rows of width 3" in printed  # the header row is no data row
        info = json.loads((run / "run.json").read_text())
        assert info["data"] == "vectors" and info["features"] == D and info["data_file"] == str(data.resolve())
        logged = read_metrics(run)
        assert [r["epoch"] for r in logged] == [1, 2, 3]
        assert all({"train_nats_per_dim", "val_nats_per_dim"} <= set(r) for r in logged)
        assert all(math.isfinite(r["train_nats_per_dim"]) and math.isfinite(r["val_nats_per_dim"]) for r in logged)
        assert f"best validation {min(r['val_nats_per_dim'] for r in logged):.4f} nats/dim" in printed
        assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

        report = tmp_path / f"eval-{kind}.json"
        assert main(["evaluate", str(run), "--data", str(test_file), "--json", str(report)]) == 0
        printed = capsys.readouterr().out
        result = json.loads(report.read_text())
        expected = best_nll_per_dim(run, test_rows)
        assert result["nll_nats_per_dim"] == pytest.approx(expected, rel=1e-9)
        assert result["nll_nats_per_vector"] == pytest.approx(D * expected, rel=1e-9)
        assert (result["num_vectors"], result["features"], result["data_file"]) == (120, D, str(test_file.resolve()))
        assert f"test NLL {expected:.4f} nats/dim" in printed

        samples = tmp_path / f"samples-{kind}.npy"
        assert main(["sample", str(run), "--num", "40", "--out", str(samples), "--seed", "1"]) == 0
        drawn = np.load(samples)
        assert drawn.shape == (40, D) and np.isfinite(drawn).all()
    # the same numbers in either file format: the same run
    assert_same_weights(load_checkpoint(runs["csv"] / "checkpoint.pt")["best_model"],
                        load_checkpoint(runs["npy"] / "checkpoint.pt")["best_model"])


def test_the_standardisations_jacobian_is_part_of_the_likelihood(tmp_path, capsys):
    rows, test_rows = make_rows(300, 2), make_rows(100, 3)
    nll = []
    for name, scale, shift in (("raw", 1.0, 0.0), ("scaled", 10.0, 3.0)):
        data = write_npy(tmp_path / f"{name}.npy", scale * rows + shift)
        test = write_npy(tmp_path / f"{name}-test.npy", scale * test_rows + shift)
        assert train(data, tmp_path / name, "--seed", "7", epochs=2) == 0
        report = tmp_path / f"{name}.json"
        assert main(["evaluate", str(tmp_path / name), "--data", str(test), "--json", str(report)]) == 0
        nll.append(json.loads(report.read_text())["nll_nats_per_dim"])
    capsys.readouterr()
    # y = 10 x + 3 has density p(x) / 10^D: ln 10 more nats in every dimension
    assert nll[1] - nll[0] == pytest.approx(math.log(10), rel=1e-6)


def test_python_api_takes_tensors_datasets_and_loaders_alike(tmp_path):
    x = torch.from_numpy(make_rows(250, 4))
    y = torch.arange(250) % 3  # labels ride along and are dropped
    config = TrainConfig(epochs=2, batch_size=64, lr=1e-2, dtype="float64", seed=11)
    spec = vector_lunet_spec(D, num_blocks=2)
    inputs = {"tensor": x, "dataset": TensorDataset(x, y), "loader": DataLoader(TensorDataset(x, y), batch_size=37)}
    results = {name: train_vectors(data, tmp_path / name, config=config, model_spec=spec, progress=False)
               for name, data in inputs.items()}
    model, summary = results["tensor"]
    assert (summary["num_train"], summary["num_val"], summary["features"], summary["epochs"]) == (225, 25, D, 2)
    for name in ("dataset", "loader"):
        other, other_summary = results[name]
        assert_same_weights(model.state_dict(), other.state_dict())
        assert other_summary["val_nll_nats_per_dim"] == summary["val_nll_nats_per_dim"]
    # the returned model is the best one stored in the run folder, and evaluate_vectors reads that folder
    assert_same_weights({k: v.cpu() for k, v in model.state_dict().items()},
                        load_checkpoint(tmp_path / "tensor" / "checkpoint.pt")["best_model"])
    assert evaluate_vectors(tmp_path / "tensor", x)["num_vectors"] == 250

    val = torch.from_numpy(make_rows(50, 5))
    model, summary = train_vectors(x, tmp_path / "val", config=config, model_spec=spec, val_data=val, progress=False)
    assert (summary["num_train"], summary["num_val"]) == (250, 50)
    with torch.no_grad():
        val_nll = float(-model.log_prob(val).mean() / D)
    assert summary["val_nll_nats_per_dim"] == pytest.approx(val_nll, rel=1e-9)


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """A one-epoch run on own data of width 3, for the refusals."""
    folder = tmp_path_factory.mktemp("own")
    data = write_npy(folder / "train.npy", make_rows(200, 6))
    assert train(data, folder / "run", epochs=1) == 0
    return folder / "run"


BAD_FILES = {
    "ragged.csv": "1,2,3\n4,5,6\n7,8\n",
    "text.csv": "a,b,c\n1,2,3\n4,five,6\n",
    "nan.csv": "1,2,3\n4,nan,6\n7,8,9\n",
    "one.csv": "x0,x1,x2\n1,2,3\n",
    "narrow.csv": "1,2\n3,4\n5,6\n",
    "good.csv": "1,2,3\n4,5,7\n7,8,8\n",
}


BAD_INPUTS = [
    (["train", "--data", "{tmp}/ragged.csv", "--out", "{tmp}/new"], "ragged.csv: line 3 has 2 columns, line 1 has 3"),
    (["train", "--data", "{tmp}/text.csv", "--out", "{tmp}/new"], "text.csv: line 3, column 2: 'five' is not a number"),
    (["train", "--data", "{tmp}/nan.csv", "--out", "{tmp}/new"], "NaN or infinite (the first in row 1, line 2)"),
    (["train", "--data", "{tmp}/one.csv", "--out", "{tmp}/new"], "one.csv has 1 row of data; at least 2 are needed"),
    (["evaluate", "{run}", "--data", "{tmp}/narrow.csv"], "narrow.csv has 2 features per row but the run models 3"),
    (["train", "--data", "{tmp}/good.csv", "--dataset", "mnist", "--out", "{tmp}/new"],
     "--data and --dataset exclude each other"),
    (["train", "--val-fraction", "0.2", "--out", "{tmp}/new"], "--val-fraction applies to --data only"),
    (["train", "--data", "{tmp}/good.csv", "--per-class", "--out", "{tmp}/new"], "--per-class applies to"),
    (["evaluate", "{run}"], "is a run on own data: name the test file with --data"),
    (["sample", "{run}", "--out", "{tmp}/x.png"], "--out for a run on own data must name a .npy, .csv, .pt file"),
    (["ood", "{run}", "--against", "mnist"], "is a run on own data (trained with --data)"),
    (["interpolate", "{run}", "--out", "{tmp}/i.png"], "is a run on own data (trained with --data)"),
    (["agreement", "{run}"], "is a run on own data (trained with --data)"),
    (["train", "--data", "{tmp}/good.csv", "--lam", "0.1", "--out", "{tmp}/new"], "--lam applies to"),
    (["train", "--out", "{run}", "--epochs", "1"], "holds an image run or a run on own data"),
]


BAD_IDS = ["ragged-row", "text-cell", "nan", "one-row", "wrong-width", "data-and-dataset", "val-fraction-alone",
           "per-class-with-data", "evaluate-without-data", "sample-to-png", "ood", "interpolate", "agreement",
           "lam-with-data", "2d-into-own-run"]


@pytest.mark.parametrize("argv, fragment", BAD_INPUTS, ids=BAD_IDS)
def test_bad_input_is_refused_in_one_line(own_run, tmp_path, capsys, argv, fragment):
    for name, text in BAD_FILES.items():
        (tmp_path / name).write_text(text)
    capsys.readouterr()
    code = main([a.format(tmp=tmp_path, run=own_run) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert fragment in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"lunet {argv[0]}: error: ")
    assert "Traceback" not in err
    assert not (tmp_path / "new").exists()  # a refused training leaves no run behind


def test_resume_continues_to_the_same_weights_as_an_uninterrupted_run(tmp_path, capsys):
    data = write_npy(tmp_path / "train.npy", make_rows(240, 8))
    options = ["--seed", "3", "--schedule", "constant"]
    assert train(data, tmp_path / "full", *options, epochs=3) == 0
    assert train(data, tmp_path / "part", *options, epochs=2) == 0
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt")["epoch"] == 2
    assert train(data, tmp_path / "part", *options, "--resume", epochs=3) == 0
    capsys.readouterr()
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    part = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert part["epoch"] == full["epoch"] == 3
    assert [r["epoch"] for r in read_metrics(tmp_path / "part")] == [1, 2, 3]
    assert_same_weights(full["model"], part["model"])
    assert_same_weights(full["best_model"], part["best_model"])
    assert [r["val_nats_per_dim"] for r in read_metrics(tmp_path / "part")] == \
        [r["val_nats_per_dim"] for r in read_metrics(tmp_path / "full")]


def test_a_float64_run_is_evaluated_in_float64(tmp_path, capsys):
    rows, test_rows = make_rows(200, 9), make_rows(100, 10)
    run = tmp_path / "run"
    assert train(write_npy(tmp_path / "train.npy", rows), run, epochs=2) == 0
    assert main(["evaluate", str(run), "--data", str(write_npy(tmp_path / "test.npy", test_rows)),
                 "--json", str(tmp_path / "e.json")]) == 0
    ckpt = load_checkpoint(run / "checkpoint.pt")
    model = build_model(ckpt["model_spec"]).to(torch.float64)
    model.load_state_dict(ckpt["best_model"])
    with torch.no_grad():
        expected = float(-model.log_prob(torch.from_numpy(test_rows)).mean() / D)
    assert json.loads((tmp_path / "e.json").read_text())["nll_nats_per_dim"] == pytest.approx(expected, rel=1e-12)


def test_resume_keeps_the_runs_validation_share_and_one_row_can_be_evaluated(tmp_path, capsys):
    data = write_npy(tmp_path / "train.npy", make_rows(200, 11))
    run = tmp_path / "run"
    assert train(data, run, "--val-fraction", "0.2", epochs=1) == 0
    assert train(data, run, "--resume", epochs=2) == 0  # no --val-fraction: the run's 0.2 holds
    assert json.loads((run / "run.json").read_text())["val_fraction"] == 0.2
    assert "160 training and 40 validation rows" in capsys.readouterr().out
    one = write_npy(tmp_path / "one.npy", make_rows(1, 12))
    assert main(["evaluate", str(run), "--data", str(one)]) == 0
    assert "on 1 vector" in capsys.readouterr().out


# -- the defaults, the Gaussian baseline beside every run, early stopping ---------------------


FAST_DEFAULT_EVAL = ["--blocks", "2", "--batch-size", "64", "--dtype", "float64", "--no-progress"]


def banana(n, seed, noise=0.5, columns=2):
    """(n, columns) float64: x0 ~ N(0, 1), x1 = x0² + noise · N(0, 1), further columns N(0, 1)."""
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(n)
    rest = [rng.standard_normal(n) for _ in range(columns - 2)]
    return np.stack([x0, x0**2 + noise * rng.standard_normal(n), *rest], axis=1)


def correlated(n, seed):
    """(n, 3) float64, the first two columns nearly equal: far from any diagonal Gaussian."""
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(n)
    return np.stack([x0, x0 + 0.05 * rng.standard_normal(n), rng.standard_normal(n)], axis=1)


def gaussian_nll_per_dim(train_rows, rows):
    """The baseline's NLL per dimension of ``rows`` under the Gaussian of ``train_rows`` (ridge 1e-6), by formula."""
    mean = train_rows.mean(0)
    cov = np.cov(train_rows.T)
    cov = cov + np.diag(1e-6 * np.diag(cov))
    return float(-closed_form_log_density(rows, mean, cov).mean() / rows.shape[1])


@pytest.mark.usefixtures("one_thread")
def test_a_flow_worse_than_the_gaussian_is_reported_with_the_word_and_advice(tmp_path, capsys):
    # a standardised start is a diagonal Gaussian; at a learning rate of 1e-6 it cannot learn the
    # correlation of the first two columns, which the full-covariance Gaussian has
    data = write_npy(tmp_path / "train.npy", correlated(200, 0))
    test = write_npy(tmp_path / "test.npy", correlated(100, 1))
    run = tmp_path / "run"
    assert run_cli("train", "--data", data, "--out", run, "--data-init", "standardize", "--lr", "1e-6",
                   "--epochs", "1", *FAST_DEFAULT_EVAL) == 0
    printed = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    assert summary["val_nll_nats_per_dim"] > summary["gaussian_val_nll_nats_per_dim"]
    assert "WORSE than the full-covariance Gaussian's" in summary["comparison"] and "try" in summary["comparison"]
    assert summary["comparison"] in printed.splitlines()
    assert all(row["gaussian_val_nats_per_dim"] == summary["gaussian_val_nll_nats_per_dim"]
               for row in read_metrics(run))

    assert run_cli("evaluate", run, "--data", test, "--json", tmp_path / "e.json") == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["nll_nats_per_dim"] > result["gaussian_nll_nats_per_dim"]
    assert "test NLL" in result["comparison"] and "WORSE" in result["comparison"]
    assert f"  {result['comparison']}" in printed.splitlines()


@pytest.mark.usefixtures("one_thread")
@pytest.mark.slow
def test_the_defaults_beat_the_gaussian_on_a_banana_and_their_samples_stay_near_it(tmp_path, capsys):
    rows, test_rows = banana(200, 0), banana(400, 1)
    data = write_npy(tmp_path / "train.npy", rows)
    run = tmp_path / "run"
    assert run_cli("train", "--data", data, "--out", run, "--no-progress") == 0  # no option: the defaults
    printed = capsys.readouterr().out.splitlines()
    summary = json.loads((run / "summary.json").read_text())
    ckpt = load_checkpoint(run / "checkpoint.pt")
    # the defaults chosen from the rows are what trained
    assert ckpt["model_spec"] == vector_lunet_spec(2)
    defaults = vector_train_config(summary["num_train"])
    assert (ckpt["train_config"]["epochs"], ckpt["train_config"]["eval_every"], ckpt["train_config"]["patience"]) == \
        (defaults.epochs, defaults.eval_every, VECTOR_PATIENCE)
    assert summary["data_init"] == "gaussian"

    # the Gaussian baseline on the validation rows, by the formula, in the summary, the log and the console
    train_split, val_split = (t.numpy() for t in split_rows(torch.from_numpy(rows), 0.1))
    gaussian_val = gaussian_nll_per_dim(train_split, val_split)
    assert summary["gaussian_val_nll_nats_per_dim"] == pytest.approx(gaussian_val, rel=1e-9)
    assert all(row["gaussian_val_nats_per_dim"] == summary["gaussian_val_nll_nats_per_dim"]
               for row in read_metrics(run))
    assert summary["val_nll_nats_per_dim"] < summary["gaussian_val_nll_nats_per_dim"]
    assert "the flow is better by" in summary["comparison"] and summary["comparison"] in printed

    # samples stay near the data, and the picture of them is written
    assert summary["samples"]["num_samples"] == 10_000
    assert summary["samples"]["far_outside_fraction"] == 0.0
    assert any(line.startswith(describe_samples(summary["samples"])) for line in printed)
    assert (run / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # better than the Gaussian on held-out rows too
    result = evaluate_vectors(run, torch.from_numpy(test_rows))
    assert result["gaussian_nll_nats_per_dim"] == pytest.approx(gaussian_nll_per_dim(train_split, test_rows),
                                                                rel=1e-9)
    assert result["nll_nats_per_dim"] < result["gaussian_nll_nats_per_dim"] - 0.1
    assert run_cli("sample", run, "--num", "2000", "--out", tmp_path / "s.npy") == 0
    drawn = torch.from_numpy(np.load(tmp_path / "s.npy"))
    assert sample_report(drawn, torch.from_numpy(rows.min(0)), torch.from_numpy(rows.max(0)))[
        "far_outside_fraction"] == 0.0


@pytest.mark.usefixtures("one_thread")
def test_early_stopping_keeps_the_best_epoch_and_a_resume_trains_no_further(tmp_path, capsys):
    data = write_npy(tmp_path / "train.npy", banana(80, 0))
    run = tmp_path / "run"
    patience, every = 2, 2
    options = ["--data-init", "standardize", "--patience", patience, "--eval-every", every, "--epochs", "300",
               "--lr", "0.03", "--schedule", "constant", "--batch-size", "32", "--blocks", "2",
               "--val-fraction", "0.3", "--no-progress"]
    assert run_cli("train", "--data", data, "--out", run, *options) == 0
    printed = capsys.readouterr().out
    summary = json.loads((run / "summary.json").read_text())
    ckpt = load_checkpoint(run / "checkpoint.pt")
    rows = read_metrics(run)
    assert summary["stopped_early"] and summary["epochs"] < 300 and ckpt["epoch"] == summary["epochs"]
    assert f"stopped early (the best at epoch {summary['best_epoch']})" in printed
    # the run stopped at the first validation that made `patience` in a row without improvement
    best_val, best_epoch = -ckpt["start_val_log_prob"] / 2, 0
    for row in rows:
        if row["val_nats_per_dim"] < best_val:
            best_val, best_epoch = row["val_nats_per_dim"], row["epoch"]
        assert row["epoch"] - best_epoch < patience * every or row is rows[-1]
    assert rows[-1]["epoch"] - best_epoch == patience * every
    assert summary["best_epoch"] == ckpt["best_epoch"] == best_epoch > 0  # the standardised start is beaten
    assert summary["val_nll_nats_per_dim"] == pytest.approx(best_val, rel=1e-12)
    # the run's model is the best epoch's, not the last one's
    loaded = load_vector_run(run)
    best = {k: v.cpu() for k, v in loaded.model.state_dict().items()}
    assert all(torch.equal(best[k], ckpt["best_model"][k]) for k in best)
    assert any(not torch.equal(ckpt["model"][k], ckpt["best_model"][k]) for k in best)
    _, val = split_rows(torch.from_numpy(np.load(data)), 0.3)
    assert float(-loaded.log_prob(val).mean() / 2) == pytest.approx(best_val, rel=1e-9)

    # a resume of a stopped run trains no further
    assert run_cli("train", "--data", data, "--out", run, *options, "--resume") == 0
    capsys.readouterr()
    again = load_checkpoint(run / "checkpoint.pt")
    assert again["epoch"] == ckpt["epoch"] and again["best_epoch"] == ckpt["best_epoch"]
    assert all(torch.equal(again["model"][k], ckpt["model"][k]) for k in ckpt["model"])
    assert read_metrics(run) == rows
    assert json.loads((run / "summary.json").read_text())["stopped_early"]


@pytest.mark.usefixtures("one_thread")
def test_a_start_no_epoch_beats_stays_the_best(tmp_path):
    # validated on the training rows reflected through their mean: the Gaussian start scores them
    # as it scores the training rows, and all the flow learns of the banana's bend hurts them
    rows = banana(200, 0)
    patience = 3
    model, summary = train_vectors(rows, tmp_path / "run", {"epochs": 20, "patience": patience, "eval_every": 1,
                                                            "lr": 1e-2, "batch_size": 64, "dtype": "float64"},
                                   model_spec={"num_blocks": 2}, val_data=2 * rows.mean(0) - rows, progress=False)
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    start_nll = -ckpt["start_val_log_prob"] / 2
    assert summary["data_init"] == "gaussian"
    assert all(row["val_nats_per_dim"] > start_nll for row in read_metrics(tmp_path / "run"))
    assert summary["best_epoch"] == ckpt["best_epoch"] == 0
    assert summary["stopped_early"] and summary["epochs"] == ckpt["epoch"] == patience
    assert summary["val_nll_nats_per_dim"] == start_nll
    assert "WORSE" not in summary["comparison"]  # the kept start is the Gaussian, up to the start's ridge
    weights = {k: v.cpu() for k, v in model.state_dict().items()}
    assert all(torch.equal(weights[k], ckpt["best_model"][k]) for k in weights)
    assert any(not torch.equal(ckpt["model"][k], ckpt["best_model"][k]) for k in weights)


# -- spline activations ----------------------------------------------------------------------


def test_lunet_train_with_spline_activations_records_them_and_evaluates(tmp_path, capsys):
    """``--activation spline`` on own data: the spec in the checkpoint names it, the loaded model
    has splines, and its figure is the one ``lunet evaluate`` reports."""
    data, test = (write_npy(tmp_path / "train.npy", make_rows(400, 0)),
                  write_npy(tmp_path / "test.npy", make_rows(100, 1)))
    assert train(data, tmp_path / "run", "--activation", "spline") == 0
    model, _ = load_model(tmp_path / "run" / "checkpoint.pt")
    assert model.activation == "spline" and all(isinstance(a, MonotoneSpline) for a in model.activations)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--data", str(test)]) == 0
    printed = capsys.readouterr().out
    assert f"{best_nll_per_dim(tmp_path / 'run', make_rows(100, 1)):.4f}" in printed


def test_the_default_depth_is_chosen_from_the_rows_and_a_resume_keeps_the_runs_own(tmp_path, capsys):
    assert (vector_num_blocks(DEEP_VECTOR_ROWS - 1), vector_num_blocks(DEEP_VECTOR_ROWS)) == (4, 8)
    for rows, blocks in ((DEEP_VECTOR_ROWS - 1, 4), (DEEP_VECTOR_ROWS, 8)):  # rows before the validation split
        data = write_npy(tmp_path / f"rows-{rows}.npy", make_rows(rows, 1))
        run = tmp_path / f"run-{rows}"
        assert run_cli("train", "--data", data, "--out", run, "--epochs", "1", "--no-progress") == 0
        assert load_checkpoint(run / "checkpoint.pt")["model_spec"]["num_blocks"] == blocks
    # a run that began with a depth of its own (or with the defaults of an earlier version) resumes with it
    data = make_rows(DEEP_VECTOR_ROWS, 2)
    run = tmp_path / "three"
    train_vectors(data, run, {"epochs": 1}, model_spec={"num_blocks": 3}, progress=False)
    model, summary = train_vectors(data, run, {"epochs": 2}, resume=True, progress=False)
    assert model.num_blocks == 3 and summary["epochs"] == 2
    capsys.readouterr()
