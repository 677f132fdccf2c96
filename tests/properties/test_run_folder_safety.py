"""A run folder under a running training, and outputs that would land on data or on runs.

Outputs never replace a data file or a file in a run folder; a model folder swapped for a link
mid-run, a run folder replaced mid-run, a hard-linked lock and a stop signal during a save are
each refused or waited for; ``--overwrite`` clears only what the run's record lists; the peers
benchmark checks its outputs before it trains. docs/reliability.md lists these cases.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
from pathlib import Path

import pytest
import torch

from conftest import mixture_trainer, one_line_error, run_cli
from lunet.experiments.files.safe import UnsafeFile
from lunet.experiments.store.checkpoint import load_checkpoint
from lunet.experiments.store.folder import RunFolder
from lunet.experiments.training.log import RunLog

# the fixtures data, trained (a run on own data, two epochs) and run (a copy of it, to damage)
from properties.test_hostile_files import data_fixture, deadline, run_fixture, train, trained_fixture  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def other(trained, tmp_path) -> Path:
    """Another run, the victim of outputs aimed at it."""
    return Path(shutil.copytree(trained, tmp_path / "other"))


def on_epoch(monkeypatch, action) -> None:
    """Call ``action(log, epoch)`` before every epoch of every training from now on."""
    monkeypatch.setattr(RunLog, "epoch_begins", lambda self, epoch: action(self, epoch))


# -- outputs never replace a data file or a file in a run folder --------------------------


@pytest.fixture(scope="module")
def image_run(tmp_path_factory, fake_mnist) -> tuple[Path, Path]:
    """An image run and its own copy of the data it was trained on (outputs are aimed at it)."""
    root = tmp_path_factory.mktemp("images")
    data_dir = Path(shutil.copytree(fake_mnist, root / "data" / "mnist"))
    run = root / "run"
    assert run_cli("train", "--dataset", "mnist", "--data-dir", data_dir, "--no-verify", "--out", run, "--blocks",
                   "1", "--epochs", "1", "--batch-size", "128", "--limit", "300", "--no-progress") == 0
    return run, data_dir


@pytest.mark.parametrize("argv", [
    ["evaluate", "{run}", "--no-verify", "--limit", "20", "--json", "{data}/t10k-images-idx3-ubyte"],
    ["export", "{run}", "--out", "{data}/train-labels-idx1-ubyte"],
], ids=["evaluate --json onto the test images", "export onto the training labels"])
def test_an_output_onto_a_data_file_is_refused_and_the_data_kept(argv, image_run, capsys):
    run, data_dir = image_run
    argv = [a.format(run=run, data=data_dir) for a in argv]
    before = {p.name: p.read_bytes() for p in data_dir.iterdir()}
    assert run_cli(*argv) == 2
    line = one_line_error(capsys, argv[0])
    assert argv[-1] in line and "mnist data file" in line and "would destroy" in line
    assert {p.name: p.read_bytes() for p in data_dir.iterdir()} == before


@pytest.mark.parametrize("argv, target", [
    (["export", "{run}", "--out", "{other}/checkpoint.pt"], "checkpoint.pt"),
    (["sample", "{run}", "--num", "5", "--out", "{other}/checkpoint.pt"], "checkpoint.pt"),
    (["evaluate", "{run}", "--data", "{data}", "--json", "{other}/run.json"], "run.json"),
    (["evaluate", "{run}", "--data", "{data}", "--json", "{other}/metrics.jsonl"], "metrics.jsonl"),
    (["sample", "{run}", "--num", "5", "--out", "{other}/notes.npy"], "notes.npy"),
    (["export", "{run}", "--out", "{other}/class-3/model.pt"], "class-3/model.pt"),
], ids=["export onto its checkpoint", "sample onto its checkpoint", "evaluate onto its run.json",
        "evaluate onto its metrics", "sample onto a file of the user there", "export onto a file in a class folder"])
def test_an_output_onto_a_file_of_another_run_is_refused(argv, target, run, other, data, capsys):
    (other / "notes.npy").write_bytes(b"the user's own file")
    (other / "class-3").mkdir()
    (other / "class-3" / "model.pt").write_bytes(b"the user's own file")
    fill = {"run": run, "other": other, "data": data}
    before = {p: p.read_bytes() for p in other.rglob("*") if p.is_file()}
    assert run_cli(*(a.format(**fill) for a in argv)) == 2
    line = one_line_error(capsys, argv[0])
    assert str(other / target) in line and ("would destroy" in line or "replaces no file there" in line)
    assert {p: p.read_bytes() for p in other.rglob("*") if p.is_file()} == before


def test_a_new_file_may_be_written_in_a_run_folder(run, other, capsys):
    assert run_cli("sample", run, "--num", "5", "--out", other / "samples.npy") == 0
    assert (other / "samples.npy").stat().st_size > 0


# -- model folders swapped for links while a run trains --------------------------------


def test_a_class_folder_made_a_link_during_a_per_class_run_is_refused(fake_mnist, tmp_path, monkeypatch, capsys):
    run, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()

    def plant(log, epoch):
        if log.folder.path.name == "class-0":  # while class 0 trains, class 2's folder becomes a link
            (run / "class-2").symlink_to(outside, target_is_directory=True)

    on_epoch(monkeypatch, plant)
    assert run_cli("train", "--dataset", "mnist", "--data-dir", fake_mnist, "--no-verify", "--out", run, "--per-class",
                   "--blocks", "1", "--epochs", "1", "--batch-size", "64", "--limit", "40", "--no-progress") == 2
    line = one_line_error(capsys, "train")
    assert f"refusing to use {run / 'class-2'}: it is a symbolic link" in line
    assert list(outside.iterdir()) == []
    assert load_checkpoint(run / "class-1" / "checkpoint.pt")["epoch"] == 1  # the classes before it were kept


def test_the_starts_folder_made_a_link_during_training_is_refused(tmp_path, monkeypatch):
    run, outside = RunFolder(tmp_path / "run"), tmp_path / "outside"
    outside.mkdir()

    def swap(log, epoch):
        if epoch == 1:
            run.starts.path.rename(tmp_path / "moved")
            run.starts.path.symlink_to(outside, target_is_directory=True)

    on_epoch(monkeypatch, swap)
    trainer, _ = mixture_trainer(run.starts, epochs=3, eval_every=1)
    refusal = re.escape(f"refusing to use {run.starts.path}: it is a symbolic link")
    with run.locked(), pytest.raises(UnsafeFile, match=refusal):
        trainer.fit()
    assert list(outside.iterdir()) == []
    assert load_checkpoint(tmp_path / "moved" / "checkpoint.pt")["epoch"] == 1


# -- --overwrite and --resume leave alone what the run's record does not list ----------------


def test_overwrite_and_resume_leave_the_users_look_alike_files(data, run, capsys):
    mine = {run / "class-old" / "checkpoint.pt": b"mine", run / "class-old" / "metrics.jsonl": b"mine",
            run / "class-notes.txt": b"notes", run / "starts" / "metrics.jsonl": b"mine"}
    for path, text in mine.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(text)
    assert train(data, run, "--resume", epochs=3) == 0, capsys.readouterr().err
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 3
    assert train(data, run, "--overwrite") == 0, capsys.readouterr().err
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 1
    assert {path: path.read_bytes() for path in mine} == mine


# -- signals and the folder under a running training ---------------------------------------


@pytest.mark.parametrize("signum, code, said", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                (signal.SIGINT, 130, "interrupted")], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_during_a_save_waits_until_the_checkpoint_is_written(signum, code, said, data, tmp_path,
                                                                           monkeypatch, capsys):
    real_save = torch.save

    def save_signalled_midway(obj, f, *args, **kwargs):
        class Signalling:
            def write(self, chunk):
                if not sent:
                    sent.append(signum)
                    os.kill(os.getpid(), signum)
                return f.write(chunk)

            def __getattr__(self, name):
                return getattr(f, name)

        return real_save(obj, Signalling(), *args, **kwargs)

    sent: list[int] = []
    monkeypatch.setattr(torch, "save", save_signalled_midway)
    # Ctrl-C's handler as a fresh `lunet` process has it, whatever the tests before this one left
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    out = tmp_path / "run"
    try:
        returned = train(data, out, "--eval-every", "1", epochs=5)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert returned == code, f"SIGINT's handler before the test: {previous!r}"
    assert capsys.readouterr().err.strip().splitlines() == [
        f"lunet train: {said}; the last checkpoint is kept in {out / 'checkpoint.pt'}; "
        f"continue with --resume and the run's own options"]
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
    assert list(out.glob("*.tmp")) == []


def test_a_run_folder_replaced_during_training_stops_it(data, tmp_path, monkeypatch, capsys):
    out, moved = tmp_path / "run", tmp_path / "moved"

    def replace(log, epoch):
        if epoch == 1:
            out.rename(moved)
            out.mkdir()  # a new folder at the path, as a concurrent --overwrite or rm -r and mkdir leave

    on_epoch(monkeypatch, replace)
    assert train(data, out, "--eval-every", "1", epochs=3) == 2
    line = one_line_error(capsys, "train")
    assert f"the run folder {out} was removed, renamed or replaced during the training" in line
    assert list(out.iterdir()) == []
    assert load_checkpoint(moved / "checkpoint.pt")["epoch"] == 1


def test_a_lock_file_with_another_hard_link_is_refused_and_never_written(data, tmp_path, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file\n")
    out = tmp_path / "run"
    out.mkdir()
    os.link(victim, out / ".lock")
    assert train(data, out) == 2
    line = one_line_error(capsys, "train")
    assert f"refusing to write {out / '.lock'}: it has 2 hard links" in line
    assert victim.read_text() == "someone else's file\n"
    assert not (out / "checkpoint.pt").exists()


def test_metrics_hard_linked_during_training_are_refused_and_never_appended_to(data, tmp_path, monkeypatch,
                                                                               capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's file\n")
    out = tmp_path / "run"

    def link(log, epoch):
        if epoch == 1:
            (out / "metrics.jsonl").unlink()
            os.link(victim, out / "metrics.jsonl")

    on_epoch(monkeypatch, link)
    assert train(data, out, "--eval-every", "1", epochs=3) == 2
    assert f"refusing to write {out / 'metrics.jsonl'}: it has 2 hard links" in one_line_error(capsys, "train")
    assert victim.read_text() == "someone else's file\n"


# -- the peers benchmark ------------------------------------------------------------------------


@pytest.fixture
def peers_script(monkeypatch):
    """reproduce/peers.py as a module, with training that fails the test if it is reached."""
    spec = importlib.util.spec_from_file_location("peers_script", ROOT / "reproduce" / "peers.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def no_training(*args, **kwargs):
        raise AssertionError("trained before checking the outputs")

    monkeypatch.setattr("lunet.experiments.benchmarks.peers.train_with_budgets", no_training)
    return script


PEERS = ["--quick", "--datasets", "gmm2d", "--models", "lunet"]


def test_peers_refuses_an_unsafe_output_in_one_line_before_training(peers_script, run, tmp_path, capsys):
    before = (run / "checkpoint.pt").read_bytes()
    assert peers_script.main([*PEERS, "--out", str(run / "checkpoint.pt")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"--out {run / 'checkpoint.pt'} is a file of the run" in err
    assert (run / "checkpoint.pt").read_bytes() == before
    # the pictures too, before any training
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "peers-gmm2d-curves.png").symlink_to(run / "curves.png")
    assert peers_script.main([*PEERS, "--out", str(tmp_path / "r.json"), "--figures", str(tmp_path / "figures")]) == 2
    assert "it is a symbolic link" in capsys.readouterr().err


def test_peers_resume_from_a_fifo_is_refused_without_waiting(peers_script, tmp_path, capsys):
    fifo = tmp_path / "results.json"
    os.mkfifo(fifo)
    with deadline(20):
        assert peers_script.main([*PEERS, "--out", str(fifo), "--resume"]) == 2
    assert f"refusing to write {fifo}: it is a FIFO" in capsys.readouterr().err
