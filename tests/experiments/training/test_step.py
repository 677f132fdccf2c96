"""One optimisation step (lunet.experiments.training.step): no host reads, no graph breaks, the step
through ``torch.compile`` and its fallback, and the settings processes sharing a model refuse.

``image_trainer`` builds a small image training; with ``captured=True`` its steps go through a stand-in
for the CUDA-graph capture (``EagerCapture``, which runs the captured body eagerly on the CPU, as a
graph's replay would run it), as the tests of lunet.experiments.training.cuda_graph use it too.
"""

import contextlib

import pytest
import torch
import torch._dynamo as dynamo

from conftest import mixture_trainer
from lunet import LUNet
from lunet.experiments.config.errors import SettingError
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.data.preprocess import ImagePreprocessor
from lunet.experiments.runs.images import make_log_prob_fn
from lunet.experiments.training.distributed import Group
from lunet.experiments.training.step import Objective, check_shared_config
from lunet.experiments.training.trainer import Trainer

DIM = 16
SPEC = {"name": "lunet", "features": DIM, "num_blocks": 2}
# 7 full batches of 64 and a last one of 52 per epoch
PIXELS = torch.randint(0, 256, (550, DIM), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def fixed_addresses(trainer):
    """Where every tensor a captured step reads or writes lives: a graph replays on these
    addresses, so none may move between the capture and a replay."""
    optimizer = trainer.optimizer
    tensors = {"rows": trainer.steps.graphed.rows, "noise": trainer.steps.graphed.noise,
               "total": trainer.steps.epoch_total, "data": trainer.train_data}
    tensors.update({f"lr{i}": group["lr"] for i, group in enumerate(optimizer.param_groups)})
    for i, p in enumerate(trainer.model.parameters()):
        tensors[f"param{i}"] = p
        tensors.update({f"param{i}.{k}": v for k, v in optimizer.state[p].items() if isinstance(v, torch.Tensor)})
    return {name: t.data_ptr() for name, t in tensors.items()}


class EagerCapture:
    """Stands in for CudaGraphCapture: the capture records the body without running it, and a
    replay runs it with the gradients unset first, as the captured graph's backward writes them.
    Every replay checks that the tensors the graph would use are still where they were at capture."""

    capturable = True  # as on a GPU: the fallback and the checkpoint must turn it off again

    def __init__(self, fail_with=None):
        self.trainer, self.fail_with = None, fail_with  # the trainer is given once it is built
        self.captures = self.replays = self.warmups = 0

    @contextlib.contextmanager
    def warmup(self):
        self.warmups += 1
        yield

    def capture(self, body):
        if self.fail_with is not None:
            raise self.fail_with
        self.captures += 1
        captured_at = fixed_addresses(self.trainer)

        def replay():
            assert fixed_addresses(self.trainer) == captured_at
            self.replays += 1
            self.trainer.optimizer.zero_grad(set_to_none=True)
            body()

        return replay


def image_trainer(out, epochs=2, captured=False, fail_with=None, **cfg):
    torch.manual_seed(0)
    config = TrainConfig(epochs=epochs, batch_size=64, seed=3, grad_clip=5.0, warmup_steps=4, **cfg)
    capture = EagerCapture(fail_with) if captured else None
    objective = Objective(make_log_prob_fn(ImagePreprocessor(num_dims=DIM)), features=DIM, dequantize=True)
    trainer = Trainer(LUNet(DIM, 2), SPEC, config, (PIXELS[:500], PIXELS[500:]), objective, out, progress=False,
                      capture=capture)
    if captured:
        capture.trainer = trainer
    return trainer


READS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.mark.parametrize("captured", [False, True], ids=["eager", "captured"])
def test_training_steps_read_nothing_back_from_the_device(tmp_path, monkeypatch, captured):
    # on a GPU every read would wait for the device; an epoch reads its loss once, at its end
    trainer = image_trainer(tmp_path / "run", epochs=1, captured=captured)
    assert trainer.steps_per_epoch == 8
    reads = []
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)

    trainer.train_epoch()
    assert reads == ["__float__"]
    assert trainer.steps.mode == ("cuda-graph" if captured else "eager")


def test_the_image_training_loss_traces_as_one_graph(tmp_path):
    # the dequantisation noise is drawn outside the loss, so that it compiles and captures whole
    trainer = image_trainer(tmp_path / "run")
    batch = PIXELS[:64]
    noise = torch.rand(batch.shape)
    dynamo.reset()
    try:
        explanation = dynamo.explain(trainer.steps.batch_loss)(batch, noise)
    finally:
        dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


# -- the step through torch.compile ------------------------------------------------------------


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
        objective = Objective(make_log_prob_fn(ImagePreprocessor(num_dims=16)), features=16, dequantize=True)
        trainers.append(Trainer(LUNet(16, 2), spec, config, (pixels[:200], pixels[200:]), objective, tmp_path / name,
                                progress=False))
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


# -- processes sharing a model -----------------------------------------------------------------


def test_processes_sharing_a_model_refuse_a_time_budget():
    group = Group(rank=0, world=2)
    with pytest.raises(SettingError, match="time_budget trains in one process only"):
        check_shared_config(TrainConfig(time_budget=60.0), group)
