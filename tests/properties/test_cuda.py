"""The CUDA path computes what the CPU path computes (run where a GPU is present).

These tests need a CUDA device; on a machine without one they are skipped as a
module, with that reason. Every CPU test covers the same code; here only the
device-specific parts are checked: the frozen flow built on the device, results
that follow device moves and edits there, the activation tables per device,
and a training step.
"""

import pytest
import torch

from lunet import LUNet
from lunet.baselines.realnvp import RealNVP
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.data.preprocess import ImagePreprocessor, dequantize
from lunet.experiments.runs.images import make_log_prob_fn
from lunet.experiments.training.step import Objective
from lunet.experiments.training.trainer import Trainer
from test_frozen import make_net

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

CUDA = torch.device("cuda")


@pytest.mark.parametrize("frozen", [False, True], ids=["module", "frozen"])
def test_lunet_on_cuda_matches_float64_cpu(frozen):
    ref = make_net(features=64).double()
    net = make_net(features=64).to(CUDA)
    flow = net.frozen() if frozen else net
    x = 3 * torch.randn(500, 64, dtype=torch.float64)
    with torch.no_grad():
        lp_ref = ref.log_prob(x)
        lp = flow.log_prob(x.float().to(CUDA)).double().cpu()
        inv_ref = ref.inverse(x)[0]
        inv = flow.inverse(x.float().to(CUDA))[0].double().cpu()
    assert (lp - lp_ref).abs().max().item() < 1e-4 * lp_ref.abs().max().item()
    assert ((inv - inv_ref).abs() / inv_ref.abs().clamp_min(1)).max().item() < 1e-3


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-11)])
def test_lunet_round_trip_on_cuda(dtype, tol):
    net = make_net(features=64).to(CUDA, dtype)
    frozen = net.frozen()
    x = torch.randn(1000, 64, device=CUDA, dtype=dtype)
    z, _ = frozen(x)
    back = frozen.inverse(z)[0]
    samples = frozen.sample(1000)
    z2, _ = frozen(samples)
    assert samples.device.type == "cuda" and samples.dtype == dtype
    assert (back - x).abs().max().item() < tol * 10
    assert torch.isfinite(z2).all()
    with torch.no_grad():
        assert (net.inverse(net(x)[0])[0] - x).abs().max().item() < tol * 10


def test_results_follow_device_moves_and_edits_there():
    net = make_net(features=64)
    x = torch.randn(16, 64)
    with torch.no_grad():
        lp_cpu = net.log_prob(x)
        net.to(CUDA)
        lp_cuda = net.log_prob(x.to(CUDA))
        assert lp_cuda.device.type == "cuda"
        net.blocks[0].lu.data.mul_(0.9)  # an edit on the device that no version counter sees
        edited = net.log_prob(x.to(CUDA)).cpu()
        assert torch.allclose(net.frozen().log_prob(x.to(CUDA)).cpu(), edited, rtol=1e-4, atol=1e-3)
        net.cpu()
        assert torch.allclose(net.log_prob(x), edited, rtol=1e-4, atol=1e-3)
    assert torch.allclose(lp_cuda.cpu(), lp_cpu, rtol=1e-4, atol=1e-3)
    assert not torch.allclose(edited, lp_cpu, rtol=1e-4, atol=1e-3)


def test_training_step_on_cuda_matches_cpu():
    # wide enough for the blocked triangular products of the training path
    cpu_net, cuda_net = make_net(features=300), make_net(features=300).to(CUDA)
    x = torch.randn(256, 300)
    for net, data in ((cpu_net, x), (cuda_net, x.to(CUDA))):
        opt = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
        loss = -net.log_prob(data).mean()
        loss.backward()
        opt.step()
    for (name, a), (_, b) in zip(cpu_net.state_dict().items(), cuda_net.state_dict().items()):
        assert torch.allclose(a, b.cpu(), rtol=1e-4, atol=1e-5), name


def test_realnvp_on_cuda_matches_cpu_and_inverts():
    torch.manual_seed(0)
    model = RealNVP(mid_channels=8, num_res_blocks=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = (3 * torch.randn(32, 784)).clamp(-14, 14)
    with torch.no_grad():
        lp_cpu = model.log_prob(x)
        model.to(CUDA)
        xc = x.to(CUDA)
        lp_cuda = model.log_prob(xc).cpu()
        back = model.inverse(model(xc)[0])[0]
    assert torch.allclose(lp_cuda, lp_cpu, rtol=1e-4, atol=1e-2)
    assert (back - xc).abs().max().item() < 1e-3


def test_dequantisation_draws_on_the_device_of_its_generator():
    pixels = torch.randint(0, 256, (64, 784), dtype=torch.uint8, device=CUDA)
    gen = torch.Generator(device=CUDA).manual_seed(0)
    y = dequantize(pixels, generator=gen)
    assert y.device.type == "cuda"
    assert torch.equal(torch.floor(256 * y).to(torch.uint8), pixels)
    again = dequantize(pixels, generator=torch.Generator(device=CUDA).manual_seed(0))
    assert torch.equal(y, again)
    with pytest.raises(ValueError, match="pixels' device"):
        dequantize(pixels.cpu(), generator=torch.Generator(device=CUDA))


def _image_trainer(out, epochs, cuda_graph=True, rows=400):
    pre = ImagePreprocessor()
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (rows, 784), generator=gen, dtype=torch.uint8)
    torch.manual_seed(0)
    model = LUNet(784, 2)
    config = TrainConfig(epochs=epochs, batch_size=64, device="cuda", schedule="constant", grad_clip=10.0,
                         cuda_graph=cuda_graph)
    return Trainer(model, {"name": "lunet", "features": 784, "num_blocks": 2}, config, (pixels[:-50], pixels[-50:]),
                   Objective(make_log_prob_fn(pre), features=784, dequantize=True), out, progress=False)


@pytest.mark.parametrize("cuda_graph", [False, True], ids=["eager", "cuda-graph"])
def test_training_keeps_the_images_and_their_noise_on_the_gpu_and_resumes_exactly(tmp_path, cuda_graph):
    # 5 full batches of 64 per epoch and a short one: each epoch alone warms up, captures and replays
    trainer = _image_trainer(tmp_path / "whole", epochs=2, cuda_graph=cuda_graph)
    assert trainer.train_data.device.type == "cuda" and trainer.noise.device.type == "cuda"
    trainer.fit()
    first = _image_trainer(tmp_path / "split", epochs=1, cuda_graph=cuda_graph)
    first.fit()
    second = _image_trainer(tmp_path / "split", epochs=2, cuda_graph=cuda_graph)
    second.resume()
    second.fit()
    for run in (trainer, first, second):
        assert run.steps.mode == ("cuda-graph" if cuda_graph else "eager")
    for name, value in trainer.model.state_dict().items():
        if cuda_graph:  # eager warm-up steps and replays may use other kernels for the same products
            torch.testing.assert_close(second.model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
        else:
            assert torch.equal(second.model.state_dict()[name], value), name


def test_training_steps_replayed_as_a_cuda_graph_follow_the_eager_steps(tmp_path):
    # 16 full batches per epoch and a short last one: warm-up, capture, replays and eager last batches
    graphed = _image_trainer(tmp_path / "graphed", epochs=2, rows=1100)
    graphed.fit()
    eager = _image_trainer(tmp_path / "eager", epochs=2, cuda_graph=False, rows=1100)
    eager.fit()
    assert graphed.steps.mode == "cuda-graph"
    assert isinstance(graphed.optimizer.param_groups[0]["lr"], torch.Tensor)
    for (name, a), b in zip(eager.model.state_dict().items(), graphed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
    assert abs(graphed.state.best_val - eager.state.best_val) < 1e-3 * abs(eager.state.best_val)


def test_a_training_step_captured_as_a_cuda_graph_equals_the_eager_steps():
    import copy

    from lunet import set_value_checks
    from lunet.experiments.benchmarks.measure import captured_step

    net = make_net(features=64).to(CUDA)
    twin = copy.deepcopy(net)
    x = torch.randn(256, 64, device=CUDA)
    with set_value_checks(False):
        replay = captured_step(lambda b: -net.log_prob(b).mean(), list(net.parameters()), x)
    replay()  # three warm-up steps ran eagerly; the replay is the fourth
    opt = torch.optim.Adam(twin.parameters(), lr=1e-5, fused=True)
    for _ in range(4):
        opt.zero_grad(set_to_none=True)
        (-twin.log_prob(x).mean()).backward()
        opt.step()
    for (name, a), (_, b) in zip(net.state_dict().items(), twin.state_dict().items()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), name


def test_micro_bench_on_cuda_reports_the_captured_step_or_why_not():
    from lunet.experiments.benchmarks.micro import micro_table, run_micro

    result = run_micro(device="cuda", features=128, num_blocks=2, repeats=3)
    assert ("captured_step_ms" in result) != ("captured_error" in result)
    assert ("captured_density_1000_ms" in result) != ("captured_inference_error" in result)
    assert "CUDA graph" in micro_table(result)


def test_a_failed_capture_on_the_gpu_trains_on_eagerly_on_the_callers_stream(tmp_path, monkeypatch, capsys):
    graphed = _image_trainer(tmp_path / "graphed", epochs=1)
    body = graphed.steps.graphed_body

    def syncing_body():
        body()
        if torch.cuda.is_current_stream_capturing():
            float(graphed.steps.epoch_total)  # a host read: not allowed while capturing

    monkeypatch.setattr(graphed.steps, "graphed_body", syncing_body)
    stream = torch.cuda.current_stream()
    graphed.fit()
    assert graphed.steps.mode == "eager" and graphed.state.epoch == 1
    assert torch.cuda.current_stream() == stream
    printed = capsys.readouterr()
    assert "capturing the training step as a CUDA graph failed" in printed.out + printed.err
    eager = _image_trainer(tmp_path / "eager", epochs=1, cuda_graph=False)
    eager.fit()
    for (name, a), b in zip(eager.model.state_dict().items(), graphed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)
