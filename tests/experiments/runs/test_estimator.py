"""The scikit-learn-style estimator of table rows: ``lunet.experiments.DensityEstimator``."""

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from lunet.experiments import DensityEstimator
from lunet.experiments.runs.vector_run import evaluate_vectors

pytestmark = pytest.mark.usefixtures("one_thread")

CONFIG = {"epochs": 4, "batch_size": 64, "dtype": "float64"}
SPEC = {"num_blocks": 2}


def banana(n, seed):
    """(n, 3) float64: x0 ~ N(0, 1), x1 = x0² + 0.5 N(0, 1), x2 = a count."""
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(n)
    return np.stack([x0, x0**2 + 0.5 * rng.standard_normal(n), rng.poisson(2.0, n).astype(float)], axis=1)


@pytest.fixture(scope="module")
def fitted():
    """An estimator fitted without a run folder, and the temporary folders made while it was fitted."""
    made = []
    real = tempfile.TemporaryDirectory

    class Recorded(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(Path(self.name))

    tempfile.TemporaryDirectory = Recorded
    try:
        estimator = DensityEstimator(config=CONFIG, model_spec=SPEC).fit(banana(200, 0))
    finally:
        tempfile.TemporaryDirectory = real
    return estimator, made


def test_fit_keeps_no_run_folder_and_reports_the_gaussian_beside_the_flow(fitted):
    estimator, made = fitted
    assert len(made) == 1 and not made[0].exists()  # it trained in a temporary folder, removed since
    assert estimator.n_features_in_ == 3
    assert isinstance(estimator.flow_, torch.nn.Module) and not estimator.flow_.training
    summary = estimator.summary_
    assert summary["num_train"] + summary["num_val"] == 200 and summary["features"] == 3
    assert np.isfinite(summary["gaussian_val_nll_nats_per_dim"]) and "Gaussian" in summary["comparison"]
    assert "fitted on 3 columns" in repr(estimator)


def test_score_samples_and_score_agree(fitted):
    estimator, _ = fitted
    x = banana(37, 1)
    scores = estimator.score_samples(x)
    assert isinstance(scores, np.ndarray) and scores.shape == (37,) and scores.dtype == np.float64
    assert np.isfinite(scores).all()
    assert estimator.score(x) == pytest.approx(scores.mean(), rel=1e-12)
    assert np.array_equal(estimator.score_samples(torch.from_numpy(x)), scores)  # a tensor as an array
    with pytest.raises(ValueError, match="X has 2 features per row but the run models 3"):
        estimator.score_samples(x[:, :2])


def test_sample_shape_seed_and_integer_column(fitted):
    estimator, _ = fitted
    drawn = estimator.sample(50)
    assert isinstance(drawn, np.ndarray) and drawn.shape == (50, 3) and np.isfinite(drawn).all()
    assert np.array_equal(estimator.sample(50, random_state=0), drawn)
    assert not np.array_equal(estimator.sample(50, random_state=1), drawn)
    assert np.all(drawn[:, 2] == np.floor(drawn[:, 2]))  # the count column comes back as whole numbers
    assert estimator.sample(50, temperature=0.5).shape == (50, 3)


def test_save_and_load_give_the_same_estimator(fitted, tmp_path):
    estimator, _ = fitted
    path = estimator.save(tmp_path / "estimator.pt")
    assert path.is_file()
    loaded = DensityEstimator.load(path)
    x = banana(40, 2)
    assert np.array_equal(loaded.score_samples(x), estimator.score_samples(x))
    assert np.array_equal(loaded.sample(30, random_state=4), estimator.sample(30, random_state=4))
    assert loaded.n_features_in_ == 3
    assert loaded.fitted.reference is not None
    assert torch.equal(loaded.fitted.reference.low, estimator.fitted.reference.low)


def test_an_unfitted_estimator_says_to_fit_it_first(tmp_path):
    estimator = DensityEstimator()
    for call in (lambda: estimator.score_samples(banana(5, 3)), lambda: estimator.score(banana(5, 3)),
                 lambda: estimator.sample(5), lambda: estimator.save(tmp_path / "e.pt"),
                 lambda: estimator.n_features_in_):
        with pytest.raises(ValueError, match=r"not fitted yet: call fit\(X\) first"):
            call()
    assert not (tmp_path / "e.pt").exists()
    assert "not fitted" in repr(estimator)


def test_fit_with_a_run_dir_keeps_a_run_that_lunet_evaluate_reads(tmp_path, capsys):
    rows = banana(150, 5)
    run = tmp_path / "run"
    estimator = DensityEstimator(config=CONFIG, model_spec=SPEC, drop_constant=True, run_dir=run)
    rows[:, 1] = 3.5  # a constant column: dropped, named and given back
    assert estimator.fit(rows) is estimator
    assert {"run.json", "checkpoint.pt", "metrics.jsonl", "summary.json", "samples.png"} <= \
        {p.name for p in run.iterdir()}
    record = json.loads((run / "run.json").read_text())
    assert record["columns"]["dropped"] == [[1, 3.5]] and record["features"] == 2
    assert estimator.n_features_in_ == 3
    assert np.all(estimator.sample(20)[:, 1] == 3.5)

    test = banana(30, 6)
    np.save(tmp_path / "test.npy", test)
    assert run_cli("evaluate", run, "--data", tmp_path / "test.npy", "--json", tmp_path / "e.json") == 0
    capsys.readouterr()
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["nll_nats_per_vector"] == pytest.approx(-estimator.score(test), rel=1e-12)
    assert evaluate_vectors(run, test)["nll_nats_per_dim"] == result["nll_nats_per_dim"]

    # lunet export of the run loads as an estimator too
    assert run_cli("export", run, "--out", tmp_path / "model.pt") == 0
    capsys.readouterr()
    assert np.array_equal(DensityEstimator.load(tmp_path / "model.pt").score_samples(test),
                          estimator.score_samples(test))
