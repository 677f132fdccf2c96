"""Training, evaluating and sampling on users' own feature vectors (``lunet train --data FILE``)."""

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from conftest import read_metrics
from lunet.cli import main
from lunet.experiments.config.models import build_model
from lunet.experiments.config.presets import vector_lunet_spec
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.runs.vector_run import evaluate_vectors
from lunet.experiments.runs.vectors import train_vectors
from lunet.experiments.store.checkpoint import load_checkpoint, load_model

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
