"""The state of a training and the rules for resuming it (lunet.experiments.training.state): the data's
fingerprint, divergence and its message, the best weights kept, the checkpoint's contents restored
exactly, and a resume under another model, other data or other settings refused by name."""

from __future__ import annotations

import copy
import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch

from lunet import LUNet
from lunet.experiments.config.errors import NothingToResume, SettingError
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.store.checkpoint import save_checkpoint
from lunet.experiments.training.log import NATS_PER_DIM
from lunet.experiments.training.schedule import LearningRateSchedule
from lunet.experiments.training.state import (
    DIVERGENCE_MARGIN_NATS_PER_DIM,
    RESUMABLE_AFTER_DIVERGENCE,
    RESUMABLE_CHANGES,
    TrainingDiverged,
    TrainingState,
    data_fingerprint,
    diverged,
    divergence,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = {"name": "lunet", "features": 2, "num_blocks": 2}
CONFIG = TrainConfig(epochs=2, batch_size=8, lr=1e-2, seed=0)
STEPS_PER_EPOCH = 3
ROWS = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
DATA = {"train": data_fingerprint(ROWS), "val": data_fingerprint(ROWS[:4])}
PATH = Path("run") / "checkpoint.pt"


def make_state(config: TrainConfig = CONFIG, spec: dict = SPEC, data: dict = DATA) -> TrainingState:
    torch.manual_seed(0)
    model = LUNet(**{k: v for k, v in SPEC.items() if k != "name"})
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    schedule = LearningRateSchedule(optimizer, config, STEPS_PER_EPOCH * config.epochs)
    return TrainingState(model, spec, config, data, optimizer, schedule, torch.Generator().manual_seed(config.seed),
                         None, {"dataset": "test"})


def train_an_epoch(state: TrainingState) -> float:
    """A few Adam steps on the rows, as an epoch of the run; returns the validation log-likelihood kept."""
    for _ in range(STEPS_PER_EPOCH):
        loss = -state.model.log_prob(ROWS).mean()
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        state.schedule.step()
    state.epoch += 1
    with torch.no_grad():
        val = float(state.model.log_prob(ROWS[:4]).mean())
    state.keep_if_best(val)
    return val


@pytest.fixture
def ckpt() -> dict:
    """The checkpoint of a run after one epoch of two (a copy: a restored optimiser trains its tensors in place)."""
    state = make_state()
    state.start_val = -5.0
    train_an_epoch(state)
    return copy.deepcopy(state.checkpoint())


# -- the data's fingerprint, divergence -------------------------------------------------------


def test_the_fingerprint_names_the_shape_the_dtype_and_the_contents():
    fingerprint = data_fingerprint(ROWS)
    assert fingerprint.startswith("(8, 2) torch.float32 sha256:")
    assert data_fingerprint(ROWS.clone()) == fingerprint
    changed = ROWS.clone()
    changed[3, 1] += 1e-6
    assert data_fingerprint(changed) != fingerprint
    assert data_fingerprint(ROWS.double()) != fingerprint
    assert data_fingerprint(ROWS.reshape(4, 4)) != fingerprint


def test_a_validation_that_is_not_finite_is_a_divergence():
    what, advice = divergence(math.nan, -5.0, 3, 2, NATS_PER_DIM)
    assert what == "the validation log-likelihood is nan after epoch 3" and advice == "lower {lr}"
    assert divergence(-math.inf, None, 1, 2, NATS_PER_DIM) is not None


def test_a_validation_far_below_the_start_is_a_divergence_and_one_within_the_margin_is_not():
    features, start = 2, -4.0  # 2 nats per dimension
    edge = start - features * DIVERGENCE_MARGIN_NATS_PER_DIM
    assert divergence(edge, start, 5, features, NATS_PER_DIM) is None
    assert divergence(start + 1.0, start, 5, features, NATS_PER_DIM) is None  # better than the start
    what, advice = divergence(edge - 0.02, start, 5, features, NATS_PER_DIM)
    assert what.startswith("training diverged: after epoch 5 the validation NLL is 3.0100 nats/dim, worse than the "
                           "untrained start (2.0000 nats/dim)")
    assert advice == "lower {lr} or add {grad_clip}"
    assert divergence(edge - 100, None, 5, features, NATS_PER_DIM) is None  # no start to compare with
    assert divergence(edge - 100, -math.inf, 5, features, NATS_PER_DIM) is None


def test_the_divergence_error_names_what_is_kept_and_how_to_go_on():
    kept = diverged("the loss is nan", "lower {lr}", "3", PATH)
    assert isinstance(kept, TrainingDiverged) and isinstance(kept, RuntimeError)
    assert str(kept) == (f"the loss is nan; the last good checkpoint (epoch 3) is kept in {PATH}; lower lr, or "
                         f"continue it with resume=True and a lower lr or a grad_clip")
    nothing = diverged("the loss is nan", "lower {lr}", None, PATH)
    assert str(nothing) == "the loss is nan; no checkpoint had been written yet, so nothing is kept; lower lr"


# -- the best weights, the checkpoint, the restore --------------------------------------------


def test_the_best_weights_are_a_copy_kept_only_for_a_finite_improvement():
    state = make_state()
    state.keep_if_best(math.nan)
    assert state.best_val is None and state.best_state is None
    state.epoch = 1
    state.keep_if_best(-3.0)
    kept = {k: v.clone() for k, v in state.best_state.items()}
    state.epoch = 2
    state.keep_if_best(-4.0)  # worse: the first stays
    assert (state.best_val, state.best_epoch) == (-3.0, 1)
    with torch.no_grad():
        state.model.blocks[0].bias.add_(1.0)
    assert all(torch.equal(state.best_state[k], v) for k, v in kept.items())  # not the live weights
    state.keep_if_best(-2.5)
    assert (state.best_val, state.best_epoch) == (-2.5, 2)
    assert not torch.equal(state.best_state["blocks.0.bias"], kept["blocks.0.bias"])


def test_a_restored_state_continues_exactly_where_the_checkpoint_stopped(ckpt):
    state = make_state()
    state.check_resumable(ckpt, PATH, after_divergence=False)
    state.restore(ckpt)
    assert (state.epoch, state.best_val, state.best_epoch, state.start_val) == (1, ckpt["best_val_log_prob"], 1, -5.0)
    assert state.schedule.steps == STEPS_PER_EPOCH
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in state.model.state_dict().items())
    assert state.checkpoint()["optimizer"]["state"].keys() == ckpt["optimizer"]["state"].keys()
    # the next epoch trains as the uninterrupted run's second epoch would
    whole = make_state()
    whole.start_val = -5.0
    train_an_epoch(whole)
    assert train_an_epoch(state) == train_an_epoch(whole)


def test_a_run_resumes_only_from_a_checkpoint_that_is_there(tmp_path):
    with pytest.raises(NothingToResume, match=re.escape(f"there is no checkpoint to resume in {tmp_path}")):
        make_state().load(tmp_path / "checkpoint.pt", after_divergence=False)


def test_a_checkpoint_read_from_its_file_is_checked_before_it_is_returned(ckpt, tmp_path):
    save_checkpoint(ckpt, tmp_path / "checkpoint.pt")
    loaded = make_state().load(tmp_path / "checkpoint.pt", after_divergence=False)
    assert loaded["epoch"] == 1
    with pytest.raises(SettingError, match="holds model"):
        make_state(spec={**SPEC, "num_blocks": 3}).load(tmp_path / "checkpoint.pt", after_divergence=False)


# -- the refusals of a resume -----------------------------------------------------------------


def test_weights_alone_do_not_resume(ckpt):
    weights_only = {k: v for k, v in ckpt.items() if k != "optimizer"}
    with pytest.raises(SettingError, match="holds model weights only"):
        make_state().check_resumable(weights_only, PATH, after_divergence=False)


def test_another_model_or_other_data_are_refused_by_name(ckpt):
    with pytest.raises(SettingError, match="holds model .* but this run asks for"):
        make_state(spec={**SPEC, "num_blocks": 3}).check_resumable(ckpt, PATH, after_divergence=False)
    other = {"train": data_fingerprint(ROWS + 1), "val": DATA["val"]}
    with pytest.raises(SettingError) as caught:
        make_state(data=other).check_resumable(ckpt, PATH, after_divergence=False)
    assert f"was trained on other data (train {DATA['train']} -> {other['train']})" in str(caught.value)


@pytest.mark.parametrize("change", RESUMABLE_CHANGES)
def test_the_settings_that_may_change_do(change, ckpt):
    new = {"device": "cuda", "eval_every": 2, "epochs": 4, "time_budget": 100.0, "compile": True, "cuda_graph": False,
           "patience": 3}[change]
    assert new != getattr(CONFIG, change)  # a change indeed (the state is built on the CPU whatever it says)
    config = dataclasses.replace(CONFIG, **{change: new})
    state = make_state(config)
    if change == "epochs":  # a longer run: the schedule over its length, one epoch's steps the same
        assert state.schedule.total_steps == STEPS_PER_EPOCH * 4
    state.check_resumable(ckpt, PATH, after_divergence=False)


@pytest.mark.parametrize("change, new", [("lr", 5e-3), ("batch_size", 16), ("seed", 1), ("weight_decay", 0.1)])
def test_other_settings_are_refused_naming_each_change(change, new, ckpt):
    state = make_state(dataclasses.replace(CONFIG, **{change: new}))
    with pytest.raises(SettingError) as caught:
        state.check_resumable(ckpt, PATH, after_divergence=False)
    assert f"was trained with other settings ({change} {getattr(CONFIG, change)!r} -> {new!r})" in str(caught.value)


def test_after_a_divergence_the_rate_and_clipping_may_change_too(ckpt):
    assert set(RESUMABLE_AFTER_DIVERGENCE) == {"lr", "grad_clip"}
    gentler = dataclasses.replace(CONFIG, lr=5e-3, grad_clip=1.0)
    make_state(gentler).check_resumable(ckpt, PATH, after_divergence=True)
    make_state(gentler).check_resumable({**ckpt, "diverged": "the loss is nan"}, PATH, after_divergence=False)
    with pytest.raises(SettingError, match="seed"):
        make_state(dataclasses.replace(gentler, seed=2)).check_resumable(ckpt, PATH, after_divergence=True)


def test_a_record_that_lacks_a_setting_cannot_be_compared_and_is_refused(ckpt):
    lacking = {**ckpt, "train_config": {k: v for k, v in ckpt["train_config"].items() if k not in ("lr", "ema")}}
    with pytest.raises(ValueError, match="its record of the training settings lacks lr") as caught:
        make_state().check_resumable(lacking, PATH, after_divergence=False)
    assert "ema" not in str(caught.value)  # a setting that came later reads as the value runs had before it
