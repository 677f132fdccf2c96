"""Training steps replayed as one CUDA graph (lunet.experiments.training.cuda_graph): the bookkeeping
around the capture, on the CPU.

A real capture needs a GPU (tests/properties/test_cuda.py). Here a stand-in capture runs the
captured body eagerly on the CPU, as a graph's replay would run it (gradients unset
at its start), so that everything around the capture (fixed batch and noise
buffers, the learning rate as a tensor, the warm-up steps, the short last batch,
checkpoints, the fallback) is checked against plain eager training bit for bit.
"""

import torch

from experiments.training.test_step import image_trainer
from lunet.experiments.store.checkpoint import load_checkpoint
from lunet.experiments.training.cuda_graph import WARMUP_STEPS


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
