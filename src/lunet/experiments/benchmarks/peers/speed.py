"""Speed and memory of a trained peer: density and sampling throughput, batch-1 sampling, peak
training memory, and a grid of samples."""

from __future__ import annotations

import base64
import importlib
import importlib.metadata
from typing import Any, Callable, Optional

import torch

from lunet.experiments.benchmarks import measure
from lunet.experiments.benchmarks.measure import time_call
from lunet.experiments.benchmarks.peers.models import MODELS, PeerModel, build
from lunet.experiments.benchmarks.peers.protocol import LOG, Protocol
from lunet.experiments.benchmarks.peers.report import format_params
from lunet.experiments.benchmarks.peers.spaces import PeerData
from lunet.experiments.benchmarks.peers.training import optimise_step

__all__ = ["memory_steps", "peak_training_memory_mib", "measure_speed", "grid_samples"]


def memory_steps(name: str, features: int, batch: int, lr: float, grad_clip: Optional[float], device: str,
                 registry: str) -> Callable[[], Callable[[], float]]:
    """The steps whose memory :func:`peak_training_memory_mib` measures (a factory of
    :mod:`~lunet.experiments.benchmarks.measure`): the batch made first, then the model, its
    optimiser and its step. ``registry``: the module that registers model ``name``, imported first."""
    importlib.import_module(registry)
    h, logdet = torch.randn(batch, features), torch.zeros(batch)

    def make() -> Callable[[], float]:
        model = build(name, features, None).to(device)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        on_device = h.to(device), logdet.to(device)
        return lambda: optimise_step(model, optimizer, *on_device, grad_clip)

    return make


def peak_training_memory_mib(name: str, features: int, protocol: Protocol) -> float:
    """Peak memory of ``protocol.memory_steps`` training steps of model ``name`` at the protocol's batch,
    MiB: weights, gradients, Adam's state and the activations of a step, measured in a fresh process
    as ``lunet bench`` measures it (:func:`~lunet.experiments.benchmarks.measure.memory_probe`)."""
    args = [name, features, protocol.batch_size, protocol.lr, protocol.grad_clip, protocol.device,
            MODELS[name].build.__module__]
    return measure.peak_training_memory_mib(f"{__name__}:memory_steps", args, protocol.device,
                                            protocol.memory_steps, name)


def _rows(h: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows of ``h``, repeated if it has fewer."""
    return h[:n] if h.shape[0] >= n else h.repeat(-(-n // h.shape[0]), 1)[:n]


def _timed_sampling(inference: Any, n: int, projected: float, cap: float, repeats: int,
                    device: torch.device) -> dict[str, Any]:
    """Time ``inference.sample(n)``: as many calls (up to ``repeats``) as the projection lets fit in ``cap``."""
    calls = max(1, min(repeats, int(cap / max(projected, 1e-9)) // 2))
    warmup = 1 if projected * (calls + 1) <= cap else 0
    with torch.no_grad():
        t = time_call(lambda: inference.sample(n), device, repeats=calls, warmup=warmup)
    return {"batch": n, "calls": calls, "warmup_calls": warmup, "seconds": t.median, "per_s": n / t.median,
            "ms_per_sample": t.median / n * 1e3, "projected_s": projected}


def measure_speed(name: str, model: PeerModel, data: PeerData, protocol: Protocol,
                  log: Optional[LOG] = None) -> dict[str, Any]:
    """Parameters, peak training memory, density throughput (batch ``protocol.density_batch``) and
    latency (batch 1), sampling throughput at the largest of 1,000 / 100 / 10 whose projected time
    fits ``protocol.sample_cap_s``, and batch-1 sampling latency.

    The projection (``sampling_passes`` × the density time of that batch) only decides whether to
    measure; every figure reported is measured, with its batch and number of calls. What did not fit
    is reported as not measured, with its projection."""
    device = torch.device(protocol.device)
    model.eval()
    inference = model.inference()
    counts = model.num_parameters()
    out: dict[str, Any] = {"params": counts["stored"], "params_free": counts["free"],
                           "sampling_passes": model.sampling_passes, "notes": []}
    out["peak_train_memory_mib"] = None
    if protocol.measure_memory:
        try:
            out["peak_train_memory_mib"] = peak_training_memory_mib(name, data.features, protocol)
        except RuntimeError as exc:
            out["notes"].append(str(exc))
    else:
        out["notes"].append("peak training memory not measured (measure_memory=False)")
    h = data.test[0]
    batch = protocol.density_batch
    x = _rows(h, batch)
    with torch.no_grad():
        t = time_call(lambda: inference.log_prob(x), device, repeats=protocol.speed_repeats)
        t1 = time_call(lambda: inference.log_prob(x[:1]), device, repeats=protocol.speed_repeats)
    out["density"] = {"batch": batch, "calls": protocol.speed_repeats, "seconds": t.median, "per_s": batch / t.median}
    out["density_batch1_ms"] = t1.median * 1e3
    cap, passes = protocol.sample_cap_s, model.sampling_passes
    projected1 = passes * t1.median
    if projected1 <= cap:
        out["sampling_batch1"] = _timed_sampling(inference, 1, projected1, cap, 5, device)
    else:
        out["sampling_batch1"] = {"per_s": None, "projected_s": projected1,
                                  "why": f"projected {projected1:.0f} s over the cap of {cap:g} s"}
    out["sampling"] = {"per_s": None}
    for n in (1000, 100, 10):
        if n == batch:
            t_n = t.median
        else:
            with torch.no_grad():
                t_n = time_call(lambda: inference.log_prob(_rows(h, n)), device, repeats=1).median
        projected = passes * t_n
        if projected <= cap:
            out["sampling"] = _timed_sampling(inference, n, projected, cap, protocol.speed_repeats, device)
            break
        out["sampling"] = {"per_s": None, "batch": n, "projected_s": projected,
                           "why": f"projected {projected:.0f} s at batch {n} over the cap of {cap:g} s"}
    if log:
        log(f"  speed: {_speed_line(out)}")
    return out


def grid_samples(model: PeerModel, data: PeerData, protocol: Protocol) -> dict[str, Any]:
    """``protocol.grid_samples`` images drawn from ``model`` (seeded) as base64 uint8 pixels, if their
    projected time fits the sampling cap; else why not."""
    n = protocol.grid_samples
    inference = model.inference()
    device = torch.device(protocol.device)
    with torch.no_grad():
        projected = model.sampling_passes * time_call(
            lambda: inference.log_prob(_rows(data.test[0], n)), device, repeats=1, warmup=0).median
    if projected > protocol.sample_cap_s:
        return {"pixels_b64": None, "why": f"projected {projected:.0f} s over the cap of {protocol.sample_cap_s:g} s"}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(protocol.seed)
        with torch.no_grad():
            h = inference.sample(n)
    bad = int((~torch.isfinite(h)).any(dim=-1).sum())
    if bad:  # a draw that overflowed has no picture; the model's figures stand without one
        return {"pixels_b64": None, "why": f"{bad} of {n} samples hold non-finite values"}
    y = data.space.to_data(h.float()).cpu()
    pixels = torch.nan_to_num(y * 256, nan=0.0).floor().clamp(0, 255).to(torch.uint8)
    return {"pixels_b64": base64.b64encode(pixels.numpy().tobytes()).decode(), "count": n, "shape": list(pixels.shape)}


def _speed_line(s: dict[str, Any]) -> str:
    sampling = s["sampling"]
    one = s["sampling_batch1"]
    mem = s.get("peak_train_memory_mib")
    return (f"{format_params(s['params'])} params, peak training memory "
            + ("—" if mem is None else f"{mem:.0f} MiB")
            + f", density {s['density']['per_s']:,.0f}/s, sampling "
            + (f"{sampling['per_s']:,.1f}/s (batch {sampling['batch']})" if sampling.get("per_s") else "not measured")
            + ", batch-1 sampling " + (f"{one['seconds'] * 1e3:,.1f} ms" if one.get("per_s") else "not measured"))
