"""Out-of-distribution detection: the rank statistics against brute force, the scores, the
Gaussian baseline, and ``lunet ood`` end to end on small generated IDX files."""

from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch

from conftest import write_idx
from lunet.cli import main
from lunet.experiments.data import mnist as data
from lunet.experiments.data.preprocess import ImagePreprocessor, bits_per_dim
from lunet.experiments.evaluation.evaluate import image_log_probs
from lunet.experiments.evaluation.ood import (
    aupr,
    auroc,
    class_log_prior,
    compressed_bits_per_dim,
    detection_metrics,
    fpr_at_tpr,
    ood_run,
)
from lunet.experiments.runs.images import load_run_models

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --- the metrics, against brute force ------------------------------------------------


def brute_auroc(inside: torch.Tensor, outside: torch.Tensor) -> float:
    won = sum(float(o > i) + 0.5 * float(o == i) for o in outside.tolist() for i in inside.tolist())
    return won / (inside.numel() * outside.numel())


def brute_thresholds(inside: torch.Tensor, outside: torch.Tensor) -> list[tuple[float, float, float]]:
    """(threshold, TPR, FPR) for every distinct score, flagging scores at or above the threshold."""
    rows = []
    for t in sorted(set(inside.tolist()) | set(outside.tolist()), reverse=True):
        rows.append((t, float((outside >= t).double().mean()), float((inside >= t).double().mean())))
    return rows


def brute_aupr(inside: torch.Tensor, outside: torch.Tensor) -> float:
    total, last_recall = 0.0, 0.0
    for t, tpr, _ in brute_thresholds(inside, outside):
        tp, fp = int((outside >= t).sum()), int((inside >= t).sum())
        total += (tpr - last_recall) * tp / (tp + fp)
        last_recall = tpr
    return total


def brute_fpr(inside: torch.Tensor, outside: torch.Tensor, level: float) -> float:
    return next(fpr for _, tpr, fpr in brute_thresholds(inside, outside) if tpr >= level)


@pytest.mark.parametrize("seed", range(6))
def test_metrics_match_brute_force_on_random_scores_with_ties(seed):
    gen = torch.Generator().manual_seed(seed)
    n_in, n_out = 37 + seed, 23 + 2 * seed
    # rounding to a coarse grid makes many ties, within and across the two sets
    inside = torch.round(torch.randn(n_in, generator=gen) * 3) / 2
    outside = torch.round((torch.randn(n_out, generator=gen) + 0.7 * seed / 5) * 3) / 2
    assert auroc(inside, outside) == pytest.approx(brute_auroc(inside, outside), abs=1e-12)
    assert aupr(inside, outside) == pytest.approx(brute_aupr(inside, outside), abs=1e-12)
    for level in (0.5, 0.8, 0.95, 1.0):
        assert fpr_at_tpr(inside, outside, level) == pytest.approx(brute_fpr(inside, outside, level), abs=1e-12)


def test_auroc_of_a_hand_made_case_with_ties():
    # out 1 vs in {0, 1, 1}: one win, two ties; out 2 beats all three: (4 + 0.5·2) / 6
    assert auroc(torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1.0, 2.0])) == pytest.approx(5 / 6)
    # everything tied: chance
    assert auroc(torch.ones(4), torch.ones(3)) == pytest.approx(0.5)


def test_separated_scores_give_the_extreme_values():
    low, high = torch.arange(10.0), torch.arange(10.0) + 100
    m = detection_metrics(low, high)
    assert (m["auroc"], m["aupr"], m["fpr_at_95_tpr"]) == (1.0, 1.0, 0.0)
    assert m["in_mean"] == pytest.approx(4.5) and m["out_mean"] == pytest.approx(104.5)
    reversed_ = detection_metrics(high, low)  # the failure direction reads as AUROC 0, all in-scores flagged
    assert reversed_["auroc"] == 0.0 and reversed_["fpr_at_95_tpr"] == 1.0


def test_bad_scores_are_refused_by_name():
    with pytest.raises(ValueError, match="out_scores holds 1 NaN"):
        auroc(torch.zeros(3), torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="in_scores must be a non-empty 1-D tensor"):
        auroc(torch.zeros(0), torch.ones(2))
    with pytest.raises(ValueError, match="tpr must lie in"):
        fpr_at_tpr(torch.zeros(3), torch.ones(3), 0.0)


# --- scores ----------------------------------------------------------------------------


def test_compressed_length_is_zlib_of_the_pixels_and_orders_by_complexity():
    gen = torch.Generator().manual_seed(0)
    flat = torch.zeros(1, 784, dtype=torch.uint8)
    noise = torch.randint(0, 256, (1, 784), generator=gen, dtype=torch.uint8)
    got = compressed_bits_per_dim(torch.cat([flat, noise]))
    assert got[1] == pytest.approx(len(zlib.compress(noise.numpy().tobytes(), 9)) * 8 / 784)
    assert got[0] < 0.2 < 7.5 < got[1]  # a blank image costs almost nothing, noise about 8 bits per pixel
    with pytest.raises(ValueError, match="uint8"):
        compressed_bits_per_dim(noise.float())


def test_class_log_prior_is_the_label_frequency():
    labels = torch.tensor([0, 0, 1, 9])
    prior = class_log_prior(labels)
    assert prior.shape == (10,)
    assert prior.exp()[[0, 1, 9]].tolist() == pytest.approx([0.5, 0.25, 0.25])
    assert prior.exp().sum() == pytest.approx(1.0)


# --- `lunet ood` on generated data -----------------------------------------------------

SIDE = 28
N_TRAIN, N_TEST = 5600, 300  # the training file keeps its last 5,000 images for validation


def blob_images(n: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Dark images with one bright blob; the label is the blob's column band (0..9)."""
    rows, cols = np.mgrid[0:SIDE, 0:SIDE]
    cx = gen.integers(4, 24, n)
    cy = gen.integers(4, 24, n)
    blob = 220 * np.exp(-((rows[None] - cy[:, None, None]) ** 2 + (cols[None] - cx[:, None, None]) ** 2) / 18.0)
    images = np.clip(blob + gen.integers(0, 12, (n, SIDE, SIDE)), 0, 255)
    return images, (cx - 4) // 2


def write_blob_data(root, seed: int, noise_as_fashion: bool = True):
    """MNIST-named blob images under the real file names (and, if asked, Fashion-MNIST-named noise images)."""
    gen = np.random.default_rng(seed)
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        images, labels = blob_images(n, gen)
        write_idx(root / "mnist" / data.FILES[split][0], images)
        write_idx(root / "mnist" / data.FILES[split][1], labels)
        if noise_as_fashion:
            write_idx(root / "fashion-mnist" / data.FILES[split][0], gen.integers(0, 256, (n, SIDE, SIDE)))
            write_idx(root / "fashion-mnist" / data.FILES[split][1], gen.integers(0, 10, n))
    return root


@pytest.fixture(scope="module")
def generated_data(tmp_path_factory):
    return write_blob_data(tmp_path_factory.mktemp("data"), seed=0)


def train_small(root, out, *extra: str) -> None:
    rc = main(["train", "--dataset", "mnist", "--out", str(out), "--data-dir", str(root), "--no-verify",
               "--limit", "300", "--blocks", "2", "--epochs", "1", "--batch-size", "64", "--data-init", "standardize",
               "--no-progress", *extra])
    assert rc == 0


def test_ood_command_writes_the_table_json_and_histograms(generated_data, tmp_path, capsys):
    run = tmp_path / "run"
    train_small(generated_data, run)
    capsys.readouterr()
    rc = main(["ood", str(run), "--against", "fashion-mnist", "--no-verify", "--json", str(tmp_path / "ood.json"),
               "--plot", str(tmp_path / "ood.png")])
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "ood.json").read_text())
    assert (report["dataset"], report["against"], report["num_in"], report["num_out"]) == (
        "mnist", "fashion-mnist", N_TEST, N_TEST
    )
    assert set(report["models"]) == {"run", "gaussian"}
    for model in report["models"].values():
        assert set(model["metrics"]) == {"bits_per_dim", "complexity", "typicality"}
        for m in model["metrics"].values():
            assert 0.0 <= m["fpr_at_95_tpr"] <= 1.0 and 0.0 <= m["auroc"] <= 1.0
        # uniform noise is far from blobs: both likelihoods put it far out
        assert model["metrics"]["bits_per_dim"]["auroc"] > 0.99
        assert model["metrics"]["bits_per_dim"]["out_mean"] > model["metrics"]["bits_per_dim"]["in_mean"]
        auroc_text = f"{model['metrics']['bits_per_dim']['auroc']:.3f}"
        assert any(model["label"] in line and auroc_text in line for line in printed.splitlines())
    assert (tmp_path / "ood.png").read_bytes().startswith(PNG_MAGIC)
    # the typicality score is the distance from the validation mean of the run's own bits/dim
    run_metrics = report["models"]["run"]["metrics"]
    assert run_metrics["typicality"]["in_mean"] >= abs(run_metrics["bits_per_dim"]["in_mean"]
                                                       - report["models"]["run"]["validation_bits_per_dim"]) - 1e-9


def test_per_class_run_scores_the_mixture_of_its_class_models(generated_data, tmp_path):
    run = tmp_path / "per-class"
    train_small(generated_data, run, "--per-class")
    report, scores = ood_run(run, "fashion-mnist", data_dir=str(generated_data), against_data_dir=str(generated_data),
                             verify=False, limit=50)
    settings, models, _ = load_run_models(run)
    images, labels = data.load_dataset("mnist", "test", data_dir=generated_data, verify=False)
    train_labels = data.load_dataset("mnist", "train", data_dir=generated_data, verify=False)[1][: N_TRAIN - 5000]
    pre = ImagePreprocessor(settings.lam)
    per_class = torch.stack([image_log_probs(m, images[:50], pre, seed=0)[0] for m in models], dim=1)
    prior = torch.bincount(train_labels, minlength=10).double() / (N_TRAIN - 5000)
    top = per_class.max(1, keepdim=True).values  # log p is about -5,000 nats: shift before exponentiating
    mixture = torch.log(((per_class - top).exp() * prior).sum(1)) + top.squeeze(1)
    assert torch.allclose(scores["run"]["bits_per_dim"][0], bits_per_dim(mixture, 784), atol=1e-4)
    assert report["kind"] == "per_class"


def test_ood_refuses_its_own_data_set_and_missing_runs(generated_data, tmp_path, capsys):
    run = tmp_path / "run"
    train_small(generated_data, run)
    capsys.readouterr()
    assert main(["ood", str(run), "--against", "mnist", "--no-verify"]) == 2
    assert "is the run's own data set" in capsys.readouterr().err
    assert main(["ood", str(tmp_path / "nothing"), "--against", "fashion-mnist"]) == 2
    assert "error" in capsys.readouterr().err


def test_a_single_class_run_is_judged_on_its_own_class(generated_data, tmp_path):
    run = tmp_path / "class-3"
    train_small(generated_data, run, "--class", "3")
    report, scores = ood_run(run, "fashion-mnist", data_dir=str(generated_data), against_data_dir=str(generated_data),
                             verify=False)
    _, labels = data.load_dataset("mnist", "test", data_dir=generated_data, verify=False)
    assert report["num_in"] == int((labels == 3).sum()) < N_TEST
    assert scores["run"]["bits_per_dim"][0].shape == (report["num_in"],)
