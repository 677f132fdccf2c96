"""The benchmarks' measuring module (lunet.experiments.benchmarks.measure): wall times and the peak memory
of steps in a fresh process (timings themselves are never asserted)."""

import os
import sys
import textwrap

import pytest
import torch

from lunet.experiments.benchmarks.measure import Timing, peak_training_memory_mib, time_call

FACTORY = """
import torch

def steps(mib):
    kept = []

    def build():
        def step():
            kept.append(torch.ones(mib * 2**18))  # mib MiB of float32, touched

        return step

    return build

def broken():
    raise ValueError("no such model")
"""


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "probe_factory.py").write_text(textwrap.dedent(FACTORY))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    return "probe_factory"


def test_time_call_synchronises_and_scales():
    calls = []
    t = time_call(lambda: calls.append(1), torch.device("cpu"), repeats=3, warmup=1)
    assert len(calls) == 4 and t.low <= t.median <= t.high
    assert t.scaled(2.0) == Timing(2 * t.median, 2 * t.low, 2 * t.high, 3)


def test_time_call_reports_median_and_range():
    calls = []
    t = time_call(lambda: calls.append(1), torch.device("cpu"), repeats=5, warmup=2)
    assert len(calls) == 7
    assert isinstance(t, Timing) and t.repeats == 5
    assert 0 <= t.low <= t.median <= t.high
    assert t.scaled(2.0).median == 2.0 * t.median


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU probe reads /proc (Linux)")
def test_the_probe_counts_what_the_steps_hold_and_not_what_was_there_before(factory_module):
    # in a fresh process: two steps of 64 MiB each hold at least 128 MiB, and the hundreds of MiB the
    # process held before (torch) are not counted; one step of 32 MiB holds a quarter of that
    two = peak_training_memory_mib(f"{factory_module}:steps", [64], "cpu", 2, "two 64 MiB steps")
    assert 120 < two < 200
    one = peak_training_memory_mib(f"{factory_module}:steps", [32], "cpu", 1, "a 32 MiB step")
    assert 28 < one < two / 2


def test_a_failing_probe_names_the_model(factory_module):
    with pytest.raises(RuntimeError, match=r"memory probe of the broken model failed: .*no such model"):
        peak_training_memory_mib(f"{factory_module}:broken", [], "cpu", 1, "the broken model")
