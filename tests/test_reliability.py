"""Bad inputs and faults: each gets one clear line or a safe refusal, and no work is lost.

docs/reliability.md lists these cases. Image runs here use a small synthetic
IDX data set (random pixels under the MNIST file names, checked with
``--no-verify``), so the whole file runs without the real data sets.
"""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import mixture_trainer, one_line_error, run_cli
from lunet import LUNet
from lunet.cli import flag
from lunet.experiments.files.lock import RunFolderBusy
from lunet.experiments.store.checkpoint import FORMAT_VERSION, load_checkpoint, load_model, save_checkpoint
from lunet.experiments.store.folder import RunFolder
from lunet.experiments.training.state import TrainingDiverged
from lunet.experiments.training.trainer import Trainer

GMM = ["train", "--dataset", "gmm2d", "--blocks", "2", "--batch-size", "512", "--no-progress"]


def gmm_train(out: Path, *extra) -> int:
    return run_cli(*GMM, "--out", out, *extra)


def image_train(out: Path, data: Path, *extra) -> int:
    return run_cli("train", "--dataset", "mnist", "--data-dir", data, "--no-verify", "--out", out,
                   "--blocks", "1", "--epochs", "1", "--batch-size", "128", "--no-progress", *extra)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, fake_mnist) -> Path:
    run = tmp_path_factory.mktemp("image") / "run"
    assert image_train(run, fake_mnist, "--limit", "900") == 0
    return run


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("gmm") / "run"
    assert gmm_train(run, "--epochs", "2", "--eval-every", "1") == 0
    return run


# -- 1. checkpoints never run code, and corruption is reported ----------------------


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


def _flip_a_weight_byte(checkpoint: Path) -> None:
    """Flip one byte in the middle of the largest tensor stored in the zip file."""
    with zipfile.ZipFile(checkpoint) as zf:
        info = max((i for i in zf.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(checkpoint.read_bytes())
    name_len, extra_len = (
        int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    where = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    raw[where] ^= 0x10
    checkpoint.write_bytes(bytes(raw))


def test_a_flipped_byte_in_the_weights_is_reported_as_corruption(gmm_run, tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes((gmm_run / "checkpoint.pt").read_bytes())
    load_model(path)  # intact: loads
    _flip_a_weight_byte(path)
    with pytest.raises(ValueError, match="corrupt"):
        load_model(path)


def test_checkpoints_get_the_permissions_of_the_runs_other_files(gmm_run):
    mode = stat.S_IMODE((gmm_run / "starts" / "checkpoint.pt").stat().st_mode)
    assert mode == stat.S_IMODE((gmm_run / "starts" / "metrics.jsonl").stat().st_mode)
    assert mode == stat.S_IMODE((gmm_run / "checkpoint.pt").stat().st_mode)
    assert mode & stat.S_IRGRP  # readable beyond the owner under the usual umask, as the metrics


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


def _locked_elsewhere(folder: Path) -> bool:
    """Whether another process is refused the lock on ``folder`` now."""
    probe = subprocess.run(
        [sys.executable, "-c",
         f"from lunet.experiments.store.folder import RunFolder\nwith RunFolder({str(folder)!r}).locked(): pass"],
        capture_output=True, text=True,
    )
    return probe.returncode != 0 and "RunFolderBusy" in probe.stderr


def test_a_folder_is_locked_once_within_one_process(tmp_path):
    folder = tmp_path / "run"
    with RunFolder(folder).locked():
        with pytest.raises(RunFolderBusy, match="locked by this process already"):
            with RunFolder(folder).locked():
                pass
        assert _locked_elsewhere(folder)  # the refused second hold does not release the first
    assert not _locked_elsewhere(folder)


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


def _trainer(out: Path, epochs: int = 3, lr: float = 2e-2) -> Trainer:
    return mixture_trainer(out, epochs, model_spec={"name": "lunet", "features": 2, "num_blocks": 3}, lr=lr)[0]


def test_a_finite_blow_up_counts_as_divergence_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = _trainer(tmp_path, epochs=1)
    trainer.fit()
    best = load_checkpoint(tmp_path / "checkpoint.pt")["best_model"]
    with torch.no_grad():
        trainer.model.blocks[-1].bias.add_(1e4)  # finite, and far worse than the start
    trainer.config.epochs = 2
    with pytest.raises(TrainingDiverged, match="worse than the untrained start") as caught:
        trainer.fit()
    assert "epoch 1" in str(caught.value) and "resume=True" in str(caught.value)
    assert "--resume and a lower --lr or a --grad-clip" in caught.value.render(flag)  # as the command line says it
    kept = load_checkpoint(tmp_path / "checkpoint.pt")
    assert kept["epoch"] == 1 and kept["diverged"]
    assert all(torch.equal(kept["best_model"][k], v) for k, v in best.items())
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_after_a_divergence_resume_may_lower_the_learning_rate(tmp_path):
    trainer = _trainer(tmp_path, epochs=1)
    trainer.fit()
    gentler = _trainer(tmp_path, epochs=2, lr=1e-2)
    with pytest.raises(ValueError, match="lr 0.02 -> 0.01"):  # not without a divergence
        gentler.resume()
    with torch.no_grad():
        trainer.model.blocks[0].bias.fill_(float("nan"))
    trainer.config.epochs = 2
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        trainer.fit()
    gentler = _trainer(tmp_path, epochs=2, lr=1e-2)
    gentler.resume()
    assert gentler.optimizer.param_groups[0]["initial_lr"] == 1e-2
    # 9 of 18 steps into the cosine schedule: half the new peak (the old run's rate there was 0)
    assert gentler.optimizer.param_groups[0]["lr"] == pytest.approx(0.005)
    gentler.fit()
    after = load_checkpoint(tmp_path / "checkpoint.pt")
    assert after["epoch"] == 2 and "diverged" not in after and after["train_config"]["lr"] == 1e-2


def test_divergence_before_any_checkpoint_says_nothing_was_kept(tmp_path):
    trainer = _trainer(tmp_path, epochs=1)
    with torch.no_grad():
        trainer.model.blocks[0].bias.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="no checkpoint had been written") as caught:
        trainer.fit()
    assert "kept in" not in str(caught.value)


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

    monkeypatch.setattr(gmm2d, "run", broken)
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


def test_sampling_with_an_infinite_temperature_is_refused():
    net = LUNet(3, 2)
    for bad in (float("inf"), float("nan"), 0.0, -1.0):
        with pytest.raises(ValueError, match="temperature"):
            net.sample(4, temperature=bad)


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


def test_a_checkpoint_of_an_earlier_format_is_refused_by_name(gmm_run, tmp_path):
    contents = load_checkpoint(gmm_run / "checkpoint.pt")
    contents.pop("checksum")
    contents["format"] = 1
    torch.save(contents, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"earlier development version of lunet \(format 1\).*train the run again"):
        load_model(tmp_path / "old.pt")
    save_checkpoint(contents, tmp_path / "new.pt")
    assert load_checkpoint(tmp_path / "new.pt")["format"] == FORMAT_VERSION


def test_the_lock_file_names_its_holder(tmp_path):
    with RunFolder(tmp_path / "run").locked() as folder:
        record = json.loads((folder / ".lock").read_text())
    assert record["pid"] == os.getpid() and record["host"]


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


def test_a_checkpoint_that_is_no_pytorch_file_is_one_short_line(gmm_run, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02not a checkpoint at all")
    with pytest.raises(ValueError) as caught:
        load_checkpoint(tmp_path / "junk.pt")
    assert "corrupt" in str(caught.value) and "\n" not in str(caught.value)


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


def test_temperatures_that_overflow_the_dtype_are_refused():
    net = LUNet(4, 2)
    with pytest.raises(ValueError, match="too large for torch.float32"):
        net.sample(3, temperature=1e39)
    with pytest.raises(ValueError, match="too large"):
        net.frozen().sample(3, temperature=1e39)
    assert torch.isfinite(net.double().sample(3, temperature=1e39)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_nan_met_inside_a_pass_stays_nan_instead_of_indexing_out_of_range(dtype):
    """Inputs are screened, but values that overflow inside a pass reach an activation's
    inverse as NaN: the table lookup must not read out of range (on a GPU that aborts the device)."""
    from lunet.layers import LeakySoftplus

    act = LeakySoftplus(0.1)
    y = torch.tensor([[1.0, float("nan"), -3.0]], dtype=dtype)
    with torch.no_grad():
        x = act.inverse_rows(y)[0]
        expected = act.inverse_rows(y[:, [0, 2]])[0]
    assert torch.isnan(x[0, 1]) and torch.equal(x[:, [0, 2]], expected)


def test_extending_a_run_continues_on_the_longer_schedule(tmp_path):
    _trainer(tmp_path, epochs=1).fit()
    longer = _trainer(tmp_path, epochs=4)
    longer.resume()
    # step 9 of 36 of a cosine from 0.02: the stored rate (0, the end of the 1-epoch run) is not used
    expected = 0.02 * 0.5 * (1 + math.cos(math.pi * 9 / 36))
    assert longer.optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert longer.schedule.rate == pytest.approx(expected)


def test_a_checkpoint_of_another_model_is_one_line(gmm_run, tmp_path):
    contents = load_checkpoint(gmm_run / "checkpoint.pt")
    contents["model_spec"] = dict(contents["model_spec"], num_blocks=3)
    save_checkpoint(contents, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not match its model spec") as caught:
        load_model(tmp_path / "other.pt")
    assert "\n" not in str(caught.value)


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
