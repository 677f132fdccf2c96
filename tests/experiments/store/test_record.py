"""The record of a run (lunet.experiments.store.record): the settings of image runs and runs on own data
checked as they are made and as run.json gives them back, the kind of run a folder holds, run.json
written and read back, and a folder or file of another kind named for what it is."""

from __future__ import annotations

import json
import os

import pytest

from lunet.experiments.config.errors import SettingError
from lunet.experiments.config.presets import (
    GMM2D,
    IMAGES,
    NUM_CLASSES,
    VECTORS,
    conditional_image_spec,
    conditional_vector_spec,
    vector_lunet_spec,
)
from lunet.experiments.data.contexts import ContextRules
from lunet.experiments.files.safe import UnsafeFile
from lunet.experiments.store.folder import RunFolder
from lunet.experiments.store.record import (
    ImageRunSettings,
    RunRecord,
    VectorRunSettings,
    read_run,
    recorded_data,
    run_kind,
    write_run,
)

LABELS = ContextRules(1, "labels", 3).entries()


def vector_settings(**changes) -> VectorRunSettings:
    return VectorRunSettings(**{"features": 3, "model": vector_lunet_spec(3, num_blocks=2), **changes})


# -- the settings, checked as they are made ---------------------------------------------------


def test_an_image_run_models_one_density_per_class_it_names():
    assert ImageRunSettings().classes == [None] and ImageRunSettings().model_classes == [None]
    assert ImageRunSettings(kind="class", class_label=4).classes == [4]
    assert ImageRunSettings(kind="per_class").model_classes == list(range(NUM_CLASSES))
    conditional = ImageRunSettings(kind="conditional", model=conditional_image_spec(2))
    assert conditional.classes == list(range(NUM_CLASSES)) and conditional.model_classes == [None]


@pytest.mark.parametrize("changes, message", [
    ({"recipe": "fast"}, "recipe must be one of"),
    ({"dataset": "cifar10"}, "dataset must be one of"),
    ({"kind": "joint"}, "kind must be one of"),
    ({"lam": 0.5}, "lam .* must lie strictly between 0 and 0.5, got 0.5"),
    ({"lam": True}, "lam .* got True"),
    ({"data_init": "zeros"}, "data_init must be one of"),
    ({"class_label": True}, "class_label must be an integer or null, got True"),
    ({"kind": "class", "class_label": NUM_CLASSES}, f"--class must be an integer in 0..{NUM_CLASSES - 1}"),
    ({"model": {"name": "glow"}}, "unknown model name 'glow'"),
    ({"kind": "conditional"}, "a run of kind 'conditional' cannot hold the model 'lunet'"),
    ({"model": conditional_image_spec(2)}, "a run of kind 'unconditional' cannot hold the model 'conditional_lunet'"),
])
def test_image_settings_out_of_their_range_are_refused_by_name(changes, message):
    with pytest.raises(ValueError, match=message):
        ImageRunSettings(**changes)


@pytest.mark.parametrize("changes, message", [
    ({"features": "3"}, "features must be a positive integer, got '3'"),
    ({"features": 4}, "the model spec's features 3 is not the data's width 4"),
    ({"val_fraction": 1.0}, "val_fraction must lie strictly between 0 and 1, got 1.0"),
    ({"val_fraction": True}, "val_fraction must lie strictly between 0 and 1, got True"),
    ({"data_init": "gaussian-fit"}, "data_init must be one of"),
    ({"model": conditional_vector_spec(3, 1, num_classes=3, num_blocks=2)}, "the model is conditional but the run "
                                                                             "records no context"),
    ({"context": LABELS}, r"the run's context \(labels, num_classes 3\) is not the model's \(lunet"),
    ({"model": conditional_vector_spec(3, 1, num_classes=2, num_blocks=2), "context": LABELS}, "num_classes 2"),
    ({"context": {"width": 1}}, "context must be a mapping"),
])
def test_vector_settings_that_do_not_fit_together_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        vector_settings(**changes)


def test_a_conditional_run_on_own_data_reads_its_contexts_by_its_rules():
    settings = vector_settings(model=conditional_vector_spec(3, 3, num_classes=3, num_blocks=2), context=LABELS)
    assert settings.context_rules == ContextRules(1, "labels", 3)
    assert vector_settings().context_rules is None


def test_the_entries_are_what_the_run_is():
    settings = vector_settings()
    entries = RunRecord(VECTORS, settings, "/data/x.npy").entries()
    assert entries["data"] == VECTORS and entries["features"] == 3 and "context" not in entries
    assert "data_file" not in entries  # where the data are is no part of what the run is
    assert RunRecord(IMAGES, ImageRunSettings()).entries()["kind"] == "unconditional"
    assert RunRecord(GMM2D).entries() == {"dataset": GMM2D}


# -- run.json written and read back -----------------------------------------------------------


def test_an_image_run_round_trips_with_where_its_data_lie(tmp_path):
    run = RunFolder(tmp_path / "run")
    record = RunRecord(IMAGES, ImageRunSettings(dataset="fashion-mnist", kind="class", class_label=3), "/data/fm")
    write_run(run, record)
    assert run_kind(run) == IMAGES
    assert read_run(run) == record
    assert recorded_data(run, IMAGES) == "/data/fm" and recorded_data(run, VECTORS) is None


def test_a_run_on_own_data_round_trips_with_its_files(tmp_path):
    run = RunFolder(tmp_path / "run")
    settings = vector_settings(model=conditional_vector_spec(3, 3, num_classes=3, num_blocks=2), context=LABELS)
    record = RunRecord(VECTORS, settings, "/data/x.npy", "/data/c.npy")
    write_run(run, record)
    assert run_kind(run) == VECTORS
    assert read_run(run) == record
    assert recorded_data(run, VECTORS) == "/data/x.npy"
    assert recorded_data(run, VECTORS, "context_file") == "/data/c.npy"
    assert recorded_data(run, IMAGES) is None


def test_an_image_run_that_holds_checkpoints_is_not_described_anew(tmp_path):
    run = RunFolder(tmp_path / "run")
    write_run(run, RunRecord(IMAGES, ImageRunSettings(), "/data/a"))
    write_run(run, RunRecord(IMAGES, ImageRunSettings(dataset="fashion-mnist")))  # no checkpoint: nothing to keep
    run.checkpoint.write_bytes(b"x")
    write_run(run, RunRecord(IMAGES, ImageRunSettings(dataset="fashion-mnist"), "/data/b"))  # data moved: fine
    assert recorded_data(run, IMAGES) == "/data/b"
    with pytest.raises(SettingError, match="describes another run"):
        write_run(run, RunRecord(IMAGES, ImageRunSettings(dataset="mnist")))
    assert read_run(run).settings.dataset == "fashion-mnist"


def test_the_kind_of_a_folder(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    assert run_kind(run) is None
    run.checkpoint.write_bytes(b"x")
    assert run_kind(run) == GMM2D and read_run(run) == RunRecord(GMM2D)
    run.run_file.write_text("{ not json")
    assert run_kind(run) == IMAGES  # damaged: its reader names the damage
    run.run_file.write_text(json.dumps({"features": 3, "kind": "oops"}))
    assert run_kind(run) == VECTORS  # an entry only own data write: a damaged run on own data


def test_a_folder_of_no_run_and_of_another_kind_are_named_for_what_they_are(tmp_path):
    empty = RunFolder(tmp_path / "empty")
    empty.path.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no run made by `lunet train`"):
        read_run(empty)
    mixture = RunFolder(tmp_path / "gmm")
    mixture.path.mkdir()
    mixture.checkpoint.write_bytes(b"x")
    mixture.summary.write_text("{}")
    with pytest.raises(ValueError, match="is a 2-D mixture run"):
        read_run(mixture, (IMAGES,))
    own = RunFolder(tmp_path / "own")
    write_run(own, RunRecord(VECTORS, vector_settings(), "/x.npy"))
    with pytest.raises(ValueError, match=r"is a run on own data \(trained with --data\); this command takes image"):
        read_run(own, (IMAGES,))
    images = RunFolder(tmp_path / "images")
    write_run(images, RunRecord(IMAGES, ImageRunSettings()))
    with pytest.raises(ValueError, match="does not describe a run on own data"):
        read_run(images, (VECTORS,))


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "holds a list, not the settings of a run"),
    ("{ not json", "is not valid JSON"),
    ('{"lam": 0.7}', "lam"),
    ('{"bogus": 1}', "does not describe a run of this version"),
], ids=["list", "not-json", "bad-lam", "unknown-entry"])
def test_a_damaged_image_record_is_named_with_its_file(text, message, tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.run_file.write_text(text)
    with pytest.raises(ValueError, match=message) as caught:
        read_run(run, (IMAGES,))
    assert str(run.run_file) in str(caught.value)


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update(bogus=1), "unknown entries bogus"),
    (lambda e: e.pop("model"), "no model"),
    (lambda e: e.update(data_file=3), "data_file must be a path or null, got 3"),
    (lambda e: e.update(val_fraction=2), "val_fraction must lie strictly between 0 and 1"),
], ids=["unknown", "missing", "data-file", "val-fraction"])
def test_a_damaged_record_of_own_data_is_named_with_its_file(change, message, tmp_path):
    run = RunFolder(tmp_path / "run")
    write_run(run, RunRecord(VECTORS, vector_settings(), "/x.npy"))
    entries = json.loads(run.run_file.read_text())
    change(entries)
    run.run_file.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=message) as caught:
        read_run(run, (VECTORS,))
    assert str(caught.value).startswith(f"{run.run_file} does not describe a run on own data")


def test_a_fifo_in_place_of_the_record_is_refused_without_waiting(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    os.mkfifo(run.run_file)
    for read in (run_kind, lambda r: recorded_data(r, VECTORS)):
        with pytest.raises(UnsafeFile, match="FIFO"):
            read(run)
