"""The micro benchmark (``lunet bench --micro``): LU-Net's hot paths side by side in one process,
the training step eager, compiled and captured, the frozen flow's density and sampling, and the
spline LU-Net beside the paper's; ratios measured in one run are what it reports."""

from __future__ import annotations

import copy
import statistics
from typing import Any, Callable

import torch

from lunet.experiments.benchmarks.bench import MODEL_SPECS
from lunet.experiments.benchmarks.measure import captured_step, time_call, training_step
from lunet.experiments.config.errors import error_line
from lunet.experiments.config.models import build_model
from lunet.experiments.training.trainer import resolve_device
from lunet.fast import native
from lunet.flow import LUNet

__all__ = ["run_micro", "spline_lunet", "spline_table", "micro_table"]


def _captured_rows(model: LUNet, weights: list[torch.Tensor], x: torch.Tensor, paired) -> dict[str, Any]:
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
    """The frozen flow's density and sampling passes, each captured as a CUDA graph (value checks off),
    against the dense forward products captured the same way; ``{"captured_inference_error": ...}``
    if a capture fails."""
    from lunet.checks import set_value_checks
    from lunet.experiments.training.cuda_graph import CudaGraphCapture, warmed_capture

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


def _compiled_rows(model: LUNet, x: torch.Tensor, paired) -> dict[str, Any]:
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


def run_micro(device: str = "cpu", features: int = 784, num_blocks: int = 4, repeats: int = 20) -> dict[str, Any]:
    """LU-Net against the dense-GEMM limit of the same shapes, measured side by side.

    - training step at batch 256 vs the same dense GEMMs forward and backward
      (2 products per block: ``2 * num_blocks`` weight matrices, input not
      requiring grad), target ratio <= 1.15;
    - density (``log_prob`` of the frozen flow from :meth:`~lunet.LUNet.frozen`) at
      batch 1,000 vs ``2 * num_blocks`` dense forward GEMMs, target <= 0.6, and
      its floor: ``num_blocks`` dense products of the same shapes alone against
      the same reference; the module's own density pass (not frozen) against
      the frozen flow's;
    - sampling at batch 1,000 vs density, target <= 1.5; sampling at batch 1
      in ms per image, target < 1 (the median of its calls, and the fastest).

    The same network with spline activations (:func:`spline_lunet`) beside it, each ratio again
    from interleaved rounds (under ``"spline"``): its training step against this step (target
    <= 1.25) and against the dense products, its frozen flow's density and sampling at batch 1,000
    against this frozen flow's (targets <= 1.5), its module's density against this module's, and its
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
    assert isinstance(model, LUNet)  # MODEL_SPECS["lunet"] builds one
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
            "passes": native.status() if dev.type == "cpu" else "torch ops (on the GPU)",
        },
        **captured,
    }


def spline_lunet(features: int, num_blocks: int, device: torch.device, seed: int = 0) -> LUNet:
    """The paper's LU-Net with a monotone spline (8 bins on [-5, 5]) in place of each leaky softplus, its
    splines drawn away from the identity start (seeded), so that bins differ in width as trained ones do."""
    model = build_model({**MODEL_SPECS["lunet"], "features": features, "num_blocks": num_blocks,
                         "activation": "spline"}).to(device)
    assert isinstance(model, LUNet)  # MODEL_SPECS["lunet"] builds one
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
        ("frozen density, batch 1,000", f"{s['density_1000_ms']:.1f} ms", f"{s['lunet_density_beside_ms']:.1f} ms",
         s["density_vs_lunet"], "<= 1.5"),
        ("the module's own density, batch 1,000", f"{s['module_density_1000_ms']:.1f} ms",
         f"{s['lunet_module_density_beside_ms']:.1f} ms", s["module_density_vs_lunet"], "–"),
        ("frozen sampling, batch 1,000", f"{s['sampling_1000_ms']:.1f} ms",
         f"{s['lunet_sampling_beside_ms']:.1f} ms", s["sampling_vs_lunet"], "<= 1.5"),
        ("frozen sampling, batch 1 (median; fastest)",
         f"{s['sampling_batch1_ms']:.3f} ms ({s['sampling_batch1_fastest_ms']:.3f})",
         f"{s['lunet_sampling_batch1_ms']:.3f} ms", s["sampling_batch1_ms"] / s["lunet_sampling_batch1_ms"], "< 1 ms"),
    ]
    lines = ["| figure | spline LU-Net | paper's LU-Net | ratio | target |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d:.3f} | {e} |" for a, b, c, d, e in rows]
    if "passes" in s:
        lines += ["", f"The spline's passes: {s['passes']}."]
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
        ("density by the module itself (not frozen)", f"{r['module_density_1000_ms']:.1f} ms",
         f"frozen flow's density {r['frozen_density_beside_module_ms']:.1f} ms", r["module_density_vs_frozen"], "–"),
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
