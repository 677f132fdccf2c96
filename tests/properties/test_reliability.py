"""Bad inputs and faults through the command line: each gets one clear line or a safe refusal, and no
work is lost.

docs/reliability.md lists these cases; those that one module refuses on its own are tested beside
that module (tests/experiments/store/test_checkpoint.py, tests/experiments/training/test_trainer.py,
...). The image runs here (``image_run`` and ``image_train`` of conftest.py) use a small synthetic
IDX data set (random pixels under the MNIST file names, checked with ``--no-verify``), so the whole
file runs without the real data sets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import gmm_train, image_train, one_line_error, run_cli
from lunet.experiments.files.lock import RunFolderBusy
from lunet.experiments.store.checkpoint import load_checkpoint, save_checkpoint
from lunet.experiments.store.folder import RunFolder

# -- 1. checkpoints never run code, and a save killed midway leaves nothing behind ----


class _Payload:
    """Unpickling this calls ``os.system``: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant_payload(checkpoint: Path, marker: Path) -> None:
    contents = load_checkpoint(checkpoint)
    contents["extra"] = {"note": _Payload(marker)}
    torch.save(contents, checkpoint)


def test_a_checkpoint_with_code_in_it_is_refused_and_the_code_never_runs(gmm_run, image_run, tmp_path, capsys):
    marker = tmp_path / "pwned"
    gmm = tmp_path / "gmm"
    import shutil

    shutil.copytree(gmm_run, gmm)
    _plant_payload(gmm / "starts" / "checkpoint.pt", marker)  # the 2-D run's training checkpoint
    with pytest.raises(ValueError, match="could run code"):
        load_checkpoint(gmm / "starts" / "checkpoint.pt")
    assert gmm_train(gmm, "--epochs", "3", "--resume") == 2
    assert "could run code" in one_line_error(capsys, "train")

    image = tmp_path / "image"
    shutil.copytree(image_run, image)
    _plant_payload(image / "checkpoint.pt", marker)
    for command in (["evaluate", image], ["sample", image, "--out", tmp_path / "s.png"],
                    ["interpolate", image, "--out", tmp_path / "i.png"]):
        assert run_cli(*command) == 2
        assert "could run code" in one_line_error(capsys, command[0])
    settings = json.loads((image / "run.json").read_text())
    (image / "run.json").write_text(json.dumps(dict(settings, kind="class", class_label=0)))  # agreement's kind of run
    assert run_cli("agreement", image, "--data-dir", tmp_path / "no-data") == 2  # refused before the judge needs data
    assert "could run code" in one_line_error(capsys, "agreement")
    assert not marker.exists()


def test_a_save_killed_midway_leaves_no_temporary_for_good(tmp_path):
    out = tmp_path / "run"
    assert gmm_train(out, "--epochs", "1") == 0
    stale = out / "starts" / "checkpoint.pt.x1y2z3.tmp"  # what a save killed by SIGKILL leaves
    stale.write_bytes(b"\0" * 1000)
    assert gmm_train(out, "--epochs", "2", "--resume") == 0
    assert not stale.exists()
    assert load_checkpoint(out / "starts" / "checkpoint.pt")["epoch"] == 2


# -- 3. --overwrite checks everything before it deletes ------------------------------


def test_overwrite_with_a_missing_data_dir_or_device_keeps_the_old_run(image_run, gmm_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "image"
    shutil.copytree(image_run, run)
    before = sorted(p.name for p in run.iterdir())
    assert image_train(run, tmp_path / "no-such-dir", "--limit", "900", "--overwrite") == 2
    one_line_error(capsys, "train")
    assert sorted(p.name for p in run.iterdir()) == before
    load_checkpoint(run / "checkpoint.pt")

    gmm = tmp_path / "gmm"
    shutil.copytree(gmm_run, gmm)
    for device in ("cuda:7", "gpu"):
        assert gmm_train(gmm, "--epochs", "1", "--overwrite", "--device", device) == 2
        assert "device" in one_line_error(capsys, "train")
        assert load_checkpoint(gmm / "checkpoint.pt")["epoch"] == 2


# -- 4. one training per run folder ---------------------------------------------------


def test_a_second_training_into_a_locked_folder_is_refused_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from lunet.experiments.store.folder import RunFolder\n"
         f"with RunFolder({str(out)!r}).locked():\n    print('held', flush=True); sys.stdin.readline()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        assert gmm_train(out, "--epochs", "1") == 2
        line = one_line_error(capsys, "train")
        assert f"process {holder.pid}" in line and "in use" in line
        assert not (out / "checkpoint.pt").exists() and not (out / "metrics.jsonl").exists()
        with pytest.raises(RunFolderBusy):
            with RunFolder(out).locked():
                pass
    finally:
        holder.communicate("\n", timeout=30)
    assert gmm_train(out, "--epochs", "1") == 0  # the lock went with its process


# -- 5. no silently wrong training ------------------------------------------------------


@pytest.mark.parametrize("option", [["--grad-clip", "0"], ["--grad-clip", "-1"], ["--grad-clip", "nan"],
                                    ["--blocks", "0"], ["--lr", "inf"], ["--lr", "nan"], ["--epochs", "0"],
                                    ["--warmup-steps", "-1"], ["--weight-decay", "-1"], ["--alpha", "1"],
                                    ["--seed", "-1"], ["--eval-every", "0"], ["--batch-size", "0"]])
def test_nonsense_training_options_are_refused(option, tmp_path, capsys):
    assert gmm_train(tmp_path / "run", *option) == 2
    err = capsys.readouterr().err
    assert option[0] in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_blown_up_cli_run_exits_2_and_is_not_reported_as_a_result(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_cli("train", "--dataset", "gmm2d", "--out", out, "--epochs", "5", "--lr", "1.0", "--no-progress") == 2
    assert "diverged" in one_line_error(capsys, "train")
    assert not (tmp_path / "run" / "summary.json").exists()


# -- 6. one line, never a traceback ------------------------------------------------------


@pytest.mark.parametrize("argv", [
    ["evaluate", "{run}", "--draws", "0"],
    ["evaluate", "{run}", "--limit", "-5"],
    ["sample", "{run}", "--out", "{tmp}/s.png", "--num", "-1"],
    ["sample", "{run}", "--out", "{tmp}/s.png", "--per-row", "0"],
    ["sample", "{run}", "--out", "{tmp}/s.png", "--temperature", "inf"],
    ["interpolate", "{run}", "--out", "{tmp}/i.png", "--steps", "0"],
    ["agreement", "{run}", "--temperatures", "nan"],
    ["train", "--out", "{tmp}/r", "--lam", "0.5"],
], ids=lambda a: " ".join(a[:1] + a[2:]) if isinstance(a, list) else a)
def test_out_of_range_values_are_refused_by_name(argv, image_run, tmp_path, capsys):
    args = [a.format(run=image_run, tmp=tmp_path) for a in argv]
    assert run_cli(*args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and args[-2] in err


@pytest.mark.parametrize("argv", [
    ["evaluate", "{run}", "--device", "gpu"],
    ["evaluate", "{run}", "--json", "/proc/no/such/x.json"],
    ["sample", "{run}", "--out", "/proc/no/such/s.png"],
    ["sample", "{run}", "--out", "{tmp}"],
    ["interpolate", "{gmm}", "--out", "{tmp}/i.png"],
    ["bench", "--device", "gpu"],
    ["bench", "--micro", "--json", "/proc/no/such/b.json"],
], ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_failures_print_one_line(argv, image_run, gmm_run, tmp_path, capsys):
    args = [a.format(run=image_run, gmm=gmm_run, tmp=tmp_path) for a in argv]
    assert run_cli(*args) == 2
    one_line_error(capsys, args[0])


def test_an_unwritable_out_is_one_line_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert gmm_train(blocker / "run", "--epochs", "1") == 2
    assert str(blocker) in one_line_error(capsys, "train")


def test_an_unforeseen_failure_is_still_one_line(monkeypatch, tmp_path, capsys):
    from lunet.experiments.runs import gmm2d

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(gmm2d, "train_gmm2d_run", broken)
    assert gmm_train(tmp_path / "run", "--epochs", "1") == 2
    assert "something nobody foresaw" in one_line_error(capsys, "train")


def test_ctrl_c_exits_130_and_says_where_the_checkpoint_is(tmp_path, interrupt_at, capsys):
    out = tmp_path / "run"
    interrupt_at(1)  # in epoch 2
    assert gmm_train(out, "--epochs", "3", "--eval-every", "1") == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(out / "starts" / "checkpoint.pt") in err and "--resume" in err
    interrupt_at(None)
    assert gmm_train(out, "--epochs", "3", "--eval-every", "1", "--resume") == 0
    # extending the finished run: its own checkpoint.pt holds the chosen start only; the
    # message names the one that resumes
    interrupt_at(3)  # in epoch 4
    assert gmm_train(out, "--epochs", "5", "--eval-every", "1", "--resume") == 130
    err = capsys.readouterr().err
    assert f"kept in {out / 'starts' / 'checkpoint.pt'};" in err


# -- 7. no quiet misreadings --------------------------------------------------------------


def test_resume_without_a_checkpoint_is_refused_and_keeps_the_metrics(tmp_path, fake_mnist, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    assert gmm_train(out, "--epochs", "1", "--resume") == 2
    assert "no checkpoint" in one_line_error(capsys, "train")
    assert image_train(out, fake_mnist, "--limit", "900", "--resume") == 2
    assert "no checkpoint" in one_line_error(capsys, "train")
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


def test_resume_with_another_limit_is_refused(image_run, fake_mnist, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    assert image_train(run, fake_mnist, "--limit", "950", "--epochs", "2", "--resume") == 2
    assert "other data" in one_line_error(capsys, "train")
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert image_train(run, fake_mnist, "--limit", "900", "--epochs", "2", "--resume") == 0


@pytest.mark.parametrize("argv", [
    ["sample", "{run}", "--out", "{tmp}/s.txt"],
    ["sample", "{run}", "--out", "{tmp}/noext"],
    ["sample", "{run}", "--out", ""],
    ["evaluate", "{run}", "--json", ""],
    ["evaluate", "{run}", "--device", "cpu:1"],
    ["sample", "{run}", "--out", "{tmp}/s.png", "--num", "100000000"],
    ["interpolate", "{run}", "--out", "{tmp}/i.png", "--steps", "1000000000000"],
    ["agreement", "{run}", "--temperatures", "1", "1"],
    ["train", "--out", "", "--epochs", "1"],
], ids=lambda a: " ".join(a) if isinstance(a, list) else a)
def test_outputs_and_sizes_are_checked_before_any_work(argv, image_run, tmp_path, capsys):
    args = [a.format(run=image_run, tmp=tmp_path) for a in argv]
    assert run_cli(*args) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_options_that_do_not_apply_are_refused_by_their_own_names(tmp_path, capsys):
    assert gmm_train(tmp_path / "run", "--class", "3") == 2
    assert "--class applies to image data sets only" in one_line_error(capsys, "train")
    assert gmm_train(tmp_path / "run", "--lam", "0.01", "--data-dir", tmp_path) == 2
    assert "--lam, --data-dir apply to image data sets only" in one_line_error(capsys, "train")
    assert run_cli("train", "--dataset", "mnist", "--model", "realnvp", "--data-init", "none",
                   "--out", tmp_path / "r") == 2
    assert "--data-init applies to --model lunet only" in one_line_error(capsys, "train")
    assert run_cli("train", "--dataset", "mnist", "--starts", "4", "--out", tmp_path / "r") == 2
    assert "--starts applies to --dataset gmm2d only" in one_line_error(capsys, "train")


def test_a_damaged_run_file_is_named(image_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(image_run, run)
    for text, words in (("{not json", "not valid JSON"), ("[1, 2]", "holds a list"),
                        ('{"bogus": 1}', "does not describe a run"), ('{"lam": 0.7}', "lam")):
        (run / "run.json").write_text(text)
        assert run_cli("evaluate", run) == 2
        line = one_line_error(capsys, "evaluate")
        assert str(run / "run.json") in line and words in line


def test_a_single_class_run_reports_no_bayes_classifier(tmp_path, fake_mnist):
    run = tmp_path / "run"
    assert image_train(run, fake_mnist, "--class", "3", "--limit", "500", "--data-init", "standardize") == 0
    assert run_cli("evaluate", run, "--data-dir", fake_mnist, "--no-verify", "--draws", "1",
                   "--json", tmp_path / "e.json") == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["kind"] == "class" and "bayes_classifier_accuracy" not in result


def test_an_image_run_is_not_started_over_a_2d_run(gmm_run, fake_mnist, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(gmm_run, run)
    assert image_train(run, fake_mnist, "--limit", "900") == 2
    assert "--resume" in one_line_error(capsys, "train")
    assert not (run / "run.json").exists()


def test_resume_with_fewer_epochs_than_trained_is_refused(gmm_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(gmm_run, run)
    assert gmm_train(run, "--epochs", "1", "--eval-every", "1", "--resume") == 2
    assert "below the 2 epochs" in one_line_error(capsys, "train")


def test_a_per_class_run_continues_after_one_class_diverged(tmp_path, fake_mnist):
    run = tmp_path / "run"
    options = ["--per-class", "--limit", "60", "--data-init", "standardize"]
    assert image_train(run, fake_mnist, *options) == 0
    marked = load_checkpoint(run / "class-4" / "checkpoint.pt")
    marked["diverged"] = "the validation log-likelihood is nan after epoch 1"
    save_checkpoint(marked, run / "class-4" / "checkpoint.pt")
    assert image_train(run, fake_mnist, *options, "--resume", "--epochs", "2", "--lr", "1e-4") == 0
    for c in range(10):
        assert load_checkpoint(run / f"class-{c}" / "checkpoint.pt")["epoch"] == 2
    # the run goes on with its new settings; a finished class is not held to the old ones
    assert image_train(run, fake_mnist, *options, "--resume", "--epochs", "2", "--lr", "1e-4") == 0


def test_a_failed_image_run_leaves_no_run_file_to_block_a_2d_run(gmm_run, fake_mnist, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(gmm_run, run)
    assert image_train(run, fake_mnist, "--limit", "900", "--resume") == 2
    assert "holds model" in one_line_error(capsys, "train")
    assert not (run / "run.json").exists()
    assert gmm_train(run, "--epochs", "3", "--eval-every", "1", "--resume") == 0

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "run.json").write_text('{"dataset": "mnist"}')  # an image run that never saved a checkpoint
    assert gmm_train(fresh, "--epochs", "1") == 0
    assert not (fresh / "run.json").exists()
