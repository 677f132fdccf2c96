"""The side-by-side benchmark of LU-Net and RealNVP (lunet.experiments.benchmarks.bench): the figures and
the table against the paper (timings themselves are never asserted)."""

import math

import torch

from lunet.experiments.benchmarks.bench import PAPER, bench_model, markdown_table


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
