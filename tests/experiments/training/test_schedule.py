"""The learning-rate schedule (lunet.experiments.training.schedule) as a part of its own: warm-up and
cosine, resumption, the rate a captured step reads, and the share of a wall-clock budget."""

import math

import pytest
import torch

from lunet.experiments.config.training import TrainConfig
from lunet.experiments.training.schedule import LearningRateSchedule, rate_factor, rate_numbers, rate_tensors


def optimizer():
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))], lr=1.0)


def test_the_schedule_warms_up_then_falls_to_zero_at_the_last_step():
    schedule = LearningRateSchedule(optimizer(), TrainConfig(lr=0.02, warmup_steps=2), total_steps=12)
    rates = []
    for _ in range(12):
        rates.append(schedule.rate)
        assert schedule.optimizer.param_groups[0]["lr"] == schedule.rate
        schedule.step()
    assert rates[:3] == [0.01, 0.02, 0.02]
    assert rates[2] > rates[7] > rates[11] > schedule.rate == 0.0


def test_a_resumed_schedule_continues_on_its_own_peak_and_length():
    first = LearningRateSchedule(optimizer(), TrainConfig(lr=0.02), total_steps=10)
    for _ in range(4):
        first.step()
    state = first.state_dict()
    assert state == {"steps": 4}
    gentler = LearningRateSchedule(optimizer(), TrainConfig(lr=0.01), total_steps=20)  # lower, longer
    gentler.load_state_dict(state)
    assert gentler.steps == 4
    assert gentler.rate == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 4 / 20)))
    assert gentler.optimizer.param_groups[0]["lr"] == gentler.rate
    assert gentler.optimizer.param_groups[0]["initial_lr"] == 0.01


def test_the_rate_a_captured_step_reads_is_updated_in_place_and_saved_as_a_number():
    opt = optimizer()
    schedule = LearningRateSchedule(opt, TrainConfig(lr=0.02, schedule="constant", warmup_steps=4), total_steps=8)
    rate_tensors(opt, torch.device("cpu"))
    tensor = opt.param_groups[0]["lr"]
    schedule.step()
    assert opt.param_groups[0]["lr"] is tensor and float(tensor) == schedule.rate == 0.01
    saved = rate_numbers(opt.state_dict())
    assert saved["param_groups"][0]["lr"] == 0.01 and isinstance(saved["param_groups"][0]["lr"], float)


def test_rate_factor_of_a_constant_schedule_after_warm_up_is_one():
    assert [rate_factor(s, "constant", 2, 10) for s in range(4)] == [0.5, 1.0, 1.0, 1.0]


def test_rate_factor_follows_the_share_of_the_budget_after_a_warm_up_in_steps():
    assert [rate_factor(0, "cosine", 0, 0, p) for p in (0.0, 0.5, 1.0, 1.7)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert rate_factor(0, "cosine", 4, 0, 0.9) == 0.25  # warming up, whatever the clock says
    assert rate_factor(9, "constant", 4, 0, 0.9) == 1.0
