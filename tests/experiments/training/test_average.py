"""WeightAverage (lunet.experiments.training.average) and training with ``ema``: the average's
recursion, the weights it lends for validation and gives back, the best weights it keeps, and its
exact resumption."""

import pytest
import torch
from torch import nn

from conftest import mixture_trainer
from lunet.experiments.config.errors import SettingError
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.runs.gmm2d import _log_prob_fn
from lunet.experiments.store.checkpoint import load_checkpoint, save_checkpoint
from lunet.experiments.training.average import WeightAverage
from lunet.experiments.training.trainer import mean_log_prob


def test_the_average_follows_its_recursion_with_the_early_steps_weighted_up():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    average = WeightAverage(model, decay=0.9)
    expected = model.weight.detach().double().clone()
    for t in range(1, 40):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        average.update()
        weight = 1.0 - min(0.9, t / (t + 9.0))
        expected += weight * (model.weight.detach().double() - expected)
    assert average.updates == 39
    torch.testing.assert_close(average.averages[0].double(), expected, rtol=1e-5, atol=1e-5)
    # the first update takes the weights as they are: no pull towards the untrained start
    fresh = nn.Linear(3, 2)
    first = WeightAverage(fresh, decay=0.999)
    with torch.no_grad():
        fresh.weight.add_(5.0)
    first.update()
    torch.testing.assert_close(first.averages[0], fresh.weight.detach(), rtol=0, atol=0.6)


def test_applied_lends_the_average_and_gives_the_weights_back_bit_for_bit():
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    average = WeightAverage(model, decay=0.5)
    for _ in range(3):
        with torch.no_grad():
            model.weight.mul_(1.3).add_(0.1)
        average.update()
    own = {k: v.clone() for k, v in model.state_dict().items()}
    storage = model.weight.data_ptr()
    with average.applied():
        assert torch.equal(model.weight, average.averages[0])
        assert not torch.equal(model.weight, own["weight"])
    assert model.weight.data_ptr() == storage
    for key, value in own.items():
        assert torch.equal(model.state_dict()[key], value), key
    # even when the block raises
    with pytest.raises(RuntimeError, match="inside"):
        with average.applied():
            raise RuntimeError("inside")
    assert torch.equal(model.weight, own["weight"])
    state = average.state_dict()
    assert torch.equal(state["weight"], average.averages[0]) and torch.equal(model.weight, own["weight"])


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, 1.5, float("nan"), True])
def test_a_decay_outside_the_open_unit_interval_is_refused(decay):
    with pytest.raises(ValueError, match="ema must be a decay strictly between 0 and 1"):
        TrainConfig(ema=decay)
    if not isinstance(decay, bool):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            WeightAverage(nn.Linear(2, 2), decay)


def test_with_ema_validation_and_the_best_weights_are_the_averages(tmp_path):
    trainer, data = mixture_trainer(tmp_path, epochs=4, ema=0.9)
    trainer.fit()
    average = trainer.average
    assert average is not None and average.updates == 4 * trainer.steps_per_epoch
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["train_config"]["ema"] == 0.9 and ckpt["average_updates"] == average.updates
    for key, value in average.state_dict().items():
        assert torch.equal(ckpt["average_model"][key], value), key
    # the raw weights are kept for resuming, and differ from their average
    assert not torch.equal(ckpt["model"]["blocks.0.lu"], ckpt["average_model"]["blocks.0.lu"])
    # the validation figure of the best epoch is the averaged weights' own
    with average.applied():
        val = mean_log_prob(trainer.model, data["val"], _log_prob_fn, 1000, seed=trainer.config.seed + 1)
    assert trainer.state.best_epoch == trainer.state.epoch  # a run still improving at its end
    assert val == pytest.approx(trainer.state.best_val, rel=1e-12)
    for key, value in ckpt["average_model"].items():
        assert torch.equal(ckpt["best_model"][key], value), key
    without, _ = mixture_trainer(tmp_path / "plain", epochs=4)
    without.fit()
    assert without.state.best_val != trainer.state.best_val


def test_a_resumed_run_with_ema_equals_the_uninterrupted_one(tmp_path):
    from experiments.training.test_trainer import StoppedLog

    full, _ = mixture_trainer(tmp_path / "full", epochs=6, eval_every=2, ema=0.95)
    full.fit()
    part, _ = mixture_trainer(tmp_path / "part", epochs=6, eval_every=2, ema=0.95, log=StoppedLog(tmp_path / "part", 4))
    with pytest.raises(KeyboardInterrupt):
        part.fit()
    resumed, _ = mixture_trainer(tmp_path / "part", epochs=6, eval_every=2, ema=0.95)
    resumed.resume()
    resumed.fit()
    assert resumed.average.updates == full.average.updates
    for a, b in zip(full.average.averages, resumed.average.averages):
        assert torch.equal(a, b)
    for key, value in full.state.best_state.items():
        assert torch.equal(value, resumed.state.best_state[key]), key


def test_resuming_with_another_ema_is_refused_and_a_record_from_before_ema_resumes(tmp_path):
    trainer, _ = mixture_trainer(tmp_path, epochs=2)
    trainer.fit()
    averaged, _ = mixture_trainer(tmp_path, epochs=3, ema=0.99)
    with pytest.raises(SettingError, match=r"ema None -> 0\.99"):
        averaged.resume()
    # a checkpoint written before the setting existed trained without an average
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    del ckpt["train_config"]["ema"]
    save_checkpoint(ckpt, tmp_path / "checkpoint.pt")
    longer, _ = mixture_trainer(tmp_path, epochs=3)
    longer.resume()
    assert longer.state.epoch == 2


def test_a_checkpoint_whose_average_is_missing_or_misshapen_is_refused(tmp_path):
    trainer, _ = mixture_trainer(tmp_path, epochs=2, ema=0.9)
    trainer.fit()
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    ckpt["average_model"] = None
    save_checkpoint(ckpt, tmp_path / "checkpoint.pt")
    again, _ = mixture_trainer(tmp_path, epochs=3, ema=0.9)
    with pytest.raises(ValueError, match="holds no average of the weights"):
        again.resume()
    ckpt["average_model"] = {k: v for k, v in trainer.average.state_dict().items() if k != "blocks.0.lu"}
    save_checkpoint(ckpt, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="the weights' average is missing for blocks.0.lu"):
        again.resume()
