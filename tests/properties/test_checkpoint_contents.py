"""Checkpoints whose every number is finite but not one a trained model or run holds: spreads of
0, signs of 5, a spline bound of 1e30, a schedule 10^12 steps ahead, a generator state of the
wrong size; specs whose spline the memory estimate must count; messages that quote a file's
contents. Each is refused by name on every load, before anything is built or resumed.

docs/reliability.md ("Checkpoint contents") lists these cases. Crafted checkpoints are a tiny real
run's, edited and saved again with a fresh checksum (``crafted`` of tests/properties/test_hostile_loads.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import one_line_error, run_cli
from experiments.runs.test_vectors import make_rows, write_npy
from lunet.experiments.config.presets import vector_lunet_spec
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.runs.vectors import train_vectors
from lunet.experiments.store.checkpoint import load_model
from lunet.spline import MAX_BOUND
from properties.test_hostile_loads import (
    CONFIG,
    SPEC,
    crafted,
    machine_of,
    small_models_only,  # noqa: F401 (an autouse fixture)
    test_file_fixture,  # noqa: F401 (the fixture test_file: rows to evaluate)
    trained_fixture,  # noqa: F401 (the fixture trained: a one-epoch run on own data of width 3)
    with_run_file,
)

SPLINE_SPEC = vector_lunet_spec(3, num_blocks=2, activation="spline", learn_alpha=False)
RESUMED = TrainConfig(epochs=2, batch_size=64)


@pytest.fixture(scope="module")
def spline_run(tmp_path_factory) -> Path:
    """A one-epoch float32 run on own data of width 3 with spline activations."""
    run = tmp_path_factory.mktemp("spline") / "run"
    train_vectors(torch.as_tensor(make_rows(200, 0)), run, CONFIG, model_spec=SPLINE_SPEC, progress=False)
    return run


def _set(entry: str, index: tuple, value: float):
    """An edit of the checkpoint that puts ``value`` at ``index`` of ``entry`` in its best weights."""
    return lambda c: c["best_model"][entry].__setitem__(index, value)


def _refused_everywhere(run: Path, test_file: Path, tmp_path: Path, capsys, message: str, spec=SPEC) -> None:
    """``message`` is the reason ``load_model``, ``evaluate``, ``sample``, ``export`` and a resumed
    training each give for the checkpoint in ``run``, which they leave as it was."""
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match=message):
        load_model(run / "checkpoint.pt")
    for argv in (["evaluate", run, "--data", test_file], ["sample", run, "--out", tmp_path / "s.npy"],
                 ["export", run, "--out", tmp_path / "e.pt"]):
        assert run_cli(*argv) == 2
        line = one_line_error(capsys, argv[0])
        assert str(run / "checkpoint.pt") in line and "nan" not in line.lower()
    with pytest.raises(ValueError, match=message):
        train_vectors(make_rows(200, 0), run, RESUMED, model_spec=spec, resume=True, progress=False)
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not (tmp_path / "s.npy").exists() and not (tmp_path / "e.pt").exists()


# -- weights outside their role --------------------------------------------------------------


@pytest.mark.parametrize("edit, message", [
    (_set("input_standardize.std", (0,), 0.0), r"input_standardize\.std holds 1 spread that is not a positive"),
    (_set("input_standardize.std", (1,), -1.0), r"input_standardize\.std .* of feature 1, is -1\)"),
    (_set("input_standardize.std", (2,), 1e-40), r"input_standardize\.std .* of feature 2, is 9\.99995e-41\)"),
    (_set("blocks.0.diag_sign", (0,), 0.0), r"blocks\.0\.diag_sign holds 1 entry other than \+1 and -1 "
                                            r"\(the first is 0\)"),
    (_set("blocks.1.diag_sign", (2,), 5.0), r"blocks\.1\.diag_sign .* \(the first is 5\)"),
    (_set("blocks.0.diag", (1,), 100.0), r"blocks\.0\.diag holds a log-magnitude of 100 .* torch\.float32 holds"),
], ids=["spread-0", "spread-negative", "spread-subnormal", "sign-0", "sign-5", "diagonal-overflows"])
def test_weights_outside_their_role_are_refused_on_every_load(edit, message, trained, test_file, tmp_path, capsys):
    run = crafted(trained, tmp_path / "run", edit)
    _refused_everywhere(run, test_file, tmp_path, capsys, f"holds weights that no model of its kind has: "
                                                          f"best_model {message}")


def test_the_last_weights_and_every_class_model_are_checked_too(trained, tmp_path):
    run = crafted(trained, tmp_path / "run", lambda c: c["model"]["blocks.0.diag_sign"].__setitem__(0, 3.0))
    with pytest.raises(ValueError, match=r"has: model blocks\.0\.diag_sign"):
        load_model(run / "checkpoint.pt")  # the best weights are sound; the last ones are not
    export = tmp_path / "export.pt"
    assert run_cli("export", trained, "--out", export) == 0
    per_class = crafted(trained, tmp_path / "per-class", lambda c: None)
    exported = torch.load(export, weights_only=True)
    weights = exported.pop("model")
    sound, damaged = dict(weights), {k: v.clone() for k, v in weights.items()}
    damaged["input_standardize.std"][0] = 0.0
    exported.update(model=None, class_models=[sound, damaged])
    from lunet.experiments.store.checkpoint import save_checkpoint

    save_checkpoint(exported, per_class / "classes.pt")
    with pytest.raises(ValueError, match=r"has: class_models\[1\] input_standardize\.std"):
        load_model(per_class / "classes.pt")


def test_a_spline_bound_or_slope_out_of_range_is_refused_on_every_load(spline_run, test_file, tmp_path, capsys):
    run = crafted(spline_run, tmp_path / "bound", lambda c: c["model_spec"].update(bound=1e30))
    message = rf"holds a model spec this version cannot build: bound must lie in \[1e-06, {MAX_BOUND:g}\]"
    _refused_everywhere(run, test_file, tmp_path, capsys, message.replace("+", r"\+"), spec=SPLINE_SPEC)
    run = crafted(spline_run, tmp_path / "slope", _set("activations.0.slopes", (1, 2), 1e30))
    _refused_everywhere(run, test_file, tmp_path, capsys, r"best_model activations\.0\.slopes holds a knot slope "
                                                          r"parameter of 1e\+30", spec=SPLINE_SPEC)


def test_a_sound_spline_run_still_loads_evaluates_and_samples(spline_run, test_file, tmp_path, capsys):
    model, _ = load_model(spline_run / "checkpoint.pt")
    assert torch.isfinite(model.log_prob(torch.randn(5, 3))).all()
    assert run_cli("evaluate", spline_run, "--data", test_file) == 0
    assert run_cli("sample", spline_run, "--out", tmp_path / "s.npy", "--num", 50) == 0


# -- a training state that does not fit the run that resumes it ---------------------------


def _optimiser_group(**entries):
    return lambda c: c["optimizer"]["param_groups"][0].update(entries)


def _optimiser_stat(index: int, name: str, value: float):
    return lambda c: c["optimizer"]["state"][index][name].fill_(value)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["schedule"].update(steps=10**12), r"its learning-rate schedule has taken 1,000,000,000,000 steps, "
                                                   r"but 1 epoch of 3 steps make 3"),
    (lambda c: c.update(generator=c["generator"][:100]), r"its state of the random generator \(generator\) has 100 "
                                                         r"bytes, not the 5,056 of a generator on cpu"),
    (lambda c: c.update(generator=torch.zeros(2, 2528, dtype=torch.uint8)),
     r"its generator entry is a uint8 tensor of shape \(2, 2528\), not the state of a random generator"),
    (_optimiser_group(maximize=True), "its optimiser's maximize is True, not the run's False"),
    (_optimiser_group(betas=(5.0, 5.0)), r"its optimiser's betas is \(5\.0, 5\.0\)"),
    (_optimiser_group(weight_decay=0.5), "its optimiser's weight_decay is 0.5, not the run's 0.0"),
    (_optimiser_stat(0, "exp_avg_sq", -1.0), r"its optimiser's exp_avg_sq for blocks\.0\.lu holds negative values"),
    (_optimiser_stat(0, "step", 1e12),
     r"its optimiser's step count for blocks\.0\.lu is 1e\+12, not a count of the 3 steps"),
], ids=["schedule-steps", "generator-size", "generator-shape", "maximize", "betas", "weight-decay",
        "negative-second-moment", "step-count"])
def test_a_training_state_that_does_not_fit_the_run_is_refused_on_resume(edit, message, trained, tmp_path):
    run = crafted(trained, tmp_path / "run", edit)
    before = (run / "checkpoint.pt").read_bytes()
    with pytest.raises(ValueError, match=f"cannot be resumed: {message}"):
        train_vectors(make_rows(200, 0), run, RESUMED, model_spec=SPEC, resume=True, progress=False)
    assert (run / "checkpoint.pt").read_bytes() == before


def test_a_wrong_size_generator_state_is_one_line_from_the_command_line(trained, tmp_path, capsys):
    run = crafted(trained, tmp_path / "run", lambda c: c.update(generator=c["generator"][:100]))
    data = write_npy(tmp_path / "train.npy", make_rows(200, 0))
    # the command line trains its own default model; the run's is recorded in run.json
    argv = ["train", "--data", data, "--out", run, "--resume", "--no-progress", "--blocks", 2, "--batch-size", 64]
    assert run_cli(*argv) == 2
    line = one_line_error(capsys, "train")
    assert f"{run / 'checkpoint.pt'} cannot be resumed: its state of the random generator" in line


# -- the memory of a model, every part counted -----------------------------------------------


def test_a_spline_too_large_for_the_machine_is_refused_before_loading(spline_run, tmp_path, monkeypatch):
    wide = crafted(spline_run, tmp_path / "run", lambda c: _many_bins(c, 999))
    machine_of(monkeypatch, 150_000)  # its LU layers alone would take 1.6 kB; its splines take 180 kB
    with pytest.raises(ValueError, match=r"needs about 0\.0 GB of memory to load and run in float32"):
        load_model(wide / "checkpoint.pt")


def _many_bins(contents: dict, bins: int) -> None:
    """The checkpoint of a spline run of ``bins`` bins, its splines the identity."""
    contents["model_spec"]["bins"] = bins
    for state in (contents["model"], contents["best_model"]):
        for name in [n for n in state if n.startswith("activations.")]:
            columns = bins - 1 if name.endswith("slopes") else bins
            state[name] = torch.full((3, columns), 0.5413 if name.endswith("slopes") else 0.0)


# -- messages that quote a file's contents stay short ----------------------------------------


@pytest.mark.parametrize("key", ["diag", "activation", "init", "name"])
def test_a_huge_entry_in_a_model_spec_is_quoted_short(key, trained, test_file, tmp_path, capsys):
    run = crafted(trained, tmp_path / "run", lambda c: c["model_spec"].update({key: "x" * 1_000_000}))
    assert run_cli("evaluate", run, "--data", test_file) == 2
    line = one_line_error(capsys, "evaluate")
    assert "holds a model spec this version cannot build" in line and len(line) < 600


def test_a_resume_under_other_settings_quotes_the_stored_ones_short(trained, tmp_path):
    run = crafted(trained, tmp_path / "run", lambda c: c["train_config"].update(schedule="y" * 1_000_000))
    with pytest.raises(ValueError, match=r"was trained with other settings \(schedule 'yyy.*\.\.\. -> 'cosine'\)") \
            as caught:
        train_vectors(make_rows(200, 0), run, RESUMED, model_spec=SPEC, resume=True, progress=False)
    assert len(str(caught.value)) < 800


HUGE = "x" * 1_000_000


@pytest.mark.parametrize("edit", [lambda r: r.update(features=HUGE), lambda r: r.update(data_init=HUGE),
                                  lambda r: r.update(data=HUGE), lambda r: r.update({HUGE: 1}),
                                  lambda r: r.update(data_file=[HUGE])],
                         ids=["features", "data-init", "data", "unknown-entry", "data-file"])
def test_a_huge_entry_in_a_run_file_is_quoted_short(edit, trained, test_file, tmp_path, capsys):
    run = with_run_file(trained, tmp_path / "run", edit)
    assert run_cli("evaluate", run, "--data", test_file) == 2
    line = one_line_error(capsys, "evaluate")
    assert f"{run / 'run.json'} does not describe a run on own data" in line and len(line) < 600


def test_a_huge_entry_in_an_image_run_file_is_quoted_short(image_run, tmp_path, capsys):
    run = with_run_file(image_run, tmp_path / "run", lambda r: r.update(dataset=HUGE))
    assert run_cli("evaluate", run) == 2
    line = one_line_error(capsys, "evaluate")
    assert f"{run / 'run.json'}: dataset must be one of" in line and len(line) < 600


def test_a_huge_text_cell_in_a_csv_file_is_quoted_short(trained, tmp_path, capsys):
    data = tmp_path / "cells.csv"
    data.write_text("1,2,3\n4," + "x" * 100_000 + ",6\n7,8,9\n")
    assert run_cli("evaluate", trained, "--data", data) == 2
    line = one_line_error(capsys, "evaluate")
    assert f"{data}: line 2, column 2: 'xxx" in line and "is not a number" in line and len(line) < 600
