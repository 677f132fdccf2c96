"""The side-by-side benchmark of LU-Net and RealNVP (the paper's Table 1).

Every figure is measured in one process run, on one device, with the batch
sizes stated; times are medians over repeats after warm-up, with the device
synchronised. Figures that are projected rather than measured say so in
their ``note``. Definitions: ``docs/benchmark.md``.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from lunet.density import Density
from lunet.experiments.benchmarks import measure
from lunet.experiments.benchmarks.measure import time_call, training_step
from lunet.experiments.config.models import build_model
from lunet.experiments.config.presets import paper_lunet_spec
from lunet.experiments.training.trainer import resolve_device
from lunet.flow import LUNet
from lunet.frozen import frozen_or_module

__all__ = ["TRAIN_IMAGES", "PAPER", "MODEL_SPECS", "memory_steps", "peak_training_memory_mib", "bench_model",
           "run_bench", "markdown_table"]

TRAIN_IMAGES = 60_000


PAPER = {
    "lunet": {"params": 4.92e6, "peak_memory_mib": 1127, "epochs": 40, "paper_bits_per_pixel": 3.2424, "epoch_s": 7.32,
              "step_ms": 1.2, "density_ms_per_image": 37.10, "sampling_ms_per_image": 45.15},
    "realnvp": {"params": 5.39e6, "peak_memory_mib": 3725, "epochs": 100, "paper_bits_per_pixel": 5.6819,
                "epoch_s": 99.88, "step_ms": 56.0, "density_ms_per_image": 259.15, "sampling_ms_per_image": 1.03},
}


MODEL_SPECS = {"lunet": paper_lunet_spec(), "realnvp": {"name": "realnvp"}}


def memory_steps(name: str, batch: int, device: str) -> Callable[[], Callable[[], None]]:
    """The steps whose memory :func:`peak_training_memory_mib` measures (a factory of
    :mod:`~lunet.experiments.benchmarks.measure`): the batch made first, then the model and its step."""
    x = torch.randn(batch, 784)

    def build() -> Callable[[], None]:
        from lunet.baselines.realnvp import RealNVP

        model = build_model(MODEL_SPECS[name]).to(device)
        assert isinstance(model, (LUNet, RealNVP))  # the models of MODEL_SPECS
        return training_step(model, x.to(device))

    return build


def peak_training_memory_mib(name: str, batch: int, device: str, steps: int = 2) -> float:
    """Peak memory of ``steps`` training steps at ``batch``, MiB, in a fresh child process so that the
    figure belongs to this model's training alone (:func:`~lunet.experiments.benchmarks.measure.memory_probe`)."""
    return measure.peak_training_memory_mib(f"{__name__}:memory_steps", [name, batch, device], device, steps, name)


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
    from lunet.baselines.realnvp import RealNVP

    torch.manual_seed(0)
    model = build_model(MODEL_SPECS[name]).to(device)
    assert isinstance(model, (LUNet, RealNVP))  # the models of MODEL_SPECS
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
    assert isinstance(inference, Density)  # a frozen LU-Net, RealNVP itself
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
        paper = (["–"] * len(names) if key is None or fmt is None or scale is None
                 else [fmt.format(PAPER[n][key] * scale) for n in names])
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
