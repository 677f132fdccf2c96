"""Optimisation settings (lunet.experiments.config.training): a time budget's checks, and the defaults
of own data under a budget."""

import math

import pytest

from lunet.experiments.config.training import BUDGET_EPOCHS, TrainConfig, vector_train_config


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, True, "60"])
def test_a_time_budget_must_be_positive_finite_seconds(bad):
    with pytest.raises(ValueError, match="time_budget must be positive, finite seconds"):
        TrainConfig(time_budget=bad)


def test_own_data_defaults_with_a_budget_end_at_the_budget_not_at_their_steps():
    assert vector_train_config(1000, time_budget=30.0).epochs == BUDGET_EPOCHS
    assert vector_train_config(1000, time_budget=30.0, epochs=5).epochs == 5
    assert vector_train_config(1000).epochs < BUDGET_EPOCHS
