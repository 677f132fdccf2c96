"""Test-set evaluation of image runs (lunet.experiments.evaluation.evaluate): each image's log-density in
both spaces, a run's bits/dim over dequantisation draws, the Bayes classifier of a per-class run, the
judge of sample classes and its cache.

The runs here are untrained LU-Nets of one block written as a run folder holds them, scored on the
random images of the ``fake_mnist`` fixture, on which the judge's cache is tested too."""

from __future__ import annotations

import math

import pytest
import torch

from experiments.runs.test_images import D
from lunet import LUNet
from lunet.experiments.config.presets import IMAGES, NUM_CLASSES, paper_lunet_spec
from lunet.experiments.data.mnist import load_dataset
from lunet.experiments.data.preprocess import ImagePreprocessor, bits_per_dim
from lunet.experiments.evaluation.evaluate import (
    DigitClassifier,
    class_agreement,
    class_log_probs,
    evaluate_run,
    image_log_probs,
)
from lunet.experiments.store.checkpoint import save_checkpoint
from lunet.experiments.store.folder import RunFolder
from lunet.experiments.store.record import ImageRunSettings, RunRecord, write_run

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = paper_lunet_spec(1)


def flow(seed: int) -> LUNet:
    torch.manual_seed(seed)
    model = LUNet(**{k: v for k, v in SPEC.items() if k != "name"})
    with torch.no_grad():
        model.blocks[0].bias.normal_(0.0, 0.5)  # each class's model its own
    return model.eval()


def write_image_run(folder: RunFolder, data_dir, kind: str = "unconditional") -> list[LUNet]:
    """A run of ``kind`` in ``folder`` whose models are untrained flows; returns them."""
    settings = ImageRunSettings(kind=kind, model=SPEC)
    write_run(folder, RunRecord(IMAGES, settings, str(data_dir)))
    models = []
    for c in settings.model_classes:
        model = flow(0 if c is None else c)
        where = folder if c is None else folder.class_folder(c)
        save_checkpoint({"model_spec": SPEC, "model": model.state_dict(), "best_model": None, "epoch": 2,
                         "train_seconds": 1.5}, where.checkpoint)
        models.append(model)
    return models


def test_each_images_log_density_is_the_flows_plus_the_preprocessings_jacobian():
    model = flow(0)
    pre = ImagePreprocessor(1e-6)
    pixels = torch.randint(0, 256, (5, D), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    full, logit_space = image_log_probs(model, pixels, pre, seed=4)
    logits, logdet = pre.to_model_space(pixels, torch.Generator().manual_seed(4), dtype=torch.float32)
    with torch.no_grad():
        expected = model.log_prob(logits).double()
    torch.testing.assert_close(logit_space, expected)
    torch.testing.assert_close(full, expected + logdet.double())
    assert full.dtype == torch.float64 and full.shape == (5,)
    again, _ = image_log_probs(model, pixels, pre, seed=4)
    assert torch.equal(again, full)  # one seed: one dequantisation
    assert not torch.equal(image_log_probs(model, pixels, pre, seed=5)[0], full)


def test_the_class_scores_are_each_class_models_under_one_draw():
    models = [flow(0), flow(1), flow(2)]
    pre = ImagePreprocessor(1e-6)
    pixels = torch.randint(0, 256, (4, D), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    scores = class_log_probs(models, pixels, pre)
    assert scores.shape == (4, 3) and scores.dtype == torch.float64
    for k, model in enumerate(models):
        torch.testing.assert_close(scores[:, k], image_log_probs(model, pixels, pre, seed=7)[0])


def test_the_judge_takes_pixels_to_ten_class_scores():
    judge = DigitClassifier()
    assert judge(torch.rand(3, 784)).shape == (3, NUM_CLASSES)
    assert DigitClassifier(features=16, hidden=8)(torch.rand(2, 16)).shape == (2, NUM_CLASSES)


def test_a_runs_bits_per_dim_are_the_mean_over_the_dequantisation_draws(fake_mnist, tmp_path):
    run = RunFolder(tmp_path / "run")
    [model] = write_image_run(run, fake_mnist)
    result = evaluate_run(run, draws=2, data_dir=str(fake_mnist), verify=False, limit=20)
    images, _ = load_dataset("mnist", "test", data_dir=str(fake_mnist), verify=False)
    pre = ImagePreprocessor(1e-6)
    per_draw = [float(bits_per_dim(image_log_probs(model, images[:20], pre, seed=1000 + draw)[0], D).mean())
                for draw in range(2)]
    assert result["bits_per_dim"] == pytest.approx(sum(per_draw) / 2, rel=1e-5)
    assert result["bits_per_dim_std_over_draws"] == pytest.approx(float(torch.tensor(per_draw).std()), rel=1e-3)
    assert (result["num_test_images"], result["dequantisation_draws"], result["kind"]) == (20, 2, "unconditional")
    assert (result["epochs"], result["train_seconds"]) == ([2], 1.5)
    assert result["num_parameters_stored"] == model.num_parameters("stored")
    assert "per_class" not in result and "bayes_classifier_accuracy" not in result
    with pytest.raises(ValueError, match="class agreement needs a per-class or single-class run"):
        class_agreement(run, DigitClassifier(), num_samples=2, data_dir=str(fake_mnist), verify=False)


def test_a_per_class_run_adds_each_class_and_the_bayes_classifier(fake_mnist, tmp_path):
    run = RunFolder(tmp_path / "run")
    models = write_image_run(run, fake_mnist, kind="per_class")
    result = evaluate_run(run, draws=1, data_dir=str(fake_mnist), verify=False)
    images, labels = load_dataset("mnist", "test", data_dir=str(fake_mnist), verify=False)
    assert sorted(result["per_class"], key=int) == [str(c) for c in range(NUM_CLASSES)]
    assert sum(r["num_test_images"] for r in result["per_class"].values()) == images.shape[0]
    assert result["num_parameters_stored"] == NUM_CLASSES * models[0].num_parameters("stored")
    scores = class_log_probs(models, images, ImagePreprocessor(1e-6))
    expected = float((scores.argmax(1) == labels).double().mean())
    assert result["bayes_classifier_accuracy"] == pytest.approx(expected, abs=1e-12)
    marginal = torch.logsumexp(scores, 1) - math.log(NUM_CLASSES)
    assert result["bits_per_dim_marginal"] == pytest.approx(float(bits_per_dim(marginal, D).mean()), rel=1e-6)
    with pytest.raises(ValueError, match="no test images of class .* use a larger --limit"):
        evaluate_run(run, draws=1, data_dir=str(fake_mnist), verify=False, limit=3)


def test_the_judge_is_trained_once_per_data_set_and_then_read_from_the_cache(fake_mnist, tmp_path, monkeypatch):
    from lunet.experiments.evaluation import evaluate

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    trained = []
    real_training = evaluate._train_classifier

    def counted_training(dataset, data_dir, verify, epochs, seed):
        trained.append((dataset, epochs, seed))
        return real_training(dataset, data_dir, verify, epochs, seed)

    monkeypatch.setattr(evaluate, "_train_classifier", counted_training)
    first, acc = evaluate.train_classifier("mnist", data_dir=str(fake_mnist), verify=False, epochs=1)
    assert trained == [("mnist", 1, 0)] and 0 <= acc <= 1
    assert list((tmp_path / "cache" / "lunet" / "judges").glob("mnist-*-e1-s0.pt"))

    second, acc_again = evaluate.train_classifier("mnist", data_dir=str(fake_mnist), verify=False, epochs=1)
    assert trained == [("mnist", 1, 0)]  # read from the cache, not trained again
    assert acc_again == acc
    x = torch.rand(4, D, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(second(x), first(x), rtol=0, atol=0)

    class Trains(Exception):
        pass

    def refuse(*args):
        raise Trains

    monkeypatch.setattr(evaluate, "_train_classifier", refuse)
    with pytest.raises(Trains):  # other epochs: another judge, not the cached one
        evaluate.train_classifier("mnist", data_dir=str(fake_mnist), verify=False, epochs=2)
