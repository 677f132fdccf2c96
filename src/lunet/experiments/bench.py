"""The side-by-side benchmark of LU-Net and RealNVP (the paper's Table 1).

Every figure is measured in one process run, on one device, with the batch
sizes stated; times are medians over repeats after warm-up, with the device
synchronised. Figures that are projected rather than measured say so in
their ``note``. Definitions: ``docs/benchmark.md``.
"""

from __future__ import annotations

import copy
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import nn

from lunet.experiments.checkpoint import error_line
from lunet.experiments.models import build_model
from lunet.experiments.settings import paper_lunet_spec
from lunet.experiments.train import resolve_device
from lunet.frozen import frozen_or_module

TRAIN_IMAGES = 60_000
PAPER = {
    "lunet": {"params": 4.92e6, "peak_memory_mib": 1127, "epochs": 40, "paper_bits_per_pixel": 3.2424, "epoch_s": 7.32,
              "step_ms": 1.2, "density_ms_per_image": 37.10, "sampling_ms_per_image": 45.15},
    "realnvp": {"params": 5.39e6, "peak_memory_mib": 3725, "epochs": 100, "paper_bits_per_pixel": 5.6819,
                "epoch_s": 99.88, "step_ms": 56.0, "density_ms_per_image": 259.15, "sampling_ms_per_image": 1.03},
}
MODEL_SPECS = {"lunet": paper_lunet_spec(), "realnvp": {"name": "realnvp"}}


@dataclass
class Timing:
    """Median and range of repeated wall times, in seconds."""

    median: float
    low: float
    high: float
    repeats: int

    def scaled(self, factor: float) -> "Timing":
        return Timing(self.median * factor, self.low * factor, self.high * factor, self.repeats)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> Timing:
    """Wall time of ``fn()`` with the device synchronised: median, min, max over ``repeats``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return Timing(statistics.median(times), min(times), max(times), repeats)


def training_step(model: nn.Module, batch: torch.Tensor, compiled: bool = False) -> Callable[..., None]:
    """A closure doing one optimisation step (forward, loss, backward, Adam update) on ``batch`` or a given one.

    Uses the fused Adam kernel and skips the value checks, as the trainer's steps do;
    ``compiled``: the loss through ``torch.compile``, as ``lunet train --compile`` has it."""
    from lunet.checks import set_value_checks

    opt = torch.optim.Adam(model.parameters(), lr=1e-5, fused=True)

    def loss_of(x: torch.Tensor) -> torch.Tensor:
        return -model.log_prob(x).mean()

    loss_fn = torch.compile(loss_of) if compiled else loss_of

    def step(x: torch.Tensor = batch) -> None:
        with set_value_checks(False):
            loss = loss_fn(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def captured_step(loss_of: Callable[[torch.Tensor], torch.Tensor], params: list[torch.Tensor],
                  batch: torch.Tensor) -> Callable[[], None]:
    """One optimisation step on a CUDA ``batch`` (``loss_of(batch)``, backward, fused capturable Adam)
    captured as one CUDA graph; returns its replay. Raises what the capture raises (an operation that
    waits for the host, say)."""
    from lunet.experiments.steps import CudaGraphCapture, prepare_for_capture, warmed_capture

    opt = torch.optim.Adam(params, lr=1e-5, fused=True)
    prepare_for_capture(opt, batch.device, capturable=True)  # as the trainer's captured steps have it
    static = batch.clone()

    def body() -> None:
        loss_of(static).backward()
        opt.step()

    return warmed_capture(CudaGraphCapture(batch.device), body, lambda: opt.zero_grad(set_to_none=True))


def _captured_rows(model: nn.Module, weights: list[torch.Tensor], x: torch.Tensor, paired) -> dict[str, Any]:
    """The LU-Net training step and the dense products' Adam step, each captured as a CUDA graph,
    timed side by side; ``{"captured_error": ...}`` if a capture fails."""
    from lunet.checks import set_value_checks

    lunet_copy = copy.deepcopy(model).train()
    dense = [w.detach().clone().requires_grad_(True) for w in weights]

    def lunet_loss(batch: torch.Tensor) -> torch.Tensor:
        return -lunet_copy.log_prob(batch).mean()

    def dense_loss(batch: torch.Tensor) -> torch.Tensor:
        h = batch
        for w in dense:
            h = h @ w
        return h.square().mean()

    try:
        with set_value_checks(False):  # the checks read values back to the host, which a capture cannot
            lunet_step = captured_step(lunet_loss, list(lunet_copy.parameters()), x)
        dense_step = captured_step(dense_loss, dense, x)
    except Exception as exc:  # noqa: BLE001 (reported in the table, not hidden)
        return {"captured_error": error_line(exc)}
    t_lunet, t_dense, ratio = paired(lunet_step, dense_step)
    return {"captured_step_ms": t_lunet * 1e3, "captured_dense_adam_ms": t_dense * 1e3, "captured_step_vs_dense": ratio}


def _captured_inference_rows(frozen: Any, weights: list[torch.Tensor], x: torch.Tensor, paired,
                             repeats: int) -> dict[str, Any]:
    """The snapshot's density and sampling passes, each captured as a CUDA graph (value checks off),
    against the dense forward products captured the same way; ``{"captured_inference_error": ...}``
    if a capture fails."""
    from lunet.checks import set_value_checks
    from lunet.experiments.steps import CudaGraphCapture, warmed_capture

    static = x.clone()
    dense = [w.detach() for w in weights]

    def dense_forward() -> None:
        h = static
        for w in dense:
            h = h @ w

    passes = {
        "density": lambda: frozen.log_prob(static),
        "dense": dense_forward,
        "sampling": lambda: frozen.sample(static.shape[0]),
        "sampling1": lambda: frozen.sample(1),
    }
    capture = CudaGraphCapture(x.device)
    try:
        with torch.no_grad(), set_value_checks(False):
            replays = {name: warmed_capture(capture, fn) for name, fn in passes.items()}
    except Exception as exc:  # noqa: BLE001 (reported in the table, not hidden)
        return {"captured_inference_error": error_line(exc)}
    t_density, t_dense, r_density = paired(replays["density"], replays["dense"])
    t_sampling, t_density_beside, r_sampling = paired(replays["sampling"], replays["density"])
    t_one = time_call(replays["sampling1"], x.device, repeats * 5)
    return {
        "captured_density_1000_ms": t_density * 1e3, "captured_dense_forward_1000_ms": t_dense * 1e3,
        "captured_density_vs_dense": r_density, "captured_sampling_1000_ms": t_sampling * 1e3,
        "captured_density_beside_sampling_ms": t_density_beside * 1e3, "captured_sampling_vs_density": r_sampling,
        "captured_sampling_batch1_ms": t_one.median * 1e3,
    }


def _compiled_rows(model: nn.Module, x: torch.Tensor, paired) -> dict[str, Any]:
    """The training step with its loss through ``torch.compile`` against the eager step, timed side by
    side on copies of ``model``; ``{"compiled_error": ...}`` if compiling fails."""
    eager = training_step(copy.deepcopy(model).train(), x)
    compiled = training_step(copy.deepcopy(model).train(), x, compiled=True)
    try:
        compiled()  # the compiler's wait, outside the timing
    except Exception as exc:  # noqa: BLE001 (reported in the table, not hidden)
        return {"compiled_error": error_line(exc)}
    t_compiled, t_eager, ratio = paired(compiled, eager)
    return {"compiled_step_ms": t_compiled * 1e3, "eager_step_beside_compiled_ms": t_eager * 1e3,
            "compiled_step_vs_eager": ratio}


def peak_training_memory_mib(name: str, batch: int, device: str, steps: int = 2) -> float:
    """Peak memory of ``steps`` training steps at ``batch``.

    CUDA: ``max_memory_allocated``. CPU: peak resident set (VmHWM) of a fresh
    child process, reset after imports, minus its resident set before the model
    existed, so the figure belongs to this model's training alone.
    """
    code = (
        "import json\n"
        "from lunet.experiments.bench import _memory_probe\n"
        f"print(json.dumps(_memory_probe({name!r}, {batch}, {device!r}, {steps})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _memory_probe(name: str, batch: int, device: str, steps: int) -> float:
    dev = torch.device(device)
    torch.manual_seed(0)
    x = torch.randn(batch, 784)
    if dev.type == "cpu":
        # Reset the high-water mark (Linux: "5" > clear_refs), so that the peak
        # counts from here and not from importing torch.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        before = _proc_status_kib("VmRSS")
    model = build_model(MODEL_SPECS[name]).to(dev)
    x = x.to(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    step = training_step(model, x)
    for _ in range(steps):
        step()
    _sync(dev)
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    return (_proc_status_kib("VmHWM") - before) / 1024


def bench_model(
    name: str,
    device: torch.device,
    quick: bool,
    step_batch: int = 256,
    density_batch: int = 1000,
    repeats: int = 5,
    memory: bool = True,
    measure_batch_override: Optional[dict[str, int]] = None,
) -> dict[str, Any]:
    """All Table-1 figures of one model; ``measure_batch_override`` measures the
    batch-256 step and batch-1,000 density/sampling at smaller batches and
    scales per image (labelled in ``notes``)."""
    torch.manual_seed(0)
    model = build_model(MODEL_SPECS[name]).to(device)
    override = measure_batch_override or {}
    notes = []
    result: dict[str, Any] = {
        "params": model.num_parameters("free"),
        "params_stored": model.num_parameters("stored"),
    }

    sb = override.get("step", step_batch)
    step = training_step(model, torch.randn(sb, 784, device=device))
    t_step = time_call(step, device, repeats=repeats if sb == step_batch else max(1, repeats // 2))
    if sb != step_batch:
        notes.append(f"step measured at batch {sb} and scaled by {step_batch}/{sb}")
        t_step = t_step.scaled(step_batch / sb)
    result["step_ms"] = t_step.median * 1e3
    result["step_ms_range"] = [t_step.low * 1e3, t_step.high * 1e3]
    steps_per_epoch = -(-TRAIN_IMAGES // step_batch)
    if quick:
        result["epoch_s"] = t_step.median * steps_per_epoch
        notes.append(f"epoch projected from the step time x {steps_per_epoch} steps")
    else:
        data = torch.randn(TRAIN_IMAGES, 784, device=device)
        full_step = training_step(model, data[:step_batch])

        def epoch() -> None:
            for start in range(0, TRAIN_IMAGES, step_batch):
                full_step(data[start : start + step_batch])

        result["epoch_s"] = time_call(epoch, device, repeats=1, warmup=0).median
    model.eval()
    inference = frozen_or_module(model)
    for label, batch in (("", override.get("density", density_batch)), ("_batch1", 1)):
        x = torch.randn(batch, 784, device=device)
        with torch.no_grad():
            t_density = time_call(lambda: inference.log_prob(x), device, repeats=repeats)
            t_sample = time_call(lambda: inference.sample(batch), device, repeats=repeats)
        result[f"density_ms_per_image{label}"] = t_density.median / batch * 1e3
        result[f"sampling_ms_per_image{label}"] = t_sample.median / batch * 1e3
        if label == "" and batch != density_batch:
            notes.append(f"density and sampling per image measured at batch {batch} instead of {density_batch}")
    if memory:
        mem_batch = override.get("memory", step_batch)
        result["peak_memory_mib"] = peak_training_memory_mib(name, mem_batch, str(device))
        if mem_batch != step_batch:
            notes.append(f"peak memory measured at batch {mem_batch}")
    result["notes"] = notes
    return result


def run_bench(
    device: str = "cpu", quick: bool = False, models: tuple[str, ...] = ("lunet", "realnvp")
) -> dict[str, Any]:
    """Both models, one process; returns ``{"device", "threads", "quick", "models": {...}, "ratios": {...}}``."""
    dev = resolve_device(device)
    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "quick": quick,
        "models": {},
    }
    for name in models:
        override = None
        if name == "realnvp" and quick and dev.type == "cpu":
            # A RealNVP step at batch 256 takes tens of seconds on 2 CPU cores.
            override = {"step": 16, "density": 50, "memory": 64}
        out["models"][name] = bench_model(name, dev, quick, repeats=3 if quick else 5, measure_batch_override=override)
    if {"lunet", "realnvp"} <= set(out["models"]):
        lu, nvp = out["models"]["lunet"], out["models"]["realnvp"]
        out["ratios"] = {
            key: {"measured": lu[key] / nvp[key], "paper": PAPER["lunet"][key] / PAPER["realnvp"][key]}
            for key in ("step_ms", "epoch_s", "density_ms_per_image", "sampling_ms_per_image", "peak_memory_mib")
            if key in lu and key in nvp
        }
    return out


def markdown_table(result: dict[str, Any]) -> str:
    """The benchmark as a Markdown table, the paper's figures beside ours."""
    names = list(result["models"])
    rows = [
        ("parameters (free / stored)", lambda m: f"{m['params'] / 1e6:.2f}M / {m['params_stored'] / 1e6:.2f}M",
         "params", "{:.2f}M", 1e-6),
        ("peak training memory, MiB", lambda m: f"{m.get('peak_memory_mib', float('nan')):.0f}",
         "peak_memory_mib", "{:.0f}", 1),
        ("step, batch 256, ms",
         lambda m: f"{m['step_ms']:.1f} ({m['step_ms_range'][0]:.1f}–{m['step_ms_range'][1]:.1f})",
         "step_ms", "{:.1f}", 1),
        ("epoch of 60,000, s", lambda m: f"{m['epoch_s']:.1f}", "epoch_s", "{:.2f}", 1),
        ("density / image, batch 1,000, ms", lambda m: f"{m['density_ms_per_image']:.3f}",
         "density_ms_per_image", "{:.2f}", 1),
        ("density / image, batch 1, ms", lambda m: f"{m['density_ms_per_image_batch1']:.3f}", None, None, None),
        ("sampling / image, batch 1,000, ms", lambda m: f"{m['sampling_ms_per_image']:.3f}",
         "sampling_ms_per_image", "{:.2f}", 1),
        ("sampling / image, batch 1, ms", lambda m: f"{m['sampling_ms_per_image_batch1']:.3f}", None, None, None),
    ]
    head = ("| figure | " + " | ".join(f"{n} (ours)" for n in names) + " | "
            + " | ".join(f"{n} (paper)" for n in names) + " |")
    lines = [head, "|" + " --- |" * (1 + 2 * len(names))]
    for label, ours, key, fmt, scale in rows:
        paper = [fmt.format(PAPER[n][key] * scale) if key else "–" for n in names]
        lines.append(f"| {label} | " + " | ".join(ours(result["models"][n]) for n in names) + " | "
                     + " | ".join(paper) + " |")
    text = "\n".join(lines)
    if "ratios" in result:
        text += "\n\n| LU-Net / RealNVP | measured | paper |\n| --- | --- | --- |\n"
        text += "\n".join(f"| {k} | {v['measured']:.3g} | {v['paper']:.3g} |" for k, v in result["ratios"].items())
    notes = [f"- {n}: {note}" for n in names for note in result["models"][n]["notes"]]
    if notes:
        text += "\n\nNotes:\n" + "\n".join(notes)
    return text


def run_micro(device: str = "cpu", features: int = 784, num_blocks: int = 4, repeats: int = 20) -> dict[str, Any]:
    """LU-Net against the dense-GEMM limit of the same shapes, measured side by side.

    - training step at batch 256 vs the same dense GEMMs forward and backward
      (2 products per block: ``2 * num_blocks`` weight matrices, input not
      requiring grad), target ratio <= 1.15;
    - density (the :meth:`~lunet.LUNet.frozen` snapshot's ``log_prob``) at
      batch 1,000 vs ``2 * num_blocks`` dense forward GEMMs, target <= 0.6, and
      its floor: ``num_blocks`` dense products of the same shapes alone against
      the same reference; the module's own density pass (no snapshot) against
      the snapshot's;
    - sampling at batch 1,000 vs density, target <= 1.5; sampling at batch 1
      in ms per image, target < 1 (the median of its calls, and the fastest).

    The same network with spline activations (:func:`spline_lunet`) beside it, each ratio again
    from interleaved rounds (under ``"spline"``): its training step against this step (target
    <= 1.25) and against the dense products, its snapshot's density and sampling at batch 1,000
    against this snapshot's (targets <= 1.5), its module's density against this module's, and its
    batch-1 sampling (target < 1 ms).

    On the CPU also the step with its loss through ``torch.compile`` against the
    eager step; on a GPU the training step, the density and the sampling passes
    each captured as one CUDA graph, against their references captured the same way.

    Each ratio is the median over ``repeats`` rounds that time both sides
    back to back; each row reports the reference's median from its own rounds
    (``dense_forward_beside_products_ms``, ``density_beside_sampling_ms``), as
    the machine's speed drifts between rows.
    """
    dev = resolve_device(device)
    torch.manual_seed(0)
    model = build_model({**MODEL_SPECS["lunet"], "features": features, "num_blocks": num_blocks}).to(dev)
    weights = [torch.randn(features, features, device=dev, requires_grad=True) for _ in range(2 * num_blocks)]

    def dense_chain(x: torch.Tensor, backward: bool) -> None:
        h = x
        for w in weights:
            h = h @ w
        if backward:
            h.sum().backward()

    x256 = torch.randn(256, features, device=dev)
    x1000 = torch.randn(1000, features, device=dev)
    step = training_step(model, x256)

    def paired(fn_a: Callable[[], Any], fn_b: Callable[[], Any]) -> tuple[float, float, float]:
        """Medians of a and b timed alternately, and the median of the per-round ratios a/b:
        alternating keeps slow drifts of a noisy machine out of the ratio."""
        for _ in range(2):
            fn_a(), fn_b()
        ta, tb = [], []
        for _ in range(repeats):
            ta.append(time_call(fn_a, dev, 1, warmup=0).median)
            tb.append(time_call(fn_b, dev, 1, warmup=0).median)
        ratio = statistics.median(x / y for x, y in zip(ta, tb))
        return statistics.median(ta), statistics.median(tb), ratio

    t_step, t_dense_train, r_step = paired(step, lambda: dense_chain(x256, True))
    spline_model = spline_lunet(features, num_blocks, dev)
    spline_step = training_step(spline_model, x256)
    t_spline_step, t_step_beside_spline, r_spline_step = paired(spline_step, step)
    t_spline_step_dense, t_dense_beside_spline, r_spline_dense = paired(spline_step, lambda: dense_chain(x256, True))
    # on a GPU the trainer replays its steps as CUDA graphs; on the CPU the question is whether compiling pays
    captured = (_captured_rows(model, weights, x256, paired) if dev.type == "cuda"
                else _compiled_rows(model, x256, paired))
    model.eval()
    frozen = model.frozen()
    with torch.no_grad():
        t_density, t_dense_fwd, r_density = paired(lambda: frozen.log_prob(x1000), lambda: dense_chain(x1000, False))
        t_module_density, t_frozen_density, r_module = paired(lambda: model.log_prob(x1000),
                                                              lambda: frozen.log_prob(x1000))
        # the floor of a folded pass: one dense product per block, the activations left out
        products = [(torch.randn(features, features, device=dev).t().contiguous().t(),
                     torch.randn(features, device=dev))
                    for _ in range(num_blocks)]

        def products_alone() -> None:
            h = x1000
            for weight, bias in products:
                h = torch.addmm(bias, h, weight)

        t_products, t_dense_beside_products, r_products = paired(products_alone, lambda: dense_chain(x1000, False))
        t_sample, t_density_beside_sampling, r_sample = paired(lambda: frozen.sample(1000),
                                                               lambda: frozen.log_prob(x1000))
        t_sample1 = time_call(lambda: frozen.sample(1), dev, repeats * 5)
        spline_model.eval()
        spline_frozen = spline_model.frozen()
        t_spline_density, t_density_beside_spline, r_spline_density = paired(
            lambda: spline_frozen.log_prob(x1000), lambda: frozen.log_prob(x1000))
        t_spline_module, t_module_beside_spline, r_spline_module = paired(
            lambda: spline_model.log_prob(x1000), lambda: model.log_prob(x1000))
        t_spline_sample, t_sample_beside_spline, r_spline_sample = paired(
            lambda: spline_frozen.sample(1000), lambda: frozen.sample(1000))
        t_spline_sample1 = time_call(lambda: spline_frozen.sample(1), dev, repeats * 5)
    if dev.type == "cuda":
        captured.update(_captured_inference_rows(frozen, weights, x1000, paired, repeats))
    return {
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "rounds": repeats,
        "dense_train_ms": t_dense_train * 1e3,
        "step_ms": t_step * 1e3,
        "step_vs_dense": r_step,
        "dense_forward_1000_ms": t_dense_fwd * 1e3,
        "density_1000_ms": t_density * 1e3,
        "density_vs_dense": r_density,
        "products_1000_ms": t_products * 1e3,
        "dense_forward_beside_products_ms": t_dense_beside_products * 1e3,
        "products_vs_dense": r_products,
        "module_density_1000_ms": t_module_density * 1e3,
        "frozen_density_beside_module_ms": t_frozen_density * 1e3,
        "module_density_vs_frozen": r_module,
        "sampling_1000_ms": t_sample * 1e3,
        "density_beside_sampling_ms": t_density_beside_sampling * 1e3,
        "sampling_vs_density": r_sample,
        "sampling_batch1_ms": t_sample1.median * 1e3,
        "sampling_batch1_fastest_ms": t_sample1.low * 1e3,
        "spline": {
            "step_ms": t_spline_step * 1e3,
            "lunet_step_beside_ms": t_step_beside_spline * 1e3,
            "step_vs_lunet": r_spline_step,
            "step_beside_dense_ms": t_spline_step_dense * 1e3,
            "dense_train_beside_ms": t_dense_beside_spline * 1e3,
            "step_vs_dense": r_spline_dense,
            "density_1000_ms": t_spline_density * 1e3,
            "lunet_density_beside_ms": t_density_beside_spline * 1e3,
            "density_vs_lunet": r_spline_density,
            "module_density_1000_ms": t_spline_module * 1e3,
            "lunet_module_density_beside_ms": t_module_beside_spline * 1e3,
            "module_density_vs_lunet": r_spline_module,
            "sampling_1000_ms": t_spline_sample * 1e3,
            "lunet_sampling_beside_ms": t_sample_beside_spline * 1e3,
            "sampling_vs_lunet": r_spline_sample,
            "sampling_batch1_ms": t_spline_sample1.median * 1e3,
            "sampling_batch1_fastest_ms": t_spline_sample1.low * 1e3,
            "lunet_sampling_batch1_ms": t_sample1.median * 1e3,
        },
        **captured,
    }


def spline_lunet(features: int, num_blocks: int, device: torch.device, seed: int = 0) -> nn.Module:
    """The paper's LU-Net with a monotone spline (8 bins on [-5, 5]) in place of each leaky softplus, its
    splines drawn away from the identity start (seeded), so that bins differ in width as trained ones do."""
    model = build_model({**MODEL_SPECS["lunet"], "features": features, "num_blocks": num_blocks,
                         "activation": "spline"}).to(device)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for spline in model.activations:
            for p in spline.parameters():
                p.add_(0.5 * torch.randn(p.shape, generator=generator).to(p))
    return model


def spline_table(r: dict[str, Any]) -> str:
    """The spline LU-Net beside the paper's LU-Net (and the training step beside the dense products),
    as Markdown with each ratio's target."""
    s = r["spline"]
    rows = [
        ("training step, batch 256", f"{s['step_ms']:.1f} ms", f"{s['lunet_step_beside_ms']:.1f} ms",
         s["step_vs_lunet"], "<= 1.25"),
        ("training step against the dense GEMMs fwd+bwd", f"{s['step_beside_dense_ms']:.1f} ms",
         f"dense {s['dense_train_beside_ms']:.1f} ms", s["step_vs_dense"], "–"),
        ("snapshot density, batch 1,000", f"{s['density_1000_ms']:.1f} ms", f"{s['lunet_density_beside_ms']:.1f} ms",
         s["density_vs_lunet"], "<= 1.5"),
        ("the module's own density, batch 1,000", f"{s['module_density_1000_ms']:.1f} ms",
         f"{s['lunet_module_density_beside_ms']:.1f} ms", s["module_density_vs_lunet"], "–"),
        ("snapshot sampling, batch 1,000", f"{s['sampling_1000_ms']:.1f} ms",
         f"{s['lunet_sampling_beside_ms']:.1f} ms", s["sampling_vs_lunet"], "<= 1.5"),
        ("snapshot sampling, batch 1 (median; fastest)",
         f"{s['sampling_batch1_ms']:.3f} ms ({s['sampling_batch1_fastest_ms']:.3f})",
         f"{s['lunet_sampling_batch1_ms']:.3f} ms", s["sampling_batch1_ms"] / s["lunet_sampling_batch1_ms"], "< 1 ms"),
    ]
    lines = ["| figure | spline LU-Net | paper's LU-Net | ratio | target |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d:.3f} | {e} |" for a, b, c, d, e in rows]
    return "\n".join(lines)


def micro_table(r: dict[str, Any]) -> str:
    """The micro-benchmark as Markdown, each figure beside its target."""
    rows = [
        ("training step, batch 256", f"{r['step_ms']:.1f} ms",
         f"dense GEMMs fwd+bwd {r['dense_train_ms']:.1f} ms", r["step_vs_dense"], "<= 1.15"),
        ("density, batch 1,000", f"{r['density_1000_ms']:.1f} ms",
         f"dense forward GEMMs {r['dense_forward_1000_ms']:.1f} ms", r["density_vs_dense"], "<= 0.6"),
        ("its 4 products alone (the floor)", f"{r['products_1000_ms']:.1f} ms",
         f"dense forward GEMMs {r['dense_forward_beside_products_ms']:.1f} ms", r["products_vs_dense"], "–"),
        ("density by the module itself (no snapshot)", f"{r['module_density_1000_ms']:.1f} ms",
         f"snapshot's density {r['frozen_density_beside_module_ms']:.1f} ms", r["module_density_vs_frozen"], "–"),
        ("sampling, batch 1,000", f"{r['sampling_1000_ms']:.1f} ms",
         f"density {r['density_beside_sampling_ms']:.1f} ms", r["sampling_vs_density"], "<= 1.5"),
    ]
    if "captured_step_ms" in r:
        rows.insert(1, ("training step as one CUDA graph, batch 256", f"{r['captured_step_ms']:.3f} ms",
                        f"dense GEMMs with Adam as one CUDA graph {r['captured_dense_adam_ms']:.3f} ms",
                        r["captured_step_vs_dense"], "<= 2, and <= 1 ms"))
    if "captured_density_1000_ms" in r:
        rows += [
            ("density as one CUDA graph, batch 1,000", f"{r['captured_density_1000_ms']:.3f} ms",
             f"dense forward GEMMs as one CUDA graph {r['captured_dense_forward_1000_ms']:.3f} ms",
             r["captured_density_vs_dense"], "<= 1.0"),
            ("sampling as one CUDA graph, batch 1,000", f"{r['captured_sampling_1000_ms']:.3f} ms",
             f"density as one CUDA graph {r['captured_density_beside_sampling_ms']:.3f} ms",
             r["captured_sampling_vs_density"], "<= 1.5"),
        ]
    if "compiled_step_ms" in r:
        rows.insert(1, ("training step, loss compiled (torch.compile)", f"{r['compiled_step_ms']:.1f} ms",
                        f"eager step {r['eager_step_beside_compiled_ms']:.1f} ms", r["compiled_step_vs_eager"],
                        "< 1 to pay"))
    lines = ["| figure | LU-Net | reference | ratio | target |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d:.3f} | {e} |" for a, b, c, d, e in rows]
    if "compiled_error" in r:
        lines.append(f"| training step, loss compiled | compiling failed: {r['compiled_error']} | – | – | – |")
    if "captured_error" in r:
        lines.append(f"| training step as one CUDA graph | capture failed: {r['captured_error']} | – | – | – |")
    if "captured_inference_error" in r:
        lines.append(
            f"| density and sampling as CUDA graphs | capture failed: {r['captured_inference_error']} | – | – | – |"
        )
    lines.append(
        f"| sampling, batch 1 | {r['sampling_batch1_ms']:.3f} ms / image (median; fastest "
        f"{r['sampling_batch1_fastest_ms']:.3f}) | – | – | < 1 ms |"
    )
    if "captured_sampling_batch1_ms" in r:
        lines.append(f"| sampling, batch 1, as one CUDA graph | {r['captured_sampling_batch1_ms']:.3f} ms / image "
                     f"(median) | – | – | <= 0.15 ms |")
    text = "\n".join(lines)
    if "spline" in r:
        text += "\n\nThe spline LU-Net (activation=\"spline\") beside the paper's LU-Net:\n\n" + spline_table(r)
    return text
