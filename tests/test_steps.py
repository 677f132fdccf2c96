"""The training steps: no host reads, no graph breaks, and the CUDA-graph path's bookkeeping.

A real capture needs a GPU (tests/test_cuda.py). Here a stand-in capture runs the
captured body eagerly on the CPU, as a graph's replay would run it (gradients unset
at its start), so that everything around the capture (fixed batch and noise
buffers, the learning rate as a tensor, the warm-up steps, the short last batch,
checkpoints, the fallback) is checked against plain eager training bit for bit.
"""

import contextlib

import pytest
import torch
import torch._dynamo as dynamo

from lunet import LUNet
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.data.preprocess import ImagePreprocessor, dequantize
from lunet.experiments.runs.images import make_log_prob_fn
from lunet.experiments.store.checkpoint import load_checkpoint
from lunet.experiments.training.cuda_graph import WARMUP_STEPS
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
    trainer = Trainer(LUNet(DIM, 2), SPEC, config, PIXELS[:500], PIXELS[500:],
                      make_log_prob_fn(ImagePreprocessor(num_dims=DIM)), features=DIM, out_dir=out, progress=False,
                      dequantize=True, capture=capture)
    if captured:
        capture.trainer = trainer
    return trainer


def assert_same_weights(a, b):
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name


def test_captured_steps_train_exactly_as_eager_steps(tmp_path):
    eager = image_trainer(tmp_path / "eager")
    eager_rows = eager.fit()
    graphed = image_trainer(tmp_path / "graphed", captured=True)
    graphed_rows = graphed.fit()
    capture = graphed.steps.capture
    # 14 full batches: 3 eager warm-ups, one capture, then every full batch a replay
    assert (capture.warmups, capture.captures, capture.replays) == (WARMUP_STEPS, 1, 14 - WARMUP_STEPS)
    assert graphed.steps.mode == "cuda-graph"
    assert_same_weights(eager, graphed)
    assert [row["steps"] for row in graphed_rows] == ["cuda-graph"] * 2
    assert graphed_rows == [{**row, "train_seconds": g["train_seconds"], "steps": "cuda-graph"}
                            for row, g in zip(eager_rows, graphed_rows)]
    # the learning rate follows its schedule through the tensor the graph reads
    assert isinstance(graphed.optimizer.param_groups[0]["lr"], torch.Tensor)
    assert float(graphed.optimizer.param_groups[0]["lr"]) == eager.optimizer.param_groups[0]["lr"]


def test_a_compiled_loss_inside_the_captured_steps_trains_as_the_compiled_eager_steps(tmp_path, monkeypatch):
    # --compile with graphs on: the compiled loss runs inside the captured body, on the fixed buffers
    compile_ = torch.compile
    modes = []
    monkeypatch.setattr(torch, "compile", lambda fn, **k: modes.append(k.get("mode")) or compile_(
        fn, backend="aot_eager", **{key: v for key, v in k.items() if key != "mode"}))
    eager = image_trainer(tmp_path / "eager", compile=True)
    eager.fit()
    graphed = image_trainer(tmp_path / "graphed", captured=True, compile=True)
    graphed.fit()
    assert eager.steps.compiled and graphed.steps.compiled and graphed.steps.mode == "cuda-graph"
    assert modes == [None, None]  # the CPU compiles without reduce-overhead
    for (name, x), y in zip(eager.model.state_dict().items(), graphed.model.state_dict().values()):
        torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-6, msg=name)


def test_a_checkpoint_of_captured_training_resumes_anywhere(tmp_path):
    # a constant rate: a cosine schedule is recomputed over the length a resume gives
    whole = image_trainer(tmp_path / "whole", schedule="constant")
    whole.fit()
    first = image_trainer(tmp_path / "split", epochs=1, captured=True, schedule="constant")
    first.fit()
    stored = load_checkpoint(first.checkpoint_path)["optimizer"]["param_groups"][0]
    assert isinstance(stored["lr"], float) and stored["capturable"] is False
    second = image_trainer(tmp_path / "split", epochs=2, schedule="constant")  # resumed eagerly
    second.resume()
    second.fit()
    assert_same_weights(whole, second)


def test_a_failed_capture_trains_on_eagerly_and_says_so(tmp_path, capsys):
    eager = image_trainer(tmp_path / "eager")
    eager.fit()
    failing = image_trainer(tmp_path / "failing", captured=True,
                            fail_with=RuntimeError("operation not permitted when stream is capturing\ndetails"))
    failing.fit()
    assert failing.steps.mode == "eager" and failing.steps.capture is None
    printed = capsys.readouterr()
    assert ("capturing the training step as a CUDA graph failed (RuntimeError: operation not permitted when "
            "stream is capturing); training eagerly") in printed.out + printed.err
    # the batch whose capture failed is trained eagerly, on the noise already drawn for it
    assert_same_weights(eager, failing)
    assert failing.state.epoch == 2 and not failing.optimizer.param_groups[0]["capturable"]


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


def test_dequantisation_with_given_noise_equals_the_generators_draw():
    gen = torch.Generator().manual_seed(5)
    drawn = dequantize(PIXELS, generator=gen)
    noise = torch.rand(PIXELS.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(dequantize(PIXELS, noise=noise), drawn)
    with pytest.raises(ValueError, match=r"noise must match the pixels: shape \(550, 16\), torch.float32"):
        dequantize(PIXELS, noise=noise[:10])
    with pytest.raises(ValueError, match="noise must match"):
        dequantize(PIXELS, noise=noise.double())


def test_training_data_with_nan_are_refused_before_training(tmp_path):
    data = torch.randn(100, 2)
    data[7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"the training data hold 1 NaN or infinite value\(s\); shape \(100, 2\)"):
        Trainer(LUNet(2, 1), {"name": "lunet", "features": 2, "num_blocks": 1}, TrainConfig(epochs=1), data,
                torch.randn(10, 2), lambda m, b, n: m.log_prob(b), features=2, out_dir=tmp_path)


def test_an_image_trainer_without_dequantisation_noise_is_refused(tmp_path):
    # without dequantize=True the image loss would draw from the unseeded global generator
    trainer = Trainer(LUNet(DIM, 2), SPEC, TrainConfig(epochs=1, batch_size=64), PIXELS[:500], PIXELS[500:],
                      make_log_prob_fn(ImagePreprocessor(num_dims=DIM)), features=DIM, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="image log-likelihoods need dequantisation noise: give the Trainer "
                                         "dequantize=True"):
        trainer.fit()
