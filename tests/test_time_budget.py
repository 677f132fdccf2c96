"""Training for a wall-clock budget: the schedule laid out over training seconds, the stop at the
budget, and resuming with the seconds already spent counted."""

import math
import time

import pytest

import lunet.experiments.training.trainer as train_module
from conftest import mixture_trainer, run_cli
from lunet.experiments.config.errors import SettingError
from lunet.experiments.config.training import BUDGET_EPOCHS, TrainConfig, vector_train_config
from lunet.experiments.store.checkpoint import check_training_state, load_checkpoint
from lunet.experiments.training.distributed import Group
from lunet.experiments.training.schedule import rate_factor
from lunet.experiments.training.step import check_shared_config


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


def test_rate_factor_follows_the_share_of_the_budget_after_a_warm_up_in_steps():
    assert [rate_factor(0, "cosine", 0, 0, p) for p in (0.0, 0.5, 1.0, 1.7)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert rate_factor(0, "cosine", 4, 0, 0.9) == 0.25  # warming up, whatever the clock says
    assert rate_factor(9, "constant", 4, 0, 0.9) == 1.0


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


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, True, "60"])
def test_a_time_budget_must_be_positive_finite_seconds(bad):
    with pytest.raises(ValueError, match="time_budget must be positive, finite seconds"):
        TrainConfig(time_budget=bad)


def test_processes_sharing_a_model_refuse_a_time_budget():
    group = Group(rank=0, world=2)
    with pytest.raises(SettingError, match="time_budget trains in one process only"):
        check_shared_config(TrainConfig(time_budget=60.0), group)


def test_the_command_line_budget_lifts_the_epochs_unless_they_are_given(tmp_path):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "gmm2d", "--starts", "1", "--time-budget", "0.5", "--out", out,
                   "--no-progress") == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["train_config"]["time_budget"] == 0.5 and ckpt["train_config"]["epochs"] == BUDGET_EPOCHS
    assert ckpt["train_seconds"] >= 0.5
    capped = tmp_path / "capped"
    assert run_cli("train", "--dataset", "gmm2d", "--starts", "1", "--time-budget", "60", "--epochs", "1",
                   "--out", capped, "--no-progress") == 0
    ckpt = load_checkpoint(capped / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["train_seconds"] < 60



def test_own_data_defaults_with_a_budget_end_at_the_budget_not_at_their_steps():
    assert vector_train_config(1000, time_budget=30.0).epochs == BUDGET_EPOCHS
    assert vector_train_config(1000, time_budget=30.0, epochs=5).epochs == 5
    assert vector_train_config(1000).epochs < BUDGET_EPOCHS
