"""Trainer: the maximum-likelihood loop on the 2-D mixture, its resumption, divergence and compiled steps."""

import json

import pytest
import torch

from conftest import mixture_trainer
from lunet import LUNet
from lunet.cli.options import flag
from lunet.experiments.config.errors import SettingError
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.runs.gmm2d import _log_prob_fn
from lunet.experiments.store.checkpoint import load_checkpoint
from lunet.experiments.store.folder import RunFolder
from lunet.experiments.training.log import RunLog
from lunet.experiments.training.state import TrainingDiverged
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


def test_the_curves_are_redrawn_at_most_every_half_minute_and_for_every_row_at_a_stop(tmp_path, monkeypatch):
    import lunet.experiments.plots as plots

    drawn = []  # the epochs of the metrics each drawing showed
    monkeypatch.setattr(plots, "plot_training_curves", lambda metrics, *a: drawn.append(
        [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]))
    trainer, _ = mixture_trainer(tmp_path / "whole", epochs=5)
    trainer.fit()
    assert drawn == [[1], [1, 2, 3, 4, 5]]  # the first epoch, then the last: all within 30 s
    drawn.clear()
    stopped, _ = mixture_trainer(tmp_path / "stopped", epochs=5, log=StoppedLog(tmp_path / "stopped", 3))
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    assert drawn == [[1], [1, 2, 3]]


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


def test_a_compiled_training_follows_the_eager_one(tmp_path, monkeypatch):
    # the whole-graph tracing and the dynamic last batch, without the C++ code generation (slow)
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **k: compile_(fn, backend="aot_eager", **k))
    eager, _ = mixture_trainer(tmp_path / "eager", epochs=2)
    compiled, _ = mixture_trainer(tmp_path / "compiled", epochs=2, compile=True)
    assert compiled.steps.compiled
    eager.fit()
    compiled.fit()
    assert compiled.steps.compiled  # no fallback happened
    for (name, a), b in zip(eager.model.state_dict().items(), compiled.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def test_a_compiled_image_training_follows_the_eager_one(tmp_path, monkeypatch):
    # the image loss draws dequantisation noise inside the compiled function; a short last batch too
    from lunet.experiments.data.preprocess import ImagePreprocessor
    from lunet.experiments.runs.images import make_log_prob_fn

    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **k: compile_(fn, backend="aot_eager", **k))
    pixels = torch.randint(0, 256, (230, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    spec = {"name": "lunet", "features": 16, "num_blocks": 2}
    trainers = []
    for name, compiled in (("eager", False), ("compiled", True)):
        torch.manual_seed(0)
        config = TrainConfig(epochs=2, batch_size=64, seed=0, compile=compiled)
        trainers.append(Trainer(LUNet(16, 2), spec, config, pixels[:200], pixels[200:],
                                make_log_prob_fn(ImagePreprocessor(num_dims=16)), features=16, out_dir=tmp_path / name,
                                dequantize=True, progress=False))
        trainers[-1].fit()
    eager, compiled = trainers
    assert compiled.steps.compiled  # no fallback happened
    for (name, a), b in zip(eager.model.state_dict().items(), compiled.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def test_the_loss_compiles_for_cuda_graphs_on_a_gpu_only(tmp_path, monkeypatch):
    modes = []
    monkeypatch.setattr(torch, "compile", lambda fn, **k: modes.append(k.get("mode")) or fn)
    mixture_trainer(tmp_path / "cpu", epochs=1, compile=True)
    assert modes == [None]
    if torch.cuda.is_available():
        # the trainer's own CUDA graph captures the compiled loss; without it, torch.compile's graphs replay it
        mixture_trainer(tmp_path / "graph", epochs=1, compile=True, device="cuda")
        assert modes[-1] is None
        mixture_trainer(tmp_path / "gpu", epochs=1, compile=True, device="cuda", cuda_graph=False)
        assert modes[-1] == "reduce-overhead"


def test_a_failing_compiler_falls_back_to_eager_training(tmp_path, monkeypatch, capsys):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    trainer, _ = mixture_trainer(tmp_path, epochs=1, compile=True)
    trainer.fit()
    assert not trainer.steps.compiled and trainer.state.epoch == 1
    printed = capsys.readouterr()
    assert "torch.compile failed (RuntimeError: no C++ compiler found); training eagerly" in printed.out + printed.err
