"""Own data with a condition: ``lunet train --data X --context C``, evaluate and sample under contexts,
labels and vectors, the refusals, resume, the export and the estimator."""

import json

import numpy as np
import pytest
import torch

from conftest import read_metrics
from lunet import ConditionalLUNet
from lunet.cli import main
from lunet.experiments import DensityEstimator
from lunet.experiments.runs.vector_run import VectorRun, evaluate_vectors, load_vector_run
from lunet.experiments.runs.vectors import train_vectors
from lunet.experiments.store.checkpoint import load_checkpoint, load_model

FAST = ["--blocks", "2", "--batch-size", "64", "--dtype", "float64", "--no-progress"]


def shifted_rows(n, seed):
    """x = (c, -c) + 0.1 N(0, I) for c ~ U[-3, 3]: rows (n, 2), contexts (n, 1)."""
    rng = np.random.default_rng(seed)
    c = rng.uniform(-3, 3, size=(n, 1))
    return np.concatenate([c, -c], 1) + 0.1 * rng.standard_normal((n, 2)), c


def labelled_rows(n, seed):
    """x = 2 (k, k) + N(0, I) for labels k in 0..2: rows (n, 2), labels (n, 1)."""
    rng = np.random.default_rng(seed)
    k = rng.integers(0, 3, size=(n, 1))
    return 2.0 * np.concatenate([k, k], 1) + rng.standard_normal((n, 2)), k


def save(folder, name, array):
    path = folder / name
    np.save(path, array)
    return path


def write_csv(path, rows, header):
    path.write_text("\n".join([",".join(header)] + [",".join(repr(float(v)) for v in row) for row in rows]) + "\n")
    return path


def train(data, out, *options, epochs=12):
    return main(["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), "--eval-every", "4",
                 *FAST, *options])


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    """A conditional run and an unconditional one on the same rows, and their test files."""
    folder = tmp_path_factory.mktemp("context")
    x, c = shifted_rows(400, 0)
    tx, tc = shifted_rows(200, 1)
    files = {name: save(folder, f"{name}.npy", array)
             for name, array in (("x", x), ("c", c), ("test_x", tx), ("test_c", tc))}
    for run, extra in (("cond", ["--context", str(files["c"])]), ("plain", [])):
        assert train(files["x"], folder / run, *extra, "--seed", "1", "--lr", "3e-3", epochs=60) == 0
    return folder, files


def test_the_condition_is_learned_and_beats_the_run_without_it(shifted, capsys):
    folder, files = shifted
    capsys.readouterr()
    figures = {}
    for run, extra in (("cond", ["--context", str(files["test_c"])]), ("plain", [])):
        report = folder / f"{run}.json"
        assert main(["evaluate", str(folder / run), "--data", str(files["test_x"]), "--json", str(report),
                     *extra]) == 0
        figures[run] = json.loads(report.read_text())
    printed = capsys.readouterr().out
    cond, plain = figures["cond"], figures["plain"]
    # x given c spreads 0.1 per coordinate, x alone over the range of c: more than a nat/dim apart
    assert cond["nll_nats_per_dim"] < plain["nll_nats_per_dim"] - 1.0
    assert cond["baseline"] == "the conditional Gaussian (linear in c)"
    assert plain["baseline"] == "the full-covariance Gaussian"
    assert cond["context_file"] == str(files["test_c"].resolve()) and "context_file" not in plain
    assert f"given {files['test_c']}: test NLL {cond['nll_nats_per_dim']:.4f}" in printed
    # evaluate's figure is the checkpoint's model scored here
    model, _ = load_model(folder / "cond" / "checkpoint.pt")
    assert isinstance(model, ConditionalLUNet)
    with torch.no_grad():
        here = -model.log_prob(torch.from_numpy(np.load(files["test_x"])),
                               torch.from_numpy(np.load(files["test_c"]))).mean() / 2
    assert cond["nll_nats_per_dim"] == pytest.approx(float(here), rel=1e-9)

    record = json.loads((folder / "cond" / "run.json").read_text())
    assert record["context"] == {"width": 1, "kind": "vectors", "num_classes": None, "names": None}
    assert record["context_file"] == str(files["c"].resolve()) and record["model"]["name"] == "conditional_lunet"
    assert "context" not in json.loads((folder / "plain" / "run.json").read_text())
    summary = json.loads((folder / "cond" / "summary.json").read_text())
    assert summary["context"].startswith("contexts: vectors of width 1")
    assert (folder / "cond" / "samples.png").is_file() and (folder / "cond" / "curves.png").is_file()


def test_per_row_scores_and_samples_under_each_context(shifted, capsys):
    folder, files = shifted
    scores = folder / "scores.csv"
    assert main(["evaluate", str(folder / "cond"), "--data", str(files["test_x"]), "--context", str(files["test_c"]),
                 "--per-row", str(scores)]) == 0
    lp = np.loadtxt(scores, skiprows=1)
    expected = evaluate_vectors(folder / "cond", np.load(files["test_x"]), context=np.load(files["test_c"]),
                                keep_rows=True)["log_prob"].numpy()
    np.testing.assert_allclose(lp, expected, rtol=1e-12)
    assert "log p(x | c) of each row" in capsys.readouterr().out

    where = save(folder, "where.npy", np.array([[-2.0], [0.0], [2.5]]))
    out = folder / "drawn.npy"
    assert main(["sample", str(folder / "cond"), "--context", str(where), "--num", "50", "--out", str(out)]) == 0
    assert "150 samples of width 2, 50 under each of the 3 rows" in capsys.readouterr().out
    drawn = np.load(out).reshape(3, 50, 2)  # context by context
    centres = drawn.mean(axis=1)
    np.testing.assert_allclose(centres, [[-2.0, 2.0], [0.0, 0.0], [2.5, -2.5]], atol=0.3)
    # one draw per row by default
    assert main(["sample", str(folder / "cond"), "--context", str(where), "--out", str(out)]) == 0
    assert np.load(out).shape == (3, 2)


def test_labels_number_their_classes_from_the_training_rows(tmp_path, capsys):
    x, k = labelled_rows(300, 2)
    data = write_csv(tmp_path / "x.csv", x, ["a", "b"])
    labels = write_csv(tmp_path / "k.csv", k, ["digit"])
    assert train(data, tmp_path / "run", "--context", str(labels), "--lr", "3e-3", epochs=40) == 0
    printed = capsys.readouterr().out
    assert "contexts: class labels 0..2 (one column of whole numbers), embedded in 3 dimensions" in printed
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["context"] == {"width": 1, "kind": "labels", "num_classes": 3, "names": ["digit"]}
    assert record["model"]["num_classes"] == 3 and record["model"]["context_features"] == 3
    run = load_vector_run(tmp_path / "run")
    drawn = run.sample(200, context=np.array([[0], [2]]))
    assert drawn.shape == (400, 2)
    assert float(drawn[200:].mean() - drawn[:200].mean()) == pytest.approx(4.0, abs=1.0)
    with pytest.raises(ValueError, match=r"k4: class labels must be the run's classes 0..2; row 1 holds 3 \(1 such"):
        run.log_prob(x[:3], context=np.array([[0], [3], [1]]), context_name="k4")
    # the same labels read as numbers make another run, which resume refuses
    assert train(data, tmp_path / "run", "--context", str(labels), "--context-kind", "vectors", "--resume",
                 "--lr", "3e-3", epochs=40) == 2
    assert "describes another run" in capsys.readouterr().err


MISMATCHES = [
    (["train", "--data", "{x}", "--context", "{short}", "--out", "{tmp}/new"], "short.npy has 90 rows, {x} has 400"),
    (["train", "--data", "{x}", "--context", "{pair}", "--context-kind", "labels", "--out", "{tmp}/new"],
     "pair.npy has 2 columns; class labels are one column of whole numbers (give --context-kind vectors"),
    (["train", "--data", "{x}", "--context", "{flat}", "--out", "{tmp}/new"],
     "flat.npy: context column 1 holds one value in every training row"),
    (["train", "--data", "{x}", "--context", "{c}", "--activation", "spline", "--out", "{tmp}/new"],
     "--activation applies to runs without --context"),
    (["train", "--data", "{x}", "--context-kind", "labels", "--out", "{tmp}/new"], "give --context FILE too"),
    (["evaluate", "{cond}", "--data", "{test_x}"], "models p(x | c): give the contexts"),
    (["evaluate", "{cond}", "--data", "{test_x}", "--context", "{pair}"],
     "pair.npy has 2 columns per row but the run's contexts have 1"),
    (["evaluate", "{cond}", "--data", "{test_x}", "--context", "{short}"], "short.npy has 90 rows, {test_x} has 200"),
    (["evaluate", "{plain}", "--data", "{test_x}", "--context", "{test_c}"], "the run models p(x) without a context"),
    (["sample", "{cond}", "--out", "{tmp}/s.npy"], "models p(x | c): give the contexts to sample under"),
    (["sample", "{cond}", "--context", "{test_c}", "--num", "600000", "--out", "{tmp}/s.npy"],
     "--num 600,000 samples under each of 200 contexts, of width 2, are 240,000,000 numbers, more than the "
     "100,000,000 one call draws; give --num at most 250,000"),
    (["sample", "{cond}", "--context", "{test_c}", "--out", "{c}"], "the run's training contexts"),
]


@pytest.mark.parametrize("argv, fragment", MISMATCHES, ids=[
    "train-rows", "labels-of-two-columns", "constant-context", "spline-with-context", "kind-without-context",
    "evaluate-without-context", "evaluate-width", "evaluate-rows", "context-for-plain-run", "sample-without-context",
    "sample-too-many", "sample-over-training-contexts"])
def test_a_mismatch_of_data_and_contexts_is_refused_naming_file_and_figure(shifted, tmp_path, capsys, argv,
                                                                             fragment):
    folder, files = shifted
    x = np.load(files["x"])
    names = {"short": save(tmp_path, "short.npy", np.zeros((90, 1))),
             "pair": save(tmp_path, "pair.npy", np.random.default_rng(0).random((x.shape[0], 2))),
             "flat": save(tmp_path, "flat.npy", np.stack([np.arange(400.0), np.ones(400)], 1)),
             "cond": folder / "cond", "plain": folder / "plain", "tmp": tmp_path, **files}
    fragment = fragment.format(**names)
    capsys.readouterr()
    code = main([a.format(**names) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "new").exists()


def test_resume_with_contexts_continues_and_refuses_other_contexts(tmp_path, capsys):
    x, c = shifted_rows(240, 3)
    data, context = save(tmp_path, "x.npy", x), save(tmp_path, "c.npy", c)
    options = ["--context", str(context), "--schedule", "constant"]
    assert train(data, tmp_path / "full", *options, epochs=8) == 0
    assert train(data, tmp_path / "part", *options, epochs=4) == 0
    assert train(data, tmp_path / "part", *options, "--resume", epochs=8) == 0
    assert [r["epoch"] for r in read_metrics(tmp_path / "part")] == [4, 8]
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    part = load_checkpoint(tmp_path / "part" / "checkpoint.pt")["model"]
    assert full.keys() == part.keys() and all(torch.equal(full[k], part[k]) for k in full)
    other = save(tmp_path, "other.npy", c[::-1].copy())
    capsys.readouterr()
    assert train(data, tmp_path / "part", "--context", str(other), "--schedule", "constant", "--resume",
                 epochs=12) == 2
    assert "checkpoint.pt was trained on" in capsys.readouterr().err


def test_export_and_the_estimator_take_contexts(shifted, tmp_path):
    folder, files = shifted
    exported = tmp_path / "model.pt"
    assert main(["export", str(folder / "cond"), "--out", str(exported)]) == 0
    model, ckpt = load_model(exported)
    assert isinstance(model, ConditionalLUNet) and "context_file" not in ckpt["run"]
    run = VectorRun.from_export(exported)
    tx, tc = np.load(files["test_x"]), np.load(files["test_c"])
    np.testing.assert_allclose(run.log_prob(tx, context=tc).numpy(),
                               load_vector_run(folder / "cond").log_prob(tx, context=tc).numpy(), rtol=1e-12)
    assert run.reference is not None and run.reference.coef is not None

    x, c = shifted_rows(300, 4)
    est = DensityEstimator(config={"epochs": 3, "eval_every": 1}, model_spec={"num_blocks": 2}).fit(x, context=c)
    assert est.score_samples(tx, context=tc).shape == (200,)
    assert est.sample(4, context=tc[:5]).shape == (20, 2)
    est.save(tmp_path / "est.pt")
    again = DensityEstimator.load(tmp_path / "est.pt")
    assert again.score(tx, context=tc) == pytest.approx(est.score(tx, context=tc), rel=1e-12)
    with pytest.raises(ValueError, match="models p\\(x \\| c\\): give the contexts"):
        est.score_samples(tx)


def test_python_runs_validate_on_rows_and_contexts_given_apart(tmp_path):
    x, c = shifted_rows(200, 5)
    vx, vc = shifted_rows(50, 6)
    config = {"epochs": 2, "batch_size": 64, "dtype": "float64"}
    model, summary = train_vectors(x, tmp_path / "run", config, model_spec={"num_blocks": 2}, val_data=vx,
                                   val_context=vc, context=c, progress=False)
    assert (summary["num_train"], summary["num_val"]) == (200, 50)
    with torch.no_grad():
        val_nll = float(-model.log_prob(torch.from_numpy(vx), torch.from_numpy(vc)).mean() / 2)
    assert summary["val_nll_nats_per_dim"] == pytest.approx(val_nll, rel=1e-9)
    with pytest.raises(ValueError, match="val_data of a conditional run needs its contexts"):
        train_vectors(x, tmp_path / "other", config, val_data=vx, context=c, progress=False)
    with pytest.raises(ValueError, match="val_context has 49 rows, val_data has 50"):
        train_vectors(x, tmp_path / "other", config, val_data=vx, val_context=vc[1:], context=c, progress=False)
    assert not (tmp_path / "other").exists()
