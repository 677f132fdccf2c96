"""reproduce/sbi_benchmark.py --quick: the protocol end to end on tiny budgets, the results file, --resume."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("sbi")
pytest.importorskip("sklearn")

ROOT = Path(__file__).resolve().parents[3]
pytestmark = pytest.mark.usefixtures("one_thread")


def _script():
    spec = importlib.util.spec_from_file_location("sbi_benchmark", ROOT / "reproduce" / "sbi_benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_quick_pipeline_writes_every_metric_and_resumes(tmp_path, capsys):
    script = _script()
    out = tmp_path / "sbi.json"
    argv = ["--quick", "--tasks", "two_moons,gaussian_mixture", "--estimators", "lunet,zuko_maf", "--budgets", "300",
            "--out", str(out)]
    assert script.main(argv) == 0
    results = json.loads(out.read_text())
    assert results["protocol"]["observations"] == 2 and results["protocol"]["lunet_blocks"] == 8
    for task in ("two_moons", "gaussian_mixture"):
        ref = results["references"][task]
        assert len(ref["c2st_self"]) == 2 and abs(ref["c2st_self_mean"] - 0.5) < 0.1
    runs = {(r["task"], r["estimator"]): r for r in results["runs"]}
    assert set(runs) == {(t, e) for t in ("two_moons", "gaussian_mixture") for e in ("lunet", "zuko_maf")}
    for row in runs.values():
        assert "error" not in row, row.get("error")
        # sbi counts the epoch that reached its cap as one more
        assert row["budget"] == 300 and row["train_s"] > 0 and 0 < row["epochs"] <= 31
        assert len(row["c2st"]) == 2 and all(0.3 < c <= 1.0 for c in row["c2st"])
        assert all(s is None or s > 0 for s in row["sample_s"]) and all(s > 0 for s in row["estimator_sample_s"])
        assert all(v is None or math.isfinite(v) for v in row["log_prob_true"])
        assert all(0 <= a <= 1 for a in row["acceptance"]) and len(row["figure_samples"]) == 100
    assert "[two_moons] 300 lunet: C2ST" in capsys.readouterr().out
    # --resume keeps what is there and runs nothing again
    assert script.main(argv + ["--resume"]) == 0
    assert json.loads(out.read_text())["runs"] == results["runs"]
    # another protocol is refused, not mixed in
    with pytest.raises(SystemExit, match="another protocol"):
        script.main(argv + ["--resume", "--blocks", "3"])
    # the tables and figures come from the file alone
    figures = tmp_path / "figures"
    assert script.main(["--report", "--out", str(out), "--figures", str(figures)]) == 0
    text = capsys.readouterr().out
    assert "| two_moons | 300 |" in text and (figures / "sbi-two-moons.png").exists()


def test_bad_arguments_are_one_line_errors(tmp_path):
    script = _script()
    with pytest.raises(SystemExit, match="unknown tasks"):
        script.main(["--tasks", "lotka", "--out", str(tmp_path / "x.json")])
    with pytest.raises(SystemExit, match="budgets"):
        script.main(["--budgets", "ten", "--out", str(tmp_path / "x.json")])
    assert "sbi" in sys.modules


def test_the_variants_script_reads_lunet_nn_arguments():
    spec = importlib.util.spec_from_file_location("sbi_variants", ROOT / "reproduce" / "sbi_variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module._variant("bins=16,num_blocks=12,bound=5.5,activation=leaky_softplus") == {
        "bins": 16, "num_blocks": 12, "bound": 5.5, "activation": "leaky_softplus"}
    with pytest.raises(SystemExit, match="key=value pairs"):
        module._variant("bins")


def test_the_variants_script_refuses_a_bad_variant_or_cache_in_one_line(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("sbi_variants", ROOT / "reproduce" / "sbi_variants.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cache = tmp_path / "refs.pt"
    for argv, match in ((["--variant", "bins=0"], "--variant bins=0: bins must be a positive integer"),
                        (["--variant", "colour=3"], "--variant colour=3: .*unexpected keyword argument 'colour'"),
                        (["--variant", "train.colour=3"], "--variant train.colour=3: NPE.train takes no colour")):
        monkeypatch.setattr(sys, "argv", ["sbi_variants.py", "--task", "two_moons", "--budget", "100", *argv])
        with pytest.raises(SystemExit, match=match):
            module.main()
    from lunet.experiments.sbi.bench import Protocol
    from lunet.experiments.sbi.tasks import get_task

    task, x_o = get_task("two_moons"), torch.zeros(2, 2)
    cache.write_text("not a tensor file")
    with pytest.raises(SystemExit, match="is no file of reference draws"):
        module._cached_references(cache, task, Protocol(), x_o)
    torch.save([torch.zeros(3, 2)], cache)
    with pytest.raises(SystemExit, match=r"does not hold 2 draws of shape \(10000, 2\) for two_moons"):
        module._cached_references(cache, task, Protocol(), x_o)


def test_training_takes_npe_train_arguments():
    from lunet.experiments.sbi.bench import Protocol, train_estimator
    from lunet.experiments.sbi.tasks import get_task
    from lunet.sbi import lunet_nn

    def epochs(most: int) -> int:
        _, record = train_estimator(get_task("two_moons"), 200, lunet_nn(num_blocks=2), Protocol(),
                                    {"max_num_epochs": most, "stop_after_epochs": 100})
        return record["epochs"]

    assert epochs(4) - epochs(2) == 2  # sbi stops at the epochs it was given (its count starts at one more)
