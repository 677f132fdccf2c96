"""Hostile and careless files in and around a run folder: links planted in a shared folder,
outputs that would destroy a run or its data, a damaged metrics log, SIGTERM, a full disk, a FIFO.

docs/reliability.md lists these cases. The runs here train a tiny flow on a small ``.npy`` file.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import one_line_error, read_metrics, run_cli
from experiments.runs.test_vectors import make_rows, write_npy
from lunet.cli import main
from lunet.experiments.files.safe import UnsafeFile
from lunet.experiments.store.checkpoint import load_checkpoint, load_model
from lunet.experiments.store.folder import RunFolder
from lunet.experiments.training.log import RunLog

FAST = ["--blocks", "2", "--batch-size", "64", "--no-progress"]
# what a planted link points at: rows of a metrics log, the second past any checkpoint here, so that
# a resume that read the log through the link would also rewrite it
VICTIM_TEXT = '{"epoch": 1}\n{"epoch": 9}\n'


def train(data: Path, out: Path, *extra: str, epochs: int = 1) -> int:
    return main(["train", "--data", str(data), "--out", str(out), "--epochs", str(epochs), *FAST, *extra])


@pytest.fixture(scope="module", name="data")
def data_fixture(tmp_path_factory) -> Path:
    return write_npy(tmp_path_factory.mktemp("data") / "train.npy", make_rows(300, 0))


@pytest.fixture(scope="module", name="trained")
def trained_fixture(tmp_path_factory, data) -> Path:
    """A run on own data, two epochs, one row of metrics each."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert train(data, run, "--eval-every", "1", epochs=2) == 0
    return run


@pytest.fixture(name="run")
def run_fixture(trained, tmp_path) -> Path:
    """A copy of the trained run, to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file outside every run folder that a planted link points at."""
    path = tmp_path / "victim"
    path.write_text(VICTIM_TEXT)
    return path


class _Hung(BaseException):
    """A command still waiting at its deadline (a BaseException: the CLI reports no such error as its own)."""


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail, instead of waiting for ever, when the block blocks (on a FIFO, say)."""

    def expire(signum, frame):
        raise _Hung(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# -- 1. no write goes through a link planted in a run folder ------------------------------


@pytest.mark.parametrize("name, resume", [
    (".lock", False), ("curves.png", False), ("run.json", False),
    ("metrics.jsonl", True), ("curves.png", True), ("checkpoint.pt", True),
], ids=lambda v: v if isinstance(v, str) else ("resume" if v else "new run"))
def test_a_link_planted_in_a_run_folder_is_refused_and_its_target_kept(name, resume, data, run, victim, tmp_path,
                                                                        capsys):
    folder = run if resume else tmp_path / "new"
    folder.mkdir(exist_ok=True)
    (folder / name).unlink(missing_ok=True)
    (folder / name).symlink_to(victim)
    code = train(data, folder, "--resume", "--eval-every", "1", epochs=3) if resume else train(data, folder)
    assert victim.read_text() == VICTIM_TEXT
    assert code == 2
    line = one_line_error(capsys, "train")
    assert f"refusing to write {folder / name}: it is a symbolic link" in line
    if resume and name != "checkpoint.pt":
        assert load_checkpoint(folder / "checkpoint.pt")["epoch"] == 2  # refused before any training


def test_resume_never_rewrites_another_runs_run_file_through_a_link(data, run, tmp_path, capsys):
    other = tmp_path / "other-run.json"  # another run's description, of the same width and model
    other.write_text((run / "run.json").read_text().replace(str(data.resolve()), "/elsewhere/other.npy"))
    before = other.read_text()
    (run / "run.json").unlink()
    (run / "run.json").symlink_to(other)
    assert train(data, run, "--resume", epochs=3) == 2
    assert f"refusing to write {run / 'run.json'}" in one_line_error(capsys, "train")
    assert other.read_text() == before


def test_the_write_probe_never_writes_through_a_planted_link(data, victim, tmp_path):
    out = tmp_path / "new"
    out.mkdir()
    (out / f".write-test-{os.getpid()}").symlink_to(victim)  # a probe's name anyone could guess
    assert train(data, out) == 0
    assert victim.read_text() == VICTIM_TEXT


# -- 2. --overwrite removes nothing outside the run folder ---------------------------------


@pytest.mark.parametrize("sub", ["starts", "class-3"])
def test_overwrite_never_removes_through_a_linked_subfolder(sub, data, run, tmp_path, capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    for name in ("checkpoint.pt", "metrics.jsonl", "curves.png"):
        (outside / name).write_text("kept")
    (run / sub).symlink_to(outside, target_is_directory=True)
    # a run whose record names the sub-folder: a 2-D run (no run.json) has starts/, a per-class run class-K/
    if sub == "starts":
        (run / "run.json").unlink()
    else:
        (run / "run.json").write_text('{"dataset": "mnist", "kind": "per_class"}')
    assert train(data, run, "--overwrite") == 2
    line = one_line_error(capsys, "train")
    assert str(run / sub) in line and "symbolic link" in line
    assert all((outside / name).read_text() == "kept" for name in ("checkpoint.pt", "metrics.jsonl", "curves.png"))
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 2  # refused before anything was removed
    with pytest.raises(UnsafeFile, match="symbolic link"):
        RunFolder(run).clear()
    assert all((outside / name).exists() for name in ("checkpoint.pt", "metrics.jsonl", "curves.png"))


# -- 3. an output that would destroy the run or the command's input ------------------------


@pytest.mark.parametrize("argv, target", [
    (["sample", "{run}", "--out", "{run}/checkpoint.pt"], "{run}/checkpoint.pt"),
    (["export", "{run}", "--out", "{run}/checkpoint.pt"], "{run}/checkpoint.pt"),
    (["evaluate", "{run}", "--data", "{data}", "--json", "{run}/run.json"], "{run}/run.json"),
    (["sample", "{run}", "--out", "{data}"], "{data}"),
    (["evaluate", "{run}", "--data", "{test}", "--json", "{test}"], "{test}"),
], ids=["sample onto the checkpoint", "export onto the checkpoint", "evaluate --json onto run.json",
        "sample onto the training data", "evaluate --json onto its --data"])
def test_an_output_that_is_a_file_of_the_run_or_an_input_is_refused(argv, target, run, data, tmp_path, capsys):
    own_data = Path(shutil.copy(data, tmp_path / "train.npy"))
    (run / "run.json").write_text((run / "run.json").read_text().replace(str(data.resolve()), str(own_data)))
    test = Path(shutil.copy(data, tmp_path / "test.npy"))
    fill = {"run": run, "data": own_data, "test": test}
    target = Path(target.format(**fill))
    before = target.read_bytes()
    assert run_cli(*(a.format(**fill) for a in argv)) == 2
    line = one_line_error(capsys, argv[0])
    assert str(target) in line and "would destroy" in line
    assert target.read_bytes() == before


def test_an_existing_output_is_replaced_whole_and_a_link_there_is_refused(run, data, victim, tmp_path, capsys):
    model = tmp_path / "model.pt"
    model.write_bytes(b"an older file")
    assert run_cli("export", run, "--out", model) == 0  # an ordinary file is replaced
    load_model(model)
    capsys.readouterr()
    for argv in (["evaluate", run, "--data", data, "--json", tmp_path / "e.json"],
                 ["sample", run, "--num", "5", "--out", tmp_path / "s.npy"],
                 ["export", run, "--out", tmp_path / "m.pt"]):
        argv[-1].symlink_to(victim)
        assert run_cli(*argv) == 2
        assert f"refusing to write {argv[-1]}: it is a symbolic link" in one_line_error(capsys, argv[0])
    assert victim.read_text() == VICTIM_TEXT
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# -- 7. a damaged metrics log -------------------------------------------------------------


def test_resume_drops_a_line_cut_short_and_a_junk_line_and_says_so(data, run, capsys):
    log = run / "metrics.jsonl"
    first, second = log.read_text().splitlines()
    log.write_text(f"{first}\nnot json at all\n{second}\n" + '{"epoch": 3, "train_nats_per')  # killed mid-write
    assert train(data, run, "--resume", "--eval-every", "1", epochs=3) == 0
    printed = capsys.readouterr().out
    assert f"warning: dropped from {log}: line 2, not JSON; line 4, cut short" in printed
    assert [row["epoch"] for row in read_metrics(run)] == [1, 2, 3]


def test_a_junk_line_written_during_training_does_not_fail_the_finished_run(data, tmp_path, monkeypatch):
    def junk_after_the_first_row(self, epoch):
        if epoch == 1:
            with open(self.folder.metrics, "a") as f:
                f.write("junk from somewhere else\n")

    monkeypatch.setattr(RunLog, "epoch_begins", junk_after_the_first_row)
    out = tmp_path / "run"
    assert train(data, out, "--eval-every", "1", epochs=2) == 0
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- 8. SIGTERM stops training as Ctrl-C does --------------------------------------------


def test_sigterm_stops_training_with_one_line_naming_the_kept_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lunet.cli", "train", "--data", str(data), "--out", str(out), "--epochs", "100000",
         "--eval-every", "1", *FAST], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        waited = time.monotonic()
        while not (out / "checkpoint.pt").exists() and time.monotonic() - waited < 60 and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert err.strip().splitlines() == [
        f"lunet train: stopped by SIGTERM; the last checkpoint is kept in {out / 'checkpoint.pt'}; "
        f"continue with --resume and the run's own options"
    ]
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] >= 1
    assert list(out.glob("*.tmp")) == []


# -- 9. a full disk, a FIFO ----------------------------------------------------------------


def test_a_save_that_fails_for_lack_of_room_names_the_file_and_the_reason(tmp_path):
    # width 64: weight tensors larger than a file's write buffer, which torch.save writes itself,
    # reporting a failed write as "unexpected pos N vs M", without the reason
    wide = write_npy(tmp_path / "wide.npy", np.random.default_rng(0).standard_normal((300, 64)))
    assert train(wide, tmp_path / "run") == 0
    out = tmp_path / "model.pt"
    out.write_bytes(b"the previous export")
    # a limit on file sizes makes writes fail as a full disk does
    script = (
        "import resource, signal, sys\nfrom lunet.cli import main\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (8000, resource.RLIM_INFINITY))\n"
        f"sys.exit(main(['export', {str(tmp_path / 'run')!r}, '--out', {str(out)!r}]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip().splitlines() == [
        f"lunet export: error: could not write {out}: {os.strerror(errno.EFBIG)}; the file there is unchanged"
    ]
    assert done.returncode == 2
    assert out.read_bytes() == b"the previous export"
    assert list(tmp_path.glob("*.tmp")) == []


def test_a_fifo_in_place_of_a_run_file_is_refused_without_waiting(data, run, capsys):
    (run / "run.json").unlink()
    os.mkfifo(run / "run.json")
    with deadline(30):
        assert run_cli("evaluate", run, "--data", data) == 2
    assert f"refusing to read {run / 'run.json'}: it is a FIFO" in one_line_error(capsys, "evaluate")


def test_a_fifo_in_place_of_the_metrics_is_refused_on_resume_without_waiting(data, run, capsys):
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")
    with deadline(30):
        assert train(data, run, "--resume", epochs=3) == 2
    assert f"refusing to write {run / 'metrics.jsonl'}: it is a FIFO" in one_line_error(capsys, "train")
