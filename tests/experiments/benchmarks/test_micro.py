"""The micro benchmark (lunet.experiments.benchmarks.micro): every figure beside its target, in its own
rounds (timings themselves are never asserted)."""

import math

from lunet.experiments.benchmarks.micro import micro_table, run_micro


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
