"""Hostile and careless inputs to loading: checkpoints whose spec or contents would take far more
memory than the file, non-finite weights, damaged training states, data beyond the run's
precision, files that are not what their name says, and damaged run files.

docs/reliability.md lists these cases. Crafted checkpoints are a tiny real run's, edited and
saved again (with a fresh checksum where the case needs one to pass). No test allocates more than
a few megabytes: a guard fails any test in which a large LU-Net would be built, so a refusal is
checked to come before the allocation.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from conftest import image_train, one_line_error, run_cli
from experiments.runs.test_vectors import make_rows, write_npy
from lunet.experiments.config import models
from lunet.experiments.config.presets import vector_lunet_spec
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.runs.vector_run import sample_vectors
from lunet.experiments.runs.vectors import train_vectors
from lunet.experiments.store.checkpoint import load_checkpoint, load_model, save_checkpoint

CONFIG = TrainConfig(epochs=1, batch_size=64)  # float32, as the command line trains by default
SPEC = vector_lunet_spec(3, num_blocks=2)
GUARD_VALUES = 10**6  # numbers in the LU matrices of the largest model a test may build


@pytest.fixture(autouse=True)
def small_models_only(monkeypatch):
    """Building an LU-Net with more than :data:`GUARD_VALUES` numbers fails the test instead of
    taking the memory: what a refusal must come before."""
    real = models.LUNet

    def guarded(features: int, num_blocks: int, **kwargs: Any):
        whole = isinstance(features, int) and isinstance(num_blocks, int)
        if whole and num_blocks * features * features > GUARD_VALUES:
            raise AssertionError(f"an LU-Net of width {features} with {num_blocks} blocks was built")
        return real(features, num_blocks, **kwargs)

    monkeypatch.setattr(models, "LUNet", guarded)


@pytest.fixture(scope="module", name="trained")
def trained_fixture(tmp_path_factory) -> Path:
    """A one-epoch float32 run on own data of width 3."""
    run = tmp_path_factory.mktemp("trained") / "run"
    train_vectors(torch.as_tensor(make_rows(200, 0)), run, CONFIG, model_spec=SPEC, progress=False)
    return run


@pytest.fixture(scope="module", name="test_file")
def test_file_fixture(tmp_path_factory) -> Path:
    return write_npy(tmp_path_factory.mktemp("test") / "test.npy", make_rows(20, 1))


def crafted(run: Path, to: Path, edit: Callable[[dict], Any], checksum: bool = True) -> Path:
    """A copy of ``run`` in ``to`` whose checkpoint went through ``edit``, saved again with a
    checksum of its new contents (``checksum``) or as it is, with ``torch.save``."""
    shutil.copytree(run, to)
    contents = load_checkpoint(to / "checkpoint.pt")
    edit(contents)
    if checksum:
        save_checkpoint(contents, to / "checkpoint.pt")
    else:
        torch.save(contents, to / "checkpoint.pt")
    return to


def with_run_file(run: Path, to: Path, edit: Callable[[dict], Any]) -> Path:
    """A copy of ``run`` in ``to`` whose ``run.json`` went through ``edit``."""
    shutil.copytree(run, to)
    record = json.loads((to / "run.json").read_text())
    edit(record)
    (to / "run.json").write_text(json.dumps(record))
    return to


def machine_of(monkeypatch, num_bytes: int) -> None:
    """Let the memory checks see a machine of ``num_bytes``, whatever this one has."""
    monkeypatch.setattr("lunet.experiments.config.resources.machine_memory", lambda: num_bytes)


def test_a_file_whose_contents_exceed_the_machines_memory_is_refused_unread(trained, monkeypatch):
    import zipfile

    with zipfile.ZipFile(trained / "checkpoint.pt") as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
    monkeypatch.setattr("lunet.experiments.files.loads.machine_memory", lambda: unpacked - 1)
    with pytest.raises(ValueError, match=r"checkpoint\.pt could not be read as a lunet checkpoint: its contents take "
                                         r"0\.0 GB, more than the 0\.0 GB of memory this machine has"):
        load_model(trained / "checkpoint.pt")
    monkeypatch.setattr("lunet.experiments.files.loads.machine_memory", lambda: unpacked)
    assert load_model(trained / "checkpoint.pt")[0] is not None


# -- resource bombs: refused before anything is built or unpacked -----------------------


def test_a_spec_far_wider_than_its_weights_is_refused_before_building(trained, test_file, tmp_path, capsys):
    run = crafted(trained, tmp_path / "run", lambda c: c["model_spec"].update(features=12000))
    with pytest.raises(ValueError, match="does not match its model spec.*the file stores 111"):
        load_model(run / "checkpoint.pt")
    assert run_cli("evaluate", run, "--data", test_file) == 2
    assert "does not match its model spec" in one_line_error(capsys, "evaluate")


def test_a_count_of_blocks_beyond_the_stored_tensors_is_refused_at_once(trained, tmp_path, capsys):
    run = crafted(trained, tmp_path / "run", lambda c: c["model_spec"].update(num_blocks=10**9))
    for argv in (["sample", run, "--out", tmp_path / "s.npy"], ["export", run, "--out", tmp_path / "e.pt"]):
        assert run_cli(*argv) == 2
        assert "num_blocks is 1,000,000,000, but the file stores" in one_line_error(capsys, argv[0])
    with pytest.raises(ValueError, match="does not match its model spec"):
        load_model(run / "checkpoint.pt")
    assert not (tmp_path / "s.npy").exists() and not (tmp_path / "e.pt").exists()


def test_a_packed_checkpoint_that_would_inflate_is_refused_unread(trained, tmp_path):
    run = crafted(trained, tmp_path / "run", lambda c: c.update(extra={"padding": torch.zeros(5_000_000)}))
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(run / "checkpoint.pt") as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
    assert packed.stat().st_size < 200_000  # 20 MB of contents
    with pytest.raises(ValueError, match=r"packed\.pt could not be read as a lunet checkpoint: its contents "
                                         r"would unpack from [\d,]+ bytes to [\d,]+ .*refused unread"):
        load_checkpoint(packed)


def test_a_model_too_large_for_the_machine_is_refused_before_training_with_both_figures(tmp_path, capsys, monkeypatch):
    machine_of(monkeypatch, 16 * 10**9)
    wide = tmp_path / "wide.npy"
    np.save(wide, np.random.default_rng(0).standard_normal((60, 20000)).astype(np.float32))
    assert wide.stat().st_size < 5_000_000
    assert run_cli("train", "--data", wide, "--out", tmp_path / "run", "--no-progress") == 2
    line = one_line_error(capsys, "train")
    assert "an LU-Net of width 20,000 with 4 blocks needs about 76.8 GB of memory to train in float32, " \
           "more than the 16.0 GB this machine has" in line
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="needs about .* GB of memory to train"):
        train_vectors(np.load(wide), tmp_path / "api", progress=False)
    # an image run: refused before its data are looked for
    assert image_train(tmp_path / "image", tmp_path / "no-data", "--blocks", "100000") == 2
    assert "an LU-Net of width 784 with 100,000 blocks needs about" in one_line_error(capsys, "train")


def test_a_model_too_large_for_the_machine_is_refused_before_loading(trained, monkeypatch):
    machine_of(monkeypatch, 1000)
    with pytest.raises(ValueError, match=r"the model in .*checkpoint\.pt needs about 0\.0 GB of memory to load "
                                         r"and run in float32, more than the 0\.0 GB this machine has"):
        load_model(trained / "checkpoint.pt")


def test_samples_of_a_run_on_own_data_are_bounded_by_rows_times_width(trained, tmp_path, capsys, monkeypatch):
    from lunet.experiments.config.presets import MAX_SAMPLE_VALUES

    assert MAX_SAMPLE_VALUES * 8 <= 1e9 and 10_000_000 * 300 > MAX_SAMPLE_VALUES  # 24 GB at width 300 is refused
    monkeypatch.setattr("lunet.experiments.runs.vector_run.MAX_SAMPLE_VALUES", 3_000)
    assert run_cli("sample", trained, "--num", 1001, "--out", tmp_path / "s.npy") == 2
    assert ("--num 1,001 samples of width 3 are 3,003 numbers, more than the 3,000 one call draws; "
            "give --num at most 1,000") in one_line_error(capsys, "sample")
    assert not (tmp_path / "s.npy").exists()
    assert run_cli("sample", trained, "--num", 1000, "--out", tmp_path / "s.npy") == 0


def test_samples_drawn_in_chunks_are_those_of_one_pass(trained, monkeypatch):
    whole = sample_vectors(trained, 50, seed=3)
    monkeypatch.setattr("lunet.experiments.runs.vector_run.SAMPLE_CHUNK_ROWS", 7)
    # the same draws; a float32 pass over fewer rows may round differently
    torch.testing.assert_close(sample_vectors(trained, 50, seed=3), whole, rtol=1e-5, atol=1e-5)


# -- quiet wrong answers -----------------------------------------------------------------


def _poison(contents: dict) -> None:
    contents["best_model"]["blocks.0.lu"][0, 1] = float("nan")


def test_non_finite_weights_are_refused_on_load(trained, test_file, tmp_path, capsys):
    run = crafted(trained, tmp_path / "run", _poison)
    message = r"holds 1 NaN or infinite weight \(the first in best_model blocks\.0\.lu\)"
    with pytest.raises(ValueError, match=message):
        load_model(run / "checkpoint.pt")
    for argv in (["evaluate", run, "--data", test_file], ["sample", run, "--out", tmp_path / "s.npy"]):
        assert run_cli(*argv) == 2
        assert "NaN or infinite weight" in one_line_error(capsys, argv[0])
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize("temperature", ["1e33", "3e38"], ids=["inside-the-flow", "beyond-float32"])
def test_samples_that_overflow_inside_the_flow_say_at_which_temperature_it_stays_finite(
        temperature, trained, tmp_path, capsys):
    # data a million times as wide: at 1e33 the draws fit float32 and the samples do not
    run = crafted(trained, tmp_path / "run", lambda c: c["best_model"]["input_standardize.std"].mul_(1e6))
    out = tmp_path / "s.npy"
    assert run_cli("sample", run, "--out", out, "--temperature", temperature) == 2
    line = one_line_error(capsys, "sample")
    shown = re.escape(f"{float(temperature):g}")
    found = re.search(rf"samples at --temperature {shown} overflow float32 inside the flow "
                      r"\([\d,]+ of 1,000 rows hold NaN or infinite values\); on the same draws it stays finite at "
                      r"--temperature (\S+): give a lower --temperature", line)
    assert found, line
    assert not out.exists()
    assert run_cli("sample", run, "--out", out, "--temperature", found.group(1)) == 0
    assert np.isfinite(np.load(out)).all()


def test_image_samples_that_overflow_say_so_instead_of_blaming_the_input(
        image_run, tmp_path, capsys):
    assert run_cli("sample", image_run, "--out", tmp_path / "s.png", "--temperature", "3e38") == 2
    line = one_line_error(capsys, "sample")
    assert "samples at --temperature 3e+38 overflow float32 inside the flow" in line
    assert "stays finite at --temperature" in line and "input holds" not in line


def test_a_float64_run_takes_data_beyond_the_range_of_float32(tmp_path):
    config = TrainConfig(epochs=1, batch_size=64, dtype="float64")
    rows = make_rows(200, 0)
    _, scaled = train_vectors(rows * 1e50, tmp_path / "scaled", config, model_spec=SPEC, progress=False)
    _, plain = train_vectors(rows, tmp_path / "plain", config, model_spec=SPEC, progress=False)
    # scaling every feature by c shifts each log-density per dimension by log c
    assert scaled["val_nll_nats_per_dim"] == pytest.approx(plain["val_nll_nats_per_dim"] + math.log(1e50), abs=1e-6)


# -- metrics.jsonl: read a line at a time, what is no row of the run dropped and named -------


def test_a_line_that_is_not_utf8_neither_stops_a_training_nor_blocks_its_resume(tmp_path, monkeypatch, capsys):
    from lunet.experiments.training.log import RunLog

    def junk_after_the_first_row(self, epoch):
        if epoch == 1:
            with open(self.folder.metrics, "ab") as f:
                f.write(b"\xff\xfe not text\n")

    monkeypatch.setattr(RunLog, "epoch_begins", junk_after_the_first_row)
    run = tmp_path / "run"
    train_vectors(make_rows(200, 0), run, TrainConfig(epochs=2, batch_size=64), model_spec=SPEC, progress=False)
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    monkeypatch.undo()
    train_vectors(make_rows(200, 0), run, TrainConfig(epochs=3, batch_size=64), model_spec=SPEC, resume=True,
                  progress=False)
    assert f"warning: dropped from {run / 'metrics.jsonl'}: line 2, not UTF-8 text" in capsys.readouterr().out
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


def test_rows_that_are_not_the_runs_are_dropped_and_counted_on_resume(trained, tmp_path, capsys):
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    metrics = run / "metrics.jsonl"
    real = metrics.read_bytes()
    fake = "".join(json.dumps({"epoch": 1, "val_nats_per_dim": -9.0 - i}) + "\n" for i in range(1000))
    metrics.write_bytes(real + fake.encode() + b"x" * 200_000 + b"\n" + b'{"epoch": 2, "val_nats_per_dim": 0}\n')
    train_vectors(make_rows(200, 0), run, TrainConfig(epochs=2, batch_size=64), model_spec=SPEC, resume=True,
                  progress=False)
    printed = capsys.readouterr().out
    assert (f"warning: dropped from {metrics}: lines 2, 3, 4, 5, 6 and 995 more, a row of an epoch logged before "
            f"it; line 1002, longer than 65,536 bytes, far more than a row of metrics") in printed
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2] and rows[0] == json.loads(real)


def test_the_rows_read_on_resume_are_bounded_by_the_epochs_trained(tmp_path):
    from lunet.experiments.store.folder import read_metrics

    metrics = tmp_path / "metrics.jsonl"
    row = json.dumps({"epoch": 1, "pad": "y" * 100}) + "\n"
    with open(metrics, "w") as f:
        f.write(row)
        f.writelines(row.replace('"epoch": 1', f'"epoch": {e}') for e in range(2, 100_002))
    rows, problems = read_metrics(metrics, last_epoch=3)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and problems == []


@pytest.mark.parametrize("rows, options, minimum", [(2, {}, 3), (1, {}, 3), (4, {"data_init": "gaussian"}, 5),
                                                    (3, {"val_fraction": 0.5}, 4)],
                         ids=["two-rows", "one-row", "gaussian-start", "half-validation"])
def test_too_few_rows_to_train_on_are_refused_with_the_minimum(rows, options, minimum, tmp_path):
    with pytest.raises(ValueError, match=rf"data has {rows} rows?: .* so at least {minimum} rows") as caught:
        train_vectors(make_rows(rows, 0), tmp_path / "run", CONFIG, progress=False, **options)
    assert "--" not in str(caught.value)  # from Python: no option of the command line is named
    assert not (tmp_path / "run").exists()


def test_two_rows_on_the_command_line_name_the_file_and_the_minimum(tmp_path, capsys):
    data = write_npy(tmp_path / "two.npy", make_rows(2, 0))
    assert run_cli("train", "--data", data, "--out", tmp_path / "run", "--no-progress") == 2
    assert f"{data} has 2 rows: 1 to train on and 1 to validate" in one_line_error(capsys, "train")


# -- resume integrity: a checkpoint is fully checked or refused -----------------------------


def _optimiser_of_another_shape(contents: dict) -> None:
    contents["optimizer"]["state"][2]["exp_avg"] = torch.zeros(2, 2)


DAMAGED_STATES = [
    (lambda c: c.update(format=True), False, "its format entry is True"),
    (lambda c: c.update(format=1.0), False, "its format entry is 1.0"),
    (lambda c: c.update(format=1), False, r"earlier development version of lunet \(format 1\)"),
    (lambda c: c.update(format=2), False, r"earlier development version of lunet \(format 2\)"),
    (lambda c: c.update(format=4), False, "its format entry is 4, not 3"),
    (lambda c: c.pop("data"), True, "its record of the training data is None"),
    (lambda c: c.pop("train_config"), True, "its training settings are None"),
    (lambda c: c["train_config"].pop("lr"), True, "its record of the training settings lacks lr"),
    (_optimiser_of_another_shape, True, r"its optimiser's 'exp_avg' for blocks\.0\.bias has shape \(2, 2\)"),
    (lambda c: c.update(epoch=-1), True, "its epoch is -1"),
    (lambda c: c.update(epoch=True), True, "its epoch is True"),
    (lambda c: c.update(best_val_log_prob=float("nan")), True, "best validation log-likelihood is nan"),
    (lambda c: c.update(best_val_log_prob=float("inf")), True, "best validation log-likelihood is inf"),
]
DAMAGED_IDS = ["format-true", "format-1.0", "format-1", "format-2", "format-4", "no-data", "no-train-config",
               "no-lr", "optimiser-shape", "negative-epoch", "epoch-true", "nan-best", "inf-best"]


@pytest.mark.parametrize("edit, checksum, message", DAMAGED_STATES, ids=DAMAGED_IDS)
def test_a_damaged_training_state_is_refused_on_resume(edit, checksum, message, trained, tmp_path):
    run = crafted(trained, tmp_path / "run", edit, checksum)
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match=message):
        train_vectors(make_rows(200, 0), run, TrainConfig(epochs=2, batch_size=64), model_spec=SPEC, resume=True,
                      progress=False)
    assert (run / "checkpoint.pt").read_bytes() == before


def test_a_sound_checkpoint_resumes(trained, tmp_path):
    run = crafted(trained, tmp_path / "run", lambda c: None)
    _, summary = train_vectors(make_rows(200, 0), run, TrainConfig(epochs=2, batch_size=64), model_spec=SPEC,
                               resume=True, progress=False)
    assert summary["epochs"] == 2


# -- messages that name the file and the real problem -----------------------------------


def test_values_beyond_the_runs_precision_are_named_with_the_file(trained, tmp_path, capsys):
    rows = make_rows(30, 2)
    rows[4, 1] = 1e39  # finite in float64, beyond float32
    big = tmp_path / "big.csv"
    big.write_text("".join(",".join(repr(float(v)) for v in row) + "\n" for row in rows))
    expected = f"{big}: 1 value lies beyond the range of float32 (±3.403e+38), the precision the run computes in " \
               f"(the first in row 4, 1e+39)"
    assert run_cli("evaluate", trained, "--data", big) == 2
    assert expected in one_line_error(capsys, "evaluate")
    assert run_cli("train", "--data", big, "--out", tmp_path / "run", "--no-progress") == 2
    assert expected in one_line_error(capsys, "train")


def test_a_picture_named_npy_is_not_called_pickled_data(trained, tmp_path, capsys):
    picture = tmp_path / "picture.npy"
    picture.write_bytes((trained / "curves.png").read_bytes())
    assert run_cli("evaluate", trained, "--data", picture) == 2
    line = one_line_error(capsys, "evaluate")
    assert f"{picture} is not a .npy file: it does not begin with the .npy signature" in line
    assert "pickled" not in line


def test_non_finite_weights_of_an_image_run_are_not_blamed_on_the_temperature(
        image_run, tmp_path, capsys):
    run = crafted(image_run, tmp_path / "run", _poison)
    assert run_cli("sample", run, "--out", tmp_path / "s.png") == 2
    line = one_line_error(capsys, "sample")
    assert f"checkpoint {run / 'checkpoint.pt'} holds" in line and "temperature" not in line


def test_a_model_spec_that_is_no_dict_is_named_plainly(trained, tmp_path, capsys):
    run = crafted(trained, tmp_path / "run", lambda c: c.update(model_spec="lunet"))
    assert run_cli("sample", run, "--out", tmp_path / "s.npy") == 2
    assert "holds a model spec this version cannot build: a model spec is a dict with a 'name' and the model's " \
           "settings, got a str ('lunet')" in one_line_error(capsys, "sample")


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(features="3"), "features must be a positive integer, got '3'"),
    (lambda r: r.update(features=True), "features must be a positive integer, got True"),
    (lambda r: r.update(val_fraction=True), "val_fraction must lie strictly between 0 and 1, got True"),
    (lambda r: r.update(model="lunet"), "a model spec is a dict"),
    (lambda r: r.pop("data"), "its \"data\" entry is None, not 'vectors'"),
    (lambda r: r.update(bogus=1), "unknown entries bogus"),
], ids=["features-text", "features-true", "val-fraction-true", "model-text", "no-data-entry", "unknown-entry"])
def test_a_damaged_own_data_run_file_is_named_as_one(edit, message, trained, test_file, tmp_path, capsys):
    run = with_run_file(trained, tmp_path / "run", edit)
    for argv in (["evaluate", run, "--data", test_file], ["sample", run, "--out", tmp_path / "s.npy"],
                 ["export", run, "--out", tmp_path / "e.pt"]):
        assert run_cli(*argv) == 2
        line = one_line_error(capsys, argv[0])
        assert f"{run / 'run.json'} does not describe a run on own data" in line and message in line
        assert "image run" not in line and "--data applies" not in line


def test_a_run_file_that_is_no_json_is_named_whatever_the_command(trained, test_file, tmp_path, capsys):
    run = Path(shutil.copytree(trained, tmp_path / "run"))
    (run / "run.json").write_text((trained / "run.json").read_text()[:40])
    for argv in (["evaluate", run, "--data", test_file], ["sample", run, "--out", tmp_path / "s.npy"],
                 ["export", run, "--out", tmp_path / "e.pt"]):
        assert run_cli(*argv) == 2
        line = one_line_error(capsys, argv[0])
        assert f"{run / 'run.json'} is not valid JSON" in line and "image run" not in line


def test_a_class_label_of_true_in_an_image_run_file_is_refused(image_run, tmp_path, capsys):
    run = with_run_file(image_run, tmp_path / "run", lambda r: r.update(kind="class", class_label=True))
    assert run_cli("evaluate", run) == 2
    assert "class_label must be an integer or null, got True" in one_line_error(capsys, "evaluate")
