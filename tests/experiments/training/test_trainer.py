"""Trainer (lunet.experiments.training.trainer): the maximum-likelihood loop on the 2-D mixture, its exact
resumption, the refusals of its data and settings, divergence, early stopping, and training for a
wall-clock budget."""

import json
import math
import time
from pathlib import Path

import pytest
import torch

import lunet.experiments.training.trainer as train_module
from conftest import mixture_trainer
from experiments.training.test_step import DIM, PIXELS, SPEC
from lunet import LUNet
from lunet.cli.options import flag
from lunet.experiments.config.errors import SettingError
from lunet.experiments.config.training import BUDGET_EPOCHS, TrainConfig
from lunet.experiments.data.preprocess import ImagePreprocessor
from lunet.experiments.runs.gmm2d import _log_prob_fn
from lunet.experiments.runs.images import make_log_prob_fn
from lunet.experiments.store.checkpoint import check_training_state, load_checkpoint
from lunet.experiments.store.folder import RunFolder
from lunet.experiments.training.log import RunLog
from lunet.experiments.training.state import TrainingDiverged
from lunet.experiments.training.step import Objective
from lunet.experiments.training.trainer import Trainer, mean_log_prob


class StoppedLog(RunLog):
    """A run log that stops the training as Ctrl-C would once it has trained ``epochs_done`` epochs."""

    def __init__(self, out_dir, epochs_done):
        super().__init__(RunFolder(out_dir), progress=False)
        self.epochs_done = epochs_done

    def epoch_begins(self, epoch):
        if epoch == self.epochs_done:
            raise KeyboardInterrupt


def test_training_lowers_nll_substantially(tmp_path):
    trainer, data = mixture_trainer(tmp_path, epochs=40, eval_every=10)
    before = -mean_log_prob(trainer.model, data["test"], _log_prob_fn, 10000, seed=0)
    trainer.fit()
    after = -mean_log_prob(trainer.model, data["test"], _log_prob_fn, 10000, seed=0)
    # a fresh net is near N(0, I) after standardising (~2.9 nats); the fit must
    # at least beat the best Gaussian (~2.92 nats) by a wide margin
    assert before > 2.5
    assert after < before - 0.6
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [10, 20, 30, 40]


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    full, _ = mixture_trainer(tmp_path / "full", epochs=6, eval_every=2)
    full.fit()
    # stopped in epoch 5, after the checkpoint of epoch 4
    part, _ = mixture_trainer(tmp_path / "part", epochs=6, eval_every=2, log=StoppedLog(tmp_path / "part", 4))
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    resumed, _ = mixture_trainer(tmp_path / "part", epochs=6, eval_every=2)
    resumed.resume()
    assert resumed.state.epoch == 4
    resumed.fit()
    for key, value in full.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [2, 4, 6]


def test_resume_under_other_optimisation_settings_is_refused(tmp_path):
    trainer, _ = mixture_trainer(tmp_path, epochs=2)
    trainer.fit()
    faster, _ = mixture_trainer(tmp_path, epochs=3)
    faster.config.lr = 0.1  # another trajectory from here on: refused, by name
    faster.config.batch_size = 512
    with pytest.raises(SettingError, match=r"batch_size 1024 -> 512, lr 0.02 -> 0.1") as caught:
        faster.resume()
    assert "(--batch-size 1024 -> 512, --lr 0.02 -> 0.1)" in caught.value.render(flag)  # as the command line says it
    elsewhere, _ = mixture_trainer(tmp_path, epochs=2, eval_every=2)  # reporting may change
    elsewhere.resume()
    assert elsewhere.state.epoch == 2


def test_an_optimizer_of_ones_own_trains_checkpoints_and_resumes_as_the_default_does(tmp_path):
    def sgd(momentum, weight_decay=0.0):
        return lambda model: torch.optim.SGD(model.parameters(), lr=1.0, momentum=momentum, weight_decay=weight_decay)

    full, _ = mixture_trainer(tmp_path / "full", epochs=4, eval_every=2, optimizer=sgd(0.9))
    assert isinstance(full.optimizer, torch.optim.SGD)
    full.fit()
    assert full.optimizer.param_groups[0]["lr"] < 2e-2  # the schedule sets its rate from the config
    part, _ = mixture_trainer(tmp_path / "part", epochs=4, eval_every=2, optimizer=sgd(0.9),
                              log=StoppedLog(tmp_path / "part", 2))
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    resumed, _ = mixture_trainer(tmp_path / "part", epochs=4, eval_every=2, optimizer=sgd(0.9))
    resumed.resume()
    resumed.fit()
    for key, value in full.model.state_dict().items():  # its momentum came back with the checkpoint
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    other, _ = mixture_trainer(tmp_path / "part", epochs=6, eval_every=2, optimizer=sgd(0.5))
    with pytest.raises(ValueError, match="its optimiser's momentum is 0.9, not the run's 0.5"):
        other.resume()
    with pytest.raises(ValueError, match=r"the optimizer's weight decay 0.1 is not the run's \(0.0\)"):
        mixture_trainer(tmp_path / "decay", epochs=1, optimizer=sgd(0.9, weight_decay=0.1))


def test_training_data_with_nan_are_refused_before_training(tmp_path):
    data = torch.randn(100, 2)
    data[7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"the training data hold 1 NaN or infinite value\(s\); shape \(100, 2\)"):
        Trainer(LUNet(2, 1), {"name": "lunet", "features": 2, "num_blocks": 1}, TrainConfig(epochs=1),
                (data, torch.randn(10, 2)), Objective(lambda m, b, n: m.log_prob(b), features=2), tmp_path)


def test_an_image_trainer_without_dequantisation_noise_is_refused(tmp_path):
    # without dequantize=True the image loss would draw from the unseeded global generator
    trainer = Trainer(LUNet(DIM, 2), SPEC, TrainConfig(epochs=1, batch_size=64), (PIXELS[:500], PIXELS[500:]),
                      Objective(make_log_prob_fn(ImagePreprocessor(num_dims=DIM)), features=DIM), tmp_path,
                      progress=False)
    with pytest.raises(ValueError, match="image log-likelihoods need dequantisation noise: give the Objective "
                                         "dequantize=True"):
        trainer.fit()


# -- divergence, and resuming after it ---------------------------------------------------------


def test_diverging_loss_stops_with_clear_message(tmp_path):
    trainer, _ = mixture_trainer(tmp_path, epochs=3)
    trainer.config.epochs = 1
    trainer.fit()
    with torch.no_grad():
        trainer.model.blocks[0].bias.fill_(float("nan"))
    trainer.config.epochs = 3
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        trainer.fit()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


def _trainer(out: Path, epochs: int = 3, lr: float = 2e-2) -> Trainer:
    return mixture_trainer(out, epochs, model_spec={"name": "lunet", "features": 2, "num_blocks": 3}, lr=lr)[0]


def test_a_finite_blow_up_counts_as_divergence_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, epochs=1)
    trainer.fit()
    best = load_checkpoint(tmp_path / "checkpoint.pt")["best_model"]
    with torch.no_grad():
        trainer.model.blocks[-1].bias.add_(1e4)  # finite, and far worse than the start
    trainer.config.epochs = 2
    with pytest.raises(TrainingDiverged, match="worse than the untrained start") as caught:
        trainer.fit()
    assert "epoch 1" in str(caught.value) and "resume=True" in str(caught.value)
    assert "--resume and a lower --lr or a --grad-clip" in caught.value.render(flag)  # as the command line says it
    kept = load_checkpoint(tmp_path / "checkpoint.pt")
    assert kept["epoch"] == 1 and kept["diverged"]
    assert all(torch.equal(kept["best_model"][k], v) for k, v in best.items())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_after_a_divergence_resume_may_lower_the_learning_rate(tmp_path):
    trainer = _trainer(tmp_path, epochs=1)
    trainer.fit()
    gentler = _trainer(tmp_path, epochs=2, lr=1e-2)
    with pytest.raises(ValueError, match="lr 0.02 -> 0.01"):  # not without a divergence
        gentler.resume()
    with torch.no_grad():
        trainer.model.blocks[0].bias.fill_(float("nan"))
    trainer.config.epochs = 2
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        trainer.fit()
    gentler = _trainer(tmp_path, epochs=2, lr=1e-2)
    gentler.resume()
    assert gentler.optimizer.param_groups[0]["initial_lr"] == 1e-2
    # 9 of 18 steps into the cosine schedule: half the new peak (the old run's rate there was 0)
    assert gentler.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    gentler.fit()
    after = load_checkpoint(tmp_path / "checkpoint.pt")
    assert after["epoch"] == 2 and "diverged" not in after and after["train_config"]["lr"] == 1e-2


def test_divergence_before_any_checkpoint_says_nothing_was_kept(tmp_path):
    trainer = _trainer(tmp_path, epochs=1)
    with torch.no_grad():
        trainer.model.blocks[0].bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written") as caught:
        trainer.fit()
    assert "kept in" not in str(caught.value)


def test_extending_a_run_continues_on_the_longer_schedule(tmp_path):
    _trainer(tmp_path, epochs=1).fit()
    longer = _trainer(tmp_path, epochs=4)
    longer.resume()
    # step 9 of 36 of a cosine from 0.02: the stored rate (0, the end of the 1-epoch run) is not used
    expected = 0.02 * 0.5 * (1 + math.cos(math.pi * 9 / 36))
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert longer.schedule.rate == pytest.approx(expected)


# -- early stopping ----------------------------------------------------------------------------


@pytest.mark.usefixtures("one_thread")
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


# -- a wall-clock budget: the stop at the budget, and resuming with the seconds spent counted --


class FakeClock:
    """``time`` whose ``perf_counter`` moves ``tick`` seconds at every reading: a run's clock that
    no load on the machine can change."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def perf_counter(self) -> float:
        self.now += self.tick
        return self.now

    def __getattr__(self, name: str):
        return getattr(time, name)


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock(0.01)
    monkeypatch.setattr(train_module, "time", fake)
    return fake


def budget_trainer(out, budget, epochs=BUDGET_EPOCHS, **config):
    return mixture_trainer(out, epochs, time_budget=budget, batch_size=256, **config)[0]


def test_a_budget_run_stops_at_its_budget_with_the_rate_at_zero(tmp_path, clock):
    trainer = budget_trainer(tmp_path, 0.5)
    spe = trainer.steps_per_epoch
    rows = trainer.fit()
    state = trainer.state
    # a step reads the clock once: the run stops within one reading of the budget
    assert 0.5 <= state.train_seconds < 0.5 + 5 * clock.tick
    assert trainer.budget_spent and trainer.schedule.rate == 0.0
    assert 1 < state.epoch < BUDGET_EPOCHS
    assert [r["lr"] for r in rows] == sorted((r["lr"] for r in rows), reverse=True)
    assert rows[-1]["epoch"] == state.epoch  # the cut epoch is validated and logged
    ckpt = load_checkpoint(trainer.checkpoint_path)
    assert ckpt["train_config"]["time_budget"] == 0.5
    assert 0 < ckpt["skipped_steps"] < spe
    assert ckpt["schedule"]["steps"] == ckpt["epoch"] * spe - ckpt["skipped_steps"]
    check_training_state(trainer.checkpoint_path, ckpt, dict(trainer.model.named_parameters()),
                         steps_per_epoch=spe)


def test_a_damaged_count_of_left_out_steps_is_refused(tmp_path, clock):
    trainer = budget_trainer(tmp_path, 0.3)
    trainer.fit()
    ckpt = load_checkpoint(trainer.checkpoint_path)
    params = dict(trainer.model.named_parameters())
    bad_counts = ((-1, "not a count"), ("3", "not a count"), (ckpt["skipped_steps"] + 1, "learning-rate schedule"))
    for bad, words in bad_counts:
        with pytest.raises(ValueError, match=words):
            check_training_state("ckpt.pt", {**ckpt, "skipped_steps": bad}, params,
                                 steps_per_epoch=trainer.steps_per_epoch)


def test_resuming_a_spent_budget_trains_nothing_and_a_longer_one_counts_the_seconds_spent(tmp_path, clock):
    first = budget_trainer(tmp_path, 0.4)
    first.fit()
    spent, epoch = first.state.train_seconds, first.state.epoch

    again = budget_trainer(tmp_path, 0.4)
    again.resume()
    assert again.fit() == [] and again.state.epoch == epoch and again.state.train_seconds == spent

    longer = budget_trainer(tmp_path, 1.0)
    longer.resume()
    # the cosine is laid out again over the longer budget, from the seconds already trained
    assert longer.schedule.rate == pytest.approx(2e-2 * 0.5 * (1 + math.cos(math.pi * spent / 1.0)))
    rows = longer.fit()
    assert rows and rows[0]["epoch"] == epoch + 1 and rows[0]["train_seconds"] > spent
    assert 1.0 <= longer.state.train_seconds < 1.0 + 5 * clock.tick and longer.schedule.rate == 0.0


def test_epochs_stay_a_cap_within_the_budget(tmp_path, clock):
    trainer = budget_trainer(tmp_path, 1000.0, epochs=2)
    trainer.fit()
    assert trainer.state.epoch == 2 and not trainer.budget_spent
    assert load_checkpoint(trainer.checkpoint_path)["skipped_steps"] == 0
