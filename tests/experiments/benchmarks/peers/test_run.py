"""A run of the peers benchmark (lunet.experiments.benchmarks.peers.run) on tiny models and data: equal
budgets for every model, the results file (schema, resume, figures) and runs combined."""

import copy
import json

import pytest

from experiments.benchmarks.peers.test_spaces import _pixels
from experiments.benchmarks.peers.test_training import FAST, Sleepy, _vectors
from lunet.experiments.benchmarks.peers import (
    Protocol,
    combine_results,
    images_from_pixels,
    markdown_tables,
    run_peers,
    validate_results,
)
from lunet.experiments.benchmarks.peers.models import MODELS, ModelEntry

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_model_gets_the_same_budget_in_one_run(monkeypatch):
    for name, step in (("quick-steps", 0.0), ("slow-steps", 0.02)):
        entry = ModelEntry(name, lambda features, data, step=step: Sleepy(features, step, 0.0), "test")
        monkeypatch.setitem(MODELS, name, entry)
    doc = run_peers([_vectors()], ["quick-steps", "slow-steps"], {"vectors": [0.2, 0.4]}, FAST, log=lambda _: None)
    models = doc["datasets"]["v"]["models"]
    for model in models.values():
        for mark in model["marks"]:
            assert mark["budget_s"] <= mark["train_seconds"] <= mark["budget_s"] + model["max_step_seconds"]
    # the same seconds, not the same steps
    assert models["quick-steps"]["marks"][-1]["steps"] > 2 * models["slow-steps"]["marks"][-1]["steps"]


def test_results_file_schema_resume_and_figures(tmp_path):
    pixels = _pixels(160, 16)
    data = images_from_pixels("tiny", pixels[:100], pixels[100:130], pixels[130:], image_shape=(4, 4))
    out = tmp_path / "r.json"
    protocol = Protocol(batch_size=32, speed_repeats=1, density_batch=50, sample_cap_s=2.0, grid_samples=3)
    lines = []
    doc = run_peers([data], ["lunet"], {"images": [0.2, 0.4]}, protocol, out=out, figures=tmp_path, log=lines.append)
    assert validate_results(doc) == []
    on_disk = json.loads(out.read_text())
    assert validate_results(on_disk) == [] and on_disk["datasets"]["tiny"]["unit"] == "bits/dim"
    m = on_disk["datasets"]["tiny"]["models"]["lunet"]
    assert m["label"].startswith("LU-Net 8×16") and m["speed"]["params"] > 0
    assert m["speed"]["peak_train_memory_mib"] > 0 and m["samples"]["count"] == 3
    assert (tmp_path / "peers-tiny-curves.png").stat().st_size > 0
    assert (tmp_path / "peers-tiny-samples.png").stat().st_size > 0
    assert "| LU-Net 8×16" in markdown_tables(on_disk)
    broken = copy.deepcopy(on_disk)
    del broken["datasets"]["tiny"]["models"]["lunet"]["marks"][0]["test"]
    broken["datasets"]["tiny"]["models"]["lunet"]["speed"].pop("sampling")
    problems = validate_results(broken)
    assert len(problems) == 2 and "'test'" in problems[0] and "sampling" in problems[1]
    # resumed: the measured pair is kept as it was, not run again
    lines.clear()
    again = run_peers([data], ["lunet"], {"images": [0.2, 0.4]}, protocol, out=out, resume=True, log=lines.append)
    assert again["datasets"]["tiny"]["models"]["lunet"]["wall_seconds"] == m["wall_seconds"]
    assert any("already measured" in line for line in lines)
    with pytest.raises(ValueError, match="another protocol"):
        run_peers([data], ["lunet"], {"images": [0.2, 0.5]}, protocol, out=out, resume=True, log=lines.append)
    # two runs joined: every pair of each, the runs listed; another protocol refused
    other = copy.deepcopy(on_disk)
    other["datasets"]["tiny"]["models"]["lunet-copy"] = other["datasets"]["tiny"]["models"].pop("lunet")
    joined = combine_results([on_disk, other], ["a.json", "b.json"])
    assert validate_results(joined) == [] and set(joined["datasets"]["tiny"]["models"]) == {"lunet", "lunet-copy"}
    assert [r["from"] for r in joined["runs"]] == ["a.json", "b.json"]
    other["protocol"]["lr"] = 0.5
    with pytest.raises(ValueError, match="b.json was measured under another protocol"):
        combine_results([on_disk, other], ["a.json", "b.json"])
