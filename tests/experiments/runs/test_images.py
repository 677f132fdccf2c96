"""The image path end to end on real MNIST / Fashion-MNIST files, kept small.

Every run uses the ``--limit N`` option (the first N training images, per
class after class filtering for per-class runs; the first N test images for
``evaluate``), two LU blocks, one epoch and batch 64, so the whole file runs in
well under a minute on one CPU thread.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from conftest import read_metrics, run_cli
from lunet.experiments.data.mnist import FILES, load_dataset
from lunet.experiments.data.preprocess import ImagePreprocessor, dequantize, logit_transform
from lunet.experiments.evaluation.evaluate import DigitClassifier, class_agreement
from lunet.experiments.runs.images import fitted_latent_gaussian, sample_images
from lunet.experiments.store.checkpoint import load_checkpoint, load_model
from lunet.latent import LOG_2PI

DATA = Path(__file__).resolve().parents[4] / "shared" / "data"
LAM = 1e-6
D = 784
# Above D = 784 images per model: LU-Net's default data-dependent start (a
# full-covariance Gaussian fit of the training logits) is degenerate with fewer
# images than dimensions and scores >100 bits/dim on held-out images.
TRAIN_LIMIT = 1000  # unconditional run: training images
CLASS_LIMIT = 800  # per-class run: training images per class
BATCH = 64
TEST_LIMIT = 200  # evaluate: first test images
SMALL = ["--blocks", "2", "--epochs", "1", "--batch-size", str(BATCH), "--no-progress"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
EVAL_DRAWS = 3  # evaluate's default --draws
EVAL_SEED = 1000  # evaluate_run dequantises draw k with seed 1000 + k (lunet/experiments/evaluation/evaluate.py)
BAYES_SEED = 7  # class_log_probs (the Bayes classifier's scores) dequantises with seed 7


def _data_present(name: str) -> bool:
    names = [f for pair in FILES.values() for f in pair]
    return all((DATA / name / f).is_file() or (DATA / name / (f + ".gz")).is_file() for f in names)


pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.skipif(
    not (_data_present("mnist") and _data_present("fashion-mnist")),
    reason=f"MNIST / Fashion-MNIST IDX files not found under {DATA}/{{mnist,fashion-mnist}}",
)]


def train(out: Path, *extra: str, dataset: str = "mnist", limit: int = TRAIN_LIMIT) -> int:
    return run_cli("train", "--dataset", dataset, "--out", out, "--limit", limit, "--data-dir", DATA, *SMALL, *extra)


def evaluate_json(run: Path, out_json: Path) -> dict:
    rc = run_cli("evaluate", run, "--json", out_json, "--limit", TEST_LIMIT, "--data-dir", DATA)
    assert rc == 0
    return json.loads(out_json.read_text())


@pytest.fixture(scope="module")
def uncond_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("uncond") / "run"
    assert train(run) == 0
    return run


@pytest.fixture(scope="module")
def per_class_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("perclass") / "run"
    assert train(run, "--per-class", dataset="fashion-mnist", limit=CLASS_LIMIT) == 0
    return run


@pytest.fixture(scope="module")
def per_class_models(per_class_run) -> list:
    return load_class_models(per_class_run, range(10))


@pytest.fixture(scope="module")
def uncond_model(uncond_run):
    model, _ = load_model(uncond_run / "checkpoint.pt")
    return model.eval()


@pytest.fixture(scope="module")
def uncond_eval(uncond_run, tmp_path_factory) -> dict:
    return evaluate_json(uncond_run, tmp_path_factory.mktemp("uncond-eval") / "eval.json")


@pytest.fixture(scope="module")
def per_class_eval(per_class_run, tmp_path_factory) -> dict:
    return evaluate_json(per_class_run, tmp_path_factory.mktemp("perclass-eval") / "eval.json")


# -- an independent computation of the figures evaluate reports ---------------


@torch.no_grad()
def full_log_prob(model, pixels: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``log p(y)`` and the logit-space ``log p_flow(l)`` per image (nats, float64), one fresh generator."""
    gen = torch.Generator().manual_seed(seed)
    y = dequantize(pixels, generator=gen, dtype=torch.float32)
    logits, logdet = logit_transform(y, LAM)
    z, flow_logdet = model(logits)
    log_normal = -0.5 * (z.double().pow(2).sum(1) + D * LOG_2PI)
    logit_space = log_normal + flow_logdet.double()
    return logit_space + logdet.double(), logit_space


def bpd_by_formula(log_p_y: torch.Tensor) -> torch.Tensor:
    """bits/dim = (-log p(y) + D log 256) / (D ln 2), per image."""
    return (-log_p_y + D * math.log(256.0)) / (D * math.log(2.0))


def load_class_models(run: Path, classes) -> list:
    models = []
    for c in classes:
        path = run / "checkpoint.pt" if c is None else run / f"class-{c}" / "checkpoint.pt"
        model, _ = load_model(path)
        models.append(model.eval())
    return models


def independent_figures(models: list, dataset: str, classes) -> tuple[float, float]:
    """Mean over evaluate's dequantisation draws of bits/dim and of the paper figure, pooled over images."""
    x, y = load_dataset(dataset, "test", data_dir=DATA)
    x, y = x[:TEST_LIMIT], y[:TEST_LIMIT]
    bpd, paper = [], []
    for draw in range(EVAL_DRAWS):
        full, logit_space = [], []
        for c, model in zip(classes, models):
            xc = x if c is None else x[y == c]
            f, ls = full_log_prob(model, xc, seed=EVAL_SEED + draw)
            full.append(f)
            logit_space.append(ls)
        bpd.append(float(bpd_by_formula(torch.cat(full)).mean()))
        paper.append(float((-torch.cat(logit_space) / (D * math.log(2.0)) - 0.5).mean()))
    return sum(bpd) / len(bpd), sum(paper) / len(paper)


# -- 1. unconditional run: train, evaluate --json -----------------------------


def test_unconditional_run_layout(uncond_run):
    assert json.loads((uncond_run / "run.json").read_text())["kind"] == "unconditional"
    ckpt = load_checkpoint(uncond_run / "checkpoint.pt")
    assert ckpt["epoch"] == 1
    assert ckpt["model_spec"]["num_blocks"] == 2
    assert ckpt["schedule"]["steps"] == math.ceil(TRAIN_LIMIT / BATCH)
    assert [r["epoch"] for r in read_metrics(uncond_run / "metrics.jsonl")] == [1]
    assert not list(uncond_run.glob("class-*"))


def test_evaluate_json_keys_and_sane_values(uncond_eval):
    for key in ("bits_per_dim", "paper_bits_per_pixel", "lam", "dataset", "num_test_images"):
        assert key in uncond_eval, key
    bpd = uncond_eval["bits_per_dim"]
    assert math.isfinite(bpd) and 0.0 < bpd < 16.0
    assert math.isfinite(uncond_eval["paper_bits_per_pixel"])
    assert uncond_eval["paper_bits_per_pixel"] != pytest.approx(bpd, abs=1e-3)
    assert uncond_eval["num_test_images"] == TEST_LIMIT
    assert uncond_eval["lam"] == LAM
    assert uncond_eval["dataset"] == "mnist"
    assert uncond_eval["kind"] == "unconditional"
    assert uncond_eval["epochs"] == [1]
    assert uncond_eval["dequantisation_draws"] == EVAL_DRAWS
    assert uncond_eval["bits_per_dim_std_over_draws"] >= 0.0
    assert "per_class" not in uncond_eval and "bayes_classifier_accuracy" not in uncond_eval


def test_evaluate_bits_per_dim_matches_independent_computation(uncond_model, uncond_eval):
    bpd, paper = independent_figures([uncond_model], "mnist", [None])
    assert uncond_eval["bits_per_dim"] == pytest.approx(bpd, abs=1e-6)
    assert uncond_eval["paper_bits_per_pixel"] == pytest.approx(paper, abs=1e-6)


# -- 2. per-class run on fashion-mnist ----------------------------------------


def test_per_class_run_layout(per_class_run):
    assert json.loads((per_class_run / "run.json").read_text())["kind"] == "per_class"
    assert not (per_class_run / "checkpoint.pt").exists()
    assert sorted(p.name for p in per_class_run.glob("class-*")) == [f"class-{c}" for c in range(10)]
    for c in range(10):
        ckpt = load_checkpoint(per_class_run / f"class-{c}" / "checkpoint.pt")
        assert ckpt["epoch"] == 1
        assert ckpt["extra"] == {"class_label": c, "dataset": "fashion-mnist"}
    # --limit applies per class, after class filtering: CLASS_LIMIT images -> ceil(CLASS_LIMIT / BATCH) steps each
    for c in (0, 9):
        steps = load_checkpoint(per_class_run / f"class-{c}" / "checkpoint.pt")["schedule"]["steps"]
        assert steps == math.ceil(CLASS_LIMIT / BATCH)


def test_per_class_evaluate(per_class_run, per_class_eval):
    res = per_class_eval
    assert res["dataset"] == "fashion-mnist" and res["kind"] == "per_class"
    assert 0.0 <= res["bayes_classifier_accuracy"] <= 1.0
    assert sorted(res["per_class"], key=int) == [str(c) for c in range(10)]
    _, labels = load_dataset("fashion-mnist", "test", data_dir=DATA)
    counts = torch.bincount(labels[:TEST_LIMIT], minlength=10)
    for c, r in res["per_class"].items():
        assert r["num_test_images"] == int(counts[int(c)])
        assert math.isfinite(r["bits_per_dim"]) and r["bits_per_dim"] > 0.0
        assert math.isfinite(r["paper_bits_per_pixel"])
    assert res["num_test_images"] == TEST_LIMIT
    assert res["epochs"] == [1] * 10


def test_per_class_figures_match_independent_computation(per_class_models, per_class_eval):
    classes = list(range(10))
    models = per_class_models
    bpd, paper = independent_figures(models, "fashion-mnist", classes)
    assert per_class_eval["bits_per_dim"] == pytest.approx(bpd, abs=1e-6)
    assert per_class_eval["paper_bits_per_pixel"] == pytest.approx(paper, abs=1e-6)

    x, y = load_dataset("fashion-mnist", "test", data_dir=DATA)
    x, y = x[:TEST_LIMIT], y[:TEST_LIMIT]
    for c, model in zip(classes, models):  # per-class figures use the first draw only
        full, _ = full_log_prob(model, x[y == c], seed=EVAL_SEED)
        # evaluation scores with the model's frozen copy, this with the module's own
        # float32 pass: they differ by rounding, ~1e-6 of a figure near 10 bits/dim
        assert per_class_eval["per_class"][str(c)]["bits_per_dim"] == pytest.approx(
            float(bpd_by_formula(full).mean()), abs=1e-5
        )
    scores = torch.stack([full_log_prob(m, x, seed=BAYES_SEED)[0] for m in models], dim=1)
    accuracy = float((scores.argmax(1) == y).double().mean())
    assert per_class_eval["bayes_classifier_accuracy"] == pytest.approx(accuracy, abs=1e-12)


# -- 3. sampling --------------------------------------------------------------


@pytest.mark.parametrize("prior", ["standard", "fitted"])
@pytest.mark.parametrize("which", ["uncond", "per_class"])
def test_sample_cli_writes_png(which, prior, uncond_run, per_class_run, tmp_path, capsys):
    run = uncond_run if which == "uncond" else per_class_run
    out = tmp_path / "grid" / f"{which}-{prior}.png"
    count = ["--num", 20] if which == "uncond" else ["--per-row", 2]  # a per-class run draws per row
    rc = run_cli("sample", run, "--out", out, "--prior", prior, *count, "--data-dir", DATA)
    assert rc == 0
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 1000
    assert f"wrote {out}" in capsys.readouterr().out


def test_sample_images_shape_range_and_definition(uncond_model):
    model = uncond_model
    pre = ImagePreprocessor(LAM)
    imgs = sample_images(model, pre, 12, temperature=0.8, generator=torch.Generator().manual_seed(3))
    assert imgs.shape == (12, D)
    assert torch.isfinite(imgs).all()
    assert imgs.min() >= 0.0 and imgs.max() <= 1.0
    assert imgs.std() > 0  # not a constant image
    # standard prior: latents are T * eps, eps ~ N(0, I) from the generator, mapped back through the flow
    eps = torch.randn(12, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        expected = pre.to_images(model.inverse((0.8 * eps).float())[0].double())
    torch.testing.assert_close(imgs, expected)
    again = sample_images(model, pre, 12, temperature=0.8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(imgs, again)


def test_sample_images_fitted_prior_and_zero_temperature(uncond_model):
    model = uncond_model
    pre = ImagePreprocessor(LAM)
    x, _ = load_dataset("mnist", "train", data_dir=DATA)
    mean, chol = fitted_latent_gaussian(model, x[:1000], pre)
    assert mean.shape == (D,) and chol.shape == (D, D)
    assert torch.equal(chol, chol.tril()) and (chol.diagonal() > 0).all()

    imgs = sample_images(model, pre, 8, temperature=1.0, prior=(mean, chol), generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (8, D) and torch.isfinite(imgs).all()
    assert imgs.min() >= 0.0 and imgs.max() <= 1.0
    assert (imgs - imgs[0]).abs().max() > 0  # distinct samples at T = 1

    # T scales the spread around the fitted mean: a small T gives images close to the image of the mean
    cold = sample_images(model, pre, 5, temperature=1e-6, prior=(mean, chol),
                         generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image_of_mean = pre.to_images(model.inverse(mean.float().expand(5, D))[0].double())
    torch.testing.assert_close(cold, image_of_mean, rtol=0, atol=1e-3)
    # the standard prior N(0, T^2 I) at small T: the image of z = 0
    cold_std = sample_images(model, pre, 3, temperature=1e-6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image_of_origin = pre.to_images(model.inverse(torch.zeros(3, D))[0].double())
    torch.testing.assert_close(cold_std, image_of_origin, rtol=0, atol=1e-3)
    assert (image_of_mean[0] - image_of_origin[0]).abs().max() > 1e-2  # the two priors really differ
    # both samplers require a positive temperature
    with pytest.raises(ValueError, match="temperature must be a positive"):
        model.sample(3, temperature=0.0)
    with pytest.raises(ValueError, match="temperature must be a positive"):
        sample_images(model, pre, 3, temperature=0.0)


# -- 4. interpolation ---------------------------------------------------------


def test_interpolate_writes_png(uncond_run, tmp_path):
    out = tmp_path / "interp.png"
    assert run_cli("interpolate", uncond_run, "--out", out, "--pairs", "0,1", "2,3", "--steps", 5,
                   "--data-dir", DATA) == 0
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_interpolate_refuses_per_class_run(per_class_run, tmp_path, capsys):
    out = tmp_path / "interp.png"
    assert run_cli("interpolate", per_class_run, "--out", out, "--data-dir", DATA) == 2
    err = capsys.readouterr().err
    assert "lunet interpolate: error:" in err and "unconditional or single-class" in err
    assert not out.exists()


def test_interpolate_out_of_range_pair_exits_2(uncond_run, tmp_path, capsys):
    assert run_cli("interpolate", uncond_run, "--out", tmp_path / "i.png", "--pairs", "0,99999",
                   "--data-dir", DATA) == 2
    assert "99999" in capsys.readouterr().err


# -- 5. resume, refusal, overwrite --------------------------------------------


def test_resume_continues_and_refuses_silent_restart(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run) == 0
    first = load_checkpoint(run / "checkpoint.pt")
    assert first["epoch"] == 1

    assert train(run, "--resume", "--epochs", "2") == 0
    second = load_checkpoint(run / "checkpoint.pt")
    assert second["epoch"] == 2
    assert second["schedule"]["steps"] == 2 * first["schedule"]["steps"]  # steps continued, not restarted
    assert not torch.equal(second["model"]["blocks.0.lu"], first["model"]["blocks.0.lu"])
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]

    # resuming a finished run trains nothing and logs nothing twice
    assert train(run, "--resume", "--epochs", "2") == 0
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2]

    # training into the same --out without --resume / --overwrite is refused
    capsys.readouterr()
    assert train(run, "--epochs", "3") == 2
    err = capsys.readouterr().err
    assert "lunet train: error:" in err and "--resume" in err
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2
    assert len(read_metrics(run / "metrics.jsonl")) == 2

    # --overwrite starts afresh
    assert train(run, "--overwrite") == 0
    fresh = load_checkpoint(run / "checkpoint.pt")
    assert fresh["epoch"] == 1
    assert fresh["schedule"]["steps"] == first["schedule"]["steps"]
    assert [r["epoch"] for r in read_metrics(run / "metrics.jsonl")] == [1]


def test_overwrite_with_invalid_options_keeps_existing_run(uncond_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(uncond_run, run)
    assert train(run, "--overwrite", "--class", "12") == 2
    assert (run / "checkpoint.pt").is_file()
    assert (run / "run.json").is_file()


# -- 6. bad input -------------------------------------------------------------


def test_class_out_of_range(tmp_path, capsys):
    assert train(tmp_path / "run", "--class", "12") == 2
    err = capsys.readouterr().err
    assert "lunet train: error:" in err and "0..9" in err and "12" in err
    assert not (tmp_path / "run" / "run.json").exists()


def test_per_class_and_class_exclude_each_other(tmp_path, capsys):
    assert train(tmp_path / "run", "--per-class", "--class", "3") == 2
    err = capsys.readouterr().err
    assert "lunet train: error:" in err and "--per-class" in err and "--class" in err
    assert not (tmp_path / "run" / "run.json").exists()


def test_missing_data_dir(tmp_path, monkeypatch, capsys, uncond_run):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("LUNET_DATA_DIR", str(empty))
    monkeypatch.setenv("HOME", str(empty))
    monkeypatch.setenv("XDG_CACHE_HOME", str(empty))

    out = tmp_path / "run"
    rc = run_cli("train", "--dataset", "mnist", "--out", out, "--data-dir", empty, "--limit", 64, *SMALL)
    assert rc == 2
    err = capsys.readouterr().err
    assert "lunet train: error:" in err and "train-images-idx3-ubyte" in err and str(empty) in err
    assert not (out / "run.json").exists()

    rc = run_cli("evaluate", uncond_run, "--data-dir", empty, "--limit", 10)
    assert rc == 2
    err = capsys.readouterr().err
    assert "lunet evaluate: error:" in err and "t10k-images-idx3-ubyte" in err


def test_evaluate_on_a_non_run_directory(tmp_path, capsys):
    (tmp_path / "notarun").mkdir()
    assert run_cli("evaluate", tmp_path / "notarun", "--data-dir", DATA) == 2
    err = capsys.readouterr().err
    assert "lunet evaluate: error:" in err and "run.json" in err


# -- 7. class agreement with a tiny judge -------------------------------------


def test_class_agreement_structure_and_values(per_class_run, per_class_models):
    torch.manual_seed(0)
    judge = DigitClassifier().eval()
    n = 16
    res = class_agreement(per_class_run, judge, temperatures=(1.0, 0.7), priors=("standard",), num_samples=n,
                          data_dir=DATA)
    assert set(res) == {"standard@T=1", "standard@T=0.7"}
    pre = ImagePreprocessor(LAM)
    models = per_class_models
    for key, t in (("standard@T=1", 1.0), ("standard@T=0.7", 0.7)):
        per_class = res[key]["per_class"]
        assert sorted(per_class, key=int) == [str(c) for c in range(10)]
        for c, v in per_class.items():
            assert 0.0 <= v <= 1.0
            assert v * n == pytest.approx(round(v * n))  # a fraction of n samples
        assert res[key]["mean"] == pytest.approx(sum(per_class.values()) / 10, abs=1e-12)
        # recompute: class c's samples come from a generator seeded with c (seed 0 + c)
        for c, model in enumerate(models):
            imgs = sample_images(model, pre, n, temperature=t, generator=torch.Generator().manual_seed(c))
            with torch.no_grad():
                expected = float((judge(imgs.float()).argmax(1) == c).double().mean())
            assert per_class[str(c)] == pytest.approx(expected, abs=1e-12)


def test_class_agreement_with_a_judge_that_always_says_three(per_class_run):
    judge = DigitClassifier()
    with torch.no_grad():
        last = judge.net[-1]
        last.weight.zero_()
        last.bias.zero_()
        last.bias[3] = 1.0
    res = class_agreement(per_class_run, judge, temperatures=(1.0,), priors=("standard",), num_samples=8, data_dir=DATA)
    r = res["standard@T=1"]
    assert r["per_class"] == {str(c): (1.0 if c == 3 else 0.0) for c in range(10)}
    assert r["mean"] == pytest.approx(0.1)


def test_class_agreement_refuses_unconditional_run(uncond_run):
    with pytest.raises(ValueError, match="per-class"):
        class_agreement(uncond_run, DigitClassifier(), num_samples=4, data_dir=DATA)


def test_commands_on_a_run_find_its_data_where_training_found_them(uncond_run, tmp_path, monkeypatch):
    recorded = json.loads((uncond_run / "run.json").read_text())["data_dir"]
    assert Path(recorded) == (DATA / "mnist").resolve()
    monkeypatch.delenv("LUNET_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))
    out_json = tmp_path / "eval.json"
    assert run_cli("evaluate", uncond_run, "--json", out_json, "--limit", 20, "--draws", 1) == 0
    assert json.loads(out_json.read_text())["num_test_images"] == 20


def test_image_metrics_are_in_bits_per_dim_as_the_console_shows(uncond_run):
    rows = read_metrics(uncond_run / "metrics.jsonl")
    assert rows and all({"train_bits_per_dim", "val_bits_per_dim"} <= set(r) for r in rows)
    checkpoint = load_checkpoint(uncond_run / "checkpoint.pt")
    best_bits = -checkpoint["best_val_log_prob"] / D / math.log(2) + 8
    assert min(r["val_bits_per_dim"] for r in rows) == pytest.approx(best_bits, abs=1e-9)
    assert (uncond_run / "curves.png").read_bytes()[:8] == PNG_MAGIC


def test_fewer_images_than_dimensions_start_from_standardising_with_a_warning(tmp_path, capsys):
    assert train(tmp_path / "few", limit=300) == 0
    out = capsys.readouterr().out
    assert "300 training images for 784 dimensions" in out and "--data-init standardize" in out
    rows = read_metrics(tmp_path / "few" / "metrics.jsonl")
    assert rows[-1]["val_bits_per_dim"] < 10  # the Gaussian start would have given tens of bits/dim


def test_export_of_a_per_class_run_loads_as_one_flow_per_class(per_class_run, tmp_path):
    from lunet import ClassConditionalFlow

    out = tmp_path / "per-class.pt"
    assert run_cli("export", per_class_run, "--out", out) == 0
    model, info = load_model(out)
    assert isinstance(model, ClassConditionalFlow) and model.num_classes == 10
    assert info["run"]["kind"] == "per_class" and info["run"]["lam"] == LAM and "data_dir" not in info["run"]
    x = torch.randn(3, D)
    for c in (0, 7):
        flow, _ = load_model(per_class_run / f"class-{c}" / "checkpoint.pt", which="best")
        torch.testing.assert_close(model.flows[c].log_prob(x), flow.log_prob(x), rtol=0, atol=0)

