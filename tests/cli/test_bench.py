"""``lunet bench`` (lunet.cli.bench): its options, the benchmark it runs with them, the table it prints
and the figures it writes; an output that cannot be written is refused before the work. The
benchmarks themselves are replaced by stand-ins here (their own tests are in
tests/experiments/benchmarks/)."""

from __future__ import annotations

import json

import pytest

from conftest import one_line_error
from lunet.cli import build_parser, main
from lunet.cli.bench import cmd_bench
from lunet.experiments.benchmarks import bench, micro


@pytest.fixture
def calls(monkeypatch) -> list:
    """What each benchmark was asked for; they return a small result at once."""
    seen: list = []

    def run_bench(device, quick, models):
        seen.append(("bench", device, quick, models))
        return {"device": device, "torch": "x.y", "models": list(models)}

    def run_micro(device):
        seen.append(("micro", device))
        return {"device": device, "threads": 3, "figures": [1.5]}

    monkeypatch.setattr(bench, "run_bench", run_bench)
    monkeypatch.setattr(bench, "markdown_table", lambda result: f"| table of {', '.join(result['models'])} |")
    monkeypatch.setattr(micro, "run_micro", run_micro)
    monkeypatch.setattr(micro, "micro_table", lambda result: "| micro table |")
    return seen


def test_the_options_and_their_defaults():
    args = build_parser().parse_args(["bench"])
    assert args.func is cmd_bench
    assert (args.device, args.quick, args.micro, args.models, args.json) == ("cpu", False, False,
                                                                          ["lunet", "realnvp"], None)
    args = build_parser().parse_args(["bench", "--quick", "--models", "lunet", "--json", "b.json"])
    assert (args.quick, args.models, args.json) == (True, ["lunet"], "b.json")


def test_an_unknown_model_is_refused_by_the_parser(capsys):
    assert main(["bench", "--models", "glow"]) == 2
    assert "invalid choice: 'glow'" in capsys.readouterr().err


def test_the_side_by_side_benchmark_prints_its_table_and_writes_its_figures(calls, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--models", "lunet", "--json", str(out)]) == 0
    assert calls == [("bench", "cpu", True, ("lunet",))]
    printed = capsys.readouterr().out
    assert "device: cpu, torch x.y, quick mode" in printed and "| table of lunet |" in printed
    assert f"wrote {out}" in printed
    assert json.loads(out.read_text()) == {"device": "cpu", "torch": "x.y", "models": ["lunet"]}


def test_the_micro_benchmark_prints_its_own_table(calls, capsys):
    assert main(["bench", "--micro"]) == 0
    assert calls == [("micro", "cpu")]
    printed = capsys.readouterr().out
    assert "device: cpu (3 threads)" in printed and "| micro table |" in printed and "wrote" not in printed


def test_an_output_that_cannot_be_written_is_refused_before_the_benchmark(calls, tmp_path, capsys):
    (tmp_path / "results").mkdir()
    assert main(["bench", "--json", str(tmp_path / "results")]) == 2
    assert "is a folder; give a file name" in one_line_error(capsys, "bench")
    assert calls == []
