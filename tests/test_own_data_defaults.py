"""Own data done right: the defaults, the Gaussian baseline beside every run, early
stopping, the report on samples, per-row log-likelihoods and the messages."""

import json
import math
import re

import numpy as np
import pytest
import torch

from conftest import mixture_trainer, one_line_error, read_metrics, run_cli
from lunet.baselines.gaussian import FullCovarianceGaussian
from lunet.experiments.config.presets import vector_lunet_spec
from lunet.experiments.config.training import VECTOR_PATIENCE, vector_train_config
from lunet.experiments.runs.vector_report import (
    FAR_RANGES,
    Reference,
    comparison_line,
    describe_samples,
    sample_report,
)
from lunet.experiments.runs.vector_run import evaluate_vectors, load_vector_run
from lunet.experiments.runs.vectors import split_rows, train_vectors
from lunet.experiments.store.checkpoint import load_checkpoint
from lunet.experiments.store.folder import RunFolder
from lunet.experiments.store.record import IMAGES, ImageRunSettings, RunRecord, write_run

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["--blocks", "2", "--batch-size", "64", "--dtype", "float64", "--no-progress"]


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


def write_npy(path, rows):
    np.save(path, rows)
    return path


def closed_form_log_density(points, mean, cov):
    """log N(points; mean, cov) by the formula, in numpy."""
    diff = points - mean
    maha = np.einsum("ni,ij,nj->n", diff, np.linalg.inv(cov), diff)
    return -0.5 * (points.shape[1] * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1] + maha)


def gaussian_nll_per_dim(train_rows, rows):
    """The baseline's NLL per dimension of ``rows`` under the Gaussian of ``train_rows`` (ridge 1e-6), by formula."""
    mean = train_rows.mean(0)
    cov = np.cov(train_rows.T)
    cov = cov + np.diag(1e-6 * np.diag(cov))
    return float(-closed_form_log_density(rows, mean, cov).mean() / rows.shape[1])


# -- the Gaussian baseline ---------------------------------------------------------------------


@pytest.mark.parametrize("ridge", [1e-6, 0.05])
def test_the_gaussian_baseline_is_the_closed_form_fit(ridge):
    rng = np.random.default_rng(0)
    mix = np.array([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [0.3, -1.0, 3.0]])
    x = rng.standard_normal((40, 3)) @ mix + np.array([1.0, -2.0, 5.0])
    fitted = FullCovarianceGaussian.fit(torch.from_numpy(x), ridge=ridge)
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / (len(x) - 1)  # the unbiased covariance
    cov += np.diag(ridge * np.diag(cov))  # the ridge: a share of each feature's own variance
    np.testing.assert_allclose(fitted.mean.numpy(), mean, rtol=1e-12)
    tril = fitted.scale_tril.numpy()
    assert fitted.scale_tril.dtype == torch.float64
    assert np.array_equal(np.triu(tril, 1), np.zeros((3, 3))) and (np.diag(tril) > 0).all()
    np.testing.assert_allclose(tril @ tril.T, cov, rtol=1e-10)
    points = 3 * rng.standard_normal((7, 3))
    np.testing.assert_allclose(fitted.log_prob(torch.from_numpy(points)).numpy(),
                               closed_form_log_density(points, mean, cov), rtol=1e-10)


def test_the_reference_nll_is_the_mean_closed_form_nll_per_dimension():
    x, test = banana(60, 1, columns=3), banana(25, 2, columns=3)
    reference = Reference.fit(torch.from_numpy(x))
    assert reference.nll_per_dim(torch.from_numpy(test)) == pytest.approx(gaussian_nll_per_dim(x, test), rel=1e-10)
    assert torch.equal(reference.low, torch.from_numpy(x.min(0))) and torch.equal(reference.high,
                                                                                  torch.from_numpy(x.max(0)))


def test_the_range_is_the_training_rows_and_the_gaussian_that_of_the_rows_given_to_fit():
    train = torch.from_numpy(np.random.default_rng(2).integers(0, 6, (50, 2)).astype(float))
    noisy = train + torch.rand(train.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    reference = Reference.fit(train, noisy)
    assert torch.equal(reference.low, train.min(0).values) and torch.equal(reference.high, train.max(0).values)
    assert torch.allclose(reference.gaussian.mean, noisy.mean(0), rtol=1e-12)
    assert not torch.allclose(reference.gaussian.mean, train.mean(0), rtol=1e-3)


def test_a_constant_feature_gets_the_ridge_of_the_mean_variance():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal((30, 2)) * [1.0, 4.0], np.full((30, 1), 7.0)], axis=1)
    fitted = FullCovarianceGaussian.fit(torch.from_numpy(x), ridge=1e-3)
    var = np.var(x, axis=0, ddof=1)
    cov = fitted.scale_tril.numpy() @ fitted.scale_tril.numpy().T
    assert cov[2, 2] == pytest.approx(1e-3 * var.mean(), rel=1e-10)
    assert cov[0, 0] == pytest.approx(var[0] * (1 + 1e-3), rel=1e-10)


@pytest.mark.parametrize("scale", [1e-4, 1e3])
def test_the_gaussian_baseline_does_not_depend_on_the_columns_scales(scale):
    x, test = banana(80, 4, columns=3), banana(30, 5, columns=3)
    base = Reference.fit(torch.from_numpy(x)).nll_per_dim(torch.from_numpy(test))
    factor = np.array([1.0, scale, 1.0])
    scaled = Reference.fit(torch.from_numpy(x * factor)).nll_per_dim(torch.from_numpy(test * factor))
    # y = c x in one of D columns has density p(x) / c: ln c / D more nats per dimension, exactly
    assert scaled - base == pytest.approx(math.log(scale) / 3, abs=1e-9)


def _damage(entries, what):
    if what == "mean of the wrong shape":
        entries["gaussian_mean"] = entries["gaussian_mean"][:-1]
    elif what == "a NaN in the range":
        entries["low"][0] = math.nan
    elif what == "an infinite factor":
        entries["gaussian_scale_tril"][1, 0] = math.inf
    elif what == "a factor that is not triangular":
        entries["gaussian_scale_tril"][0, 2] = 0.5
    elif what == "a non-positive diagonal":
        entries["gaussian_scale_tril"][1, 1] = -1.0
    elif what == "a low above its high":
        entries["low"][2] = entries["high"][2] + 1.0
    elif what == "a list, not a tensor":
        entries["high"] = entries["high"].tolist()
    elif what == "integers":
        entries["gaussian_mean"] = entries["gaussian_mean"].long()
    elif what == "a key missing":
        del entries["low"]
    elif what == "not a mapping":
        entries = list(entries.values())
    return entries


DAMAGES = ["mean of the wrong shape", "a NaN in the range", "an infinite factor", "a factor that is not triangular",
           "a non-positive diagonal", "a low above its high", "a list, not a tensor", "integers", "a key missing",
           "not a mapping"]


@pytest.mark.parametrize("what", DAMAGES)
def test_a_damaged_reference_is_refused_naming_its_source(what):
    reference = Reference.fit(torch.from_numpy(banana(50, 6, columns=3)))
    entries = {k: v.clone() for k, v in reference.entries().items()}
    source = "runs/damaged/checkpoint.pt"
    with pytest.raises(ValueError, match=re.escape(source)):
        Reference.from_entries(_damage(entries, what), 3, source)


def test_sound_entries_give_the_reference_back_and_none_gives_none():
    x, test = torch.from_numpy(banana(50, 7, columns=3)), torch.from_numpy(banana(20, 8, columns=3))
    reference = Reference.fit(x)
    again = Reference.from_entries(reference.entries(), 3, "here")
    assert again.nll_per_dim(test) == reference.nll_per_dim(test)
    assert torch.equal(again.low, reference.low) and torch.equal(again.high, reference.high)
    assert Reference.from_entries(None, 3, "here") is None
    with pytest.raises(ValueError, match="here"):
        Reference.from_entries(reference.entries(), 4, "here")  # a reference of another width


# -- the report on samples ------------------------------------------------------------------


def test_sample_report_on_hand_made_samples():
    low, high = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 2.0])
    samples = torch.tensor([
        [0.5, 1.0],  # inside
        [0.0, 2.0],  # on the edges: inside
        [1.5, 1.0],  # outside by half a range: not far
        [0.5, 2.0 + 2.0 * FAR_RANGES],  # exactly one range beyond: outside, not far
        [0.5, 5.0],  # 1.5 ranges beyond: far
        [-1.5, 1.0],  # 1.5 ranges below: far
        [math.nan, 1.0],  # NaN counts as far
        [0.2, 0.3],  # inside
    ], dtype=torch.float64)
    report = sample_report(samples, low, high)
    assert report["num_samples"] == 8
    assert report["outside_range_fraction"] == 5 / 8
    assert report["far_outside_fraction"] == 3 / 8
    assert report["largest_excess_ranges"] == math.inf  # the NaN row
    finite = sample_report(samples[:6], low, high)
    assert (finite["outside_range_fraction"], finite["far_outside_fraction"]) == (4 / 6, 2 / 6)
    assert finite["largest_excess_ranges"] == pytest.approx(1.5)
    inside = sample_report(samples[[0, 1, 7]], low, high)
    assert (inside["outside_range_fraction"], inside["far_outside_fraction"], inside["largest_excess_ranges"]) == \
        (0.0, 0.0, 0.0)
    line = describe_samples(report)
    assert "62.50 % of 8 samples" in line and "37.50 % more than one range beyond" in line


# -- the messages ------------------------------------------------------------------------------


def test_comparison_line_says_when_the_flow_is_worse_and_what_to_try():
    better = comparison_line(0.75, 1.25, "validation")
    assert "WORSE" not in better
    assert better.startswith("validation NLL 0.7500 nats/dim") and "1.2500" in better and "better by 0.5000" in better
    worse = comparison_line(1.5, 1.25, "test")
    assert worse.startswith("test NLL 1.5000 nats/dim is WORSE than the full-covariance Gaussian's 1.2500")
    assert "by 0.2500" in worse and "try" in worse and "--blocks 2" in worse and "--data-init gaussian" in worse
    assert "WORSE" not in comparison_line(1.25, 1.25, "test")  # a tie is no loss
    # a hair worse, the same at the precision shown (a Gaussian start kept): no WORSE "by 0.0000"
    tie = comparison_line(1.2500031, 1.25, "validation")
    assert "WORSE" not in tie and "the same as the full-covariance Gaussian's" in tie and "no better" in tie
    assert "WORSE" in comparison_line(1.2501, 1.25, "validation")


def test_a_flow_worse_than_the_gaussian_is_reported_with_the_word_and_advice(tmp_path, capsys):
    # a standardised start is a diagonal Gaussian; at a learning rate of 1e-6 it cannot learn the
    # correlation of the first two columns, which the full-covariance Gaussian has
    data = write_npy(tmp_path / "train.npy", correlated(200, 0))
    test = write_npy(tmp_path / "test.npy", correlated(100, 1))
    run = tmp_path / "run"
    assert run_cli("train", "--data", data, "--out", run, "--data-init", "standardize", "--lr", "1e-6",
                   "--epochs", "1", *FAST) == 0
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


# -- early stopping -----------------------------------------------------------------------------


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


# -- per-row log-likelihoods -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """A two-epoch run on a banana of width 3 (float64), its training file and a test file."""
    folder = tmp_path_factory.mktemp("rows")
    data = write_npy(folder / "train.npy", banana(200, 10, columns=3))
    test = write_npy(folder / "test.npy", banana(57, 11, columns=3))
    assert run_cli("train", "--data", data, "--out", folder / "run", "--epochs", "2", *FAST) == 0
    return folder / "run", data, test


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


def test_per_row_output_is_refused_for_an_image_run(tmp_path, capsys):
    folder = RunFolder(tmp_path / "images")
    write_run(folder, RunRecord(IMAGES, ImageRunSettings()))
    assert run_cli("evaluate", folder.path, "--per-row", tmp_path / "rows.csv") == 2
    line = one_line_error(capsys, "evaluate")
    assert "--per-row applies to runs on own data" in line
    assert not (tmp_path / "rows.csv").exists()


def test_with_early_stopping_a_validation_far_below_the_start_stops_the_run_with_the_best_kept(tmp_path):
    spec = {"name": "lunet", "features": 2, "num_blocks": 3}
    trainer = mixture_trainer(tmp_path, 1, model_spec=spec, patience=2)[0]
    trainer.fit()
    best = {k: v.clone() for k, v in trainer.state.best_state.items()}
    with torch.no_grad():
        trainer.model.blocks[-1].bias.add_(1e4)  # finite, and far worse than the start: no divergence here
    trainer.config.epochs = 10
    trainer.fit()
    assert trainer.stopped_early and trainer.state.epoch == 3 and trainer.state.best_epoch == 1
    kept = load_checkpoint(tmp_path / "checkpoint.pt")
    assert "diverged" not in kept and all(torch.equal(kept["best_model"][k], v) for k, v in best.items())
