"""The benchmark's measuring pieces (timings themselves are never asserted)."""

import math

import torch

from lunet.experiments.benchmarks.bench import PAPER, bench_model, markdown_table
from lunet.experiments.benchmarks.measure import Timing, time_call
from lunet.experiments.benchmarks.micro import micro_table, run_micro


def test_time_call_reports_median_and_range():
    calls = []
    t = time_call(lambda: calls.append(1), torch.device("cpu"), repeats=5, warmup=2)
    assert len(calls) == 7
    assert isinstance(t, Timing) and t.repeats == 5
    assert 0 <= t.low <= t.median <= t.high
    assert t.scaled(2.0).median == 2.0 * t.median


def test_micro_benchmark_reports_every_figure_beside_its_target():
    r = run_micro(features=32, num_blocks=2, repeats=3)
    for key in ("step_vs_dense", "density_vs_dense", "products_vs_dense", "sampling_vs_density", "sampling_batch1_ms",
                "step_ms"):
        assert math.isfinite(r[key]) and r[key] > 0, key
    assert r["sampling_batch1_fastest_ms"] <= r["sampling_batch1_ms"]
    table = micro_table(r)
    for target in ("<= 1.15", "<= 0.6", "<= 1.5", "< 1 ms", "the floor"):
        assert target in table
    # each ratio's row shows the reference timed in its own rounds
    assert f"density {r['density_beside_sampling_ms']:.1f} ms" in table
    assert f"dense forward GEMMs {r['dense_forward_beside_products_ms']:.1f} ms" in table
    # the CUDA-graph rows belong to a GPU: none on the CPU, the capture's figures or its failure there
    assert "CUDA graph" not in table and "captured_step_ms" not in r
    captured = micro_table({**r, "captured_step_ms": 0.9, "captured_dense_adam_ms": 0.5, "captured_step_vs_dense": 1.8})
    assert "| training step as one CUDA graph, batch 256 | 0.900 ms |" in captured and "<= 2, and <= 1 ms" in captured
    assert "capture failed: RuntimeError: no" in micro_table({**r, "captured_error": "RuntimeError: no"})
    # on the CPU, the compiled step beside the eager one (or why compiling failed)
    assert ("compiled_step_ms" in r) != ("compiled_error" in r)
    if "compiled_step_ms" in r:
        assert r["compiled_step_vs_eager"] > 0
        assert f"eager step {r['eager_step_beside_compiled_ms']:.1f} ms" in table
    assert "compiling failed: X" in micro_table({**r, "compiled_error": "X"})
    graphs = micro_table({**r, "captured_density_1000_ms": 0.2, "captured_dense_forward_1000_ms": 0.25,
                          "captured_density_vs_dense": 0.8, "captured_sampling_1000_ms": 0.3,
                          "captured_density_beside_sampling_ms": 0.2, "captured_sampling_vs_density": 1.5,
                          "captured_sampling_batch1_ms": 0.1})
    assert "| density as one CUDA graph, batch 1,000 | 0.200 ms |" in graphs and "| 0.800 | <= 1.0 |" in graphs
    assert "| sampling, batch 1, as one CUDA graph | 0.100 ms / image (median) | – | – | <= 0.15 ms |" in graphs
    assert "capture failed: E" in micro_table({**r, "captured_inference_error": "E"})
    # the spline LU-Net beside the paper's, each ratio from its own rounds
    spline = r["spline"]
    for key in ("step_vs_lunet", "step_vs_dense", "density_vs_lunet", "module_density_vs_lunet", "sampling_vs_lunet",
                "sampling_batch1_ms"):
        assert math.isfinite(spline[key]) and spline[key] > 0, key
    assert "paper's LU-Net" in table and "<= 1.25" in table
    assert f"{spline['lunet_density_beside_ms']:.1f} ms" in table


def test_lunet_figures_and_table_against_the_paper():
    lu = bench_model("lunet", torch.device("cpu"), quick=True, repeats=1, memory=False)
    assert lu["params"] == 4 * (784 * 784 + 784) and lu["params_stored"] == 4_920_384
    assert any("projected" in note for note in lu["notes"])
    for key in ("step_ms", "epoch_s", "density_ms_per_image", "sampling_ms_per_image_batch1"):
        assert lu[key] > 0
    # the projected epoch is exactly the step time times the steps of one epoch
    assert math.isclose(lu["epoch_s"], lu["step_ms"] / 1e3 * 235)
    fake = dict(lu, peak_memory_mib=100.0)
    result = {"models": {"lunet": fake, "realnvp": dict(fake, notes=["scaled"])},
              "ratios": {"step_ms": {"measured": 1.0,
                                     "paper": PAPER["lunet"]["step_ms"] / PAPER["realnvp"]["step_ms"]}}}
    table = markdown_table(result)
    assert "| lunet (ours) | realnvp (ours) | lunet (paper) | realnvp (paper) |" in table
    assert "3725" in table and "- realnvp: scaled" in table
