"""`lunet train` launched by torchrun: two CPU processes (gloo) against one, per-class runs classes_dealt
out over the processes, and a run that loses a process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import read_metrics
from experiments.evaluation.test_ood import write_blob_data
from lunet.cli import main
from lunet.experiments.store.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "lunet.cli"]
OWN = ["--epochs", "3", "--batch-size", "50", "--blocks", "2", "--dtype", "float64", "--eval-every", "1",
       "--no-progress"]


def torchrun(*argv: object, timeout: float = 180) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([*TORCHRUN, *map(str, argv)], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def vectors_file(tmp_path_factory) -> Path:
    gen = np.random.default_rng(3)
    x = gen.normal(size=(401, 3))
    x[:, 1] += x[:, 0] ** 2
    path = tmp_path_factory.mktemp("own") / "train.npy"
    np.save(path, x)
    return path


def test_two_processes_train_the_model_of_one(vectors_file, tmp_path, capsys):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "--data", str(vectors_file), "--out", str(one), *OWN]) == 0
    done = torchrun("train", "--data", vectors_file, "--out", two, *OWN)
    assert done.returncode == 0, done.stderr[-2000:]
    a, b = load_checkpoint(one / "checkpoint.pt"), load_checkpoint(two / "checkpoint.pt")
    for key in ("model", "best_model"):
        for name, value in a[key].items():
            assert torch.allclose(b[key][name], value, rtol=1e-9, atol=1e-12), (key, name)
    # rank 0 alone wrote: one metrics row per epoch, one summary line
    assert [r["epoch"] for r in read_metrics(two)] == [1, 2, 3]
    for r1, r2 in zip(read_metrics(one), read_metrics(two)):
        assert r2["val_nats_per_dim"] == pytest.approx(r1["val_nats_per_dim"], rel=1e-9)
    assert done.stdout.count("best validation") == 1
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


@pytest.fixture(scope="module")
def blob_data(tmp_path_factory) -> Path:
    return write_blob_data(tmp_path_factory.mktemp("blobs"), seed=1, noise_as_fashion=False)


def test_per_class_models_dealt_over_two_processes_are_those_of_one(blob_data, tmp_path, one_thread):
    # one thread here as in each worker (OMP_NUM_THREADS=1): on some CPUs a product's last bits
    # depend on how many threads share it
    small = ["--dataset", "mnist", "--per-class", "--data-dir", blob_data, "--no-verify", "--limit", "60",
             "--blocks", "2", "--epochs", "1", "--batch-size", "20", "--data-init", "standardize", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", "--out", str(one), *map(str, small)]) == 0
    done = torchrun("train", "--out", two, *small)
    assert done.returncode == 0, done.stderr[-2000:]
    for c in range(10):
        a = load_checkpoint(one / f"class-{c}" / "checkpoint.pt")["model"]
        b = load_checkpoint(two / f"class-{c}" / "checkpoint.pt")["model"]
        assert all(torch.equal(a[k], b[k]) for k in a), c
    assert [done.stdout.count(f"mnist class {c}: best validation") for c in range(10)] == [1] * 10
    assert json.loads((two / "run.json").read_text())["kind"] == "per_class"


def _worker_of_rank(launcher: int, rank: int) -> int:
    """The pid of the worker process with ``RANK=rank`` among the launcher's descendants."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        parent = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
        if f"RANK={rank}".encode() in environ and parent != os.getpid() and _descends(parent, launcher):
            return int(entry.name)
    raise AssertionError(f"no worker of rank {rank} under process {launcher}")


def _descends(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return False
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return False


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc (Linux)")
def test_losing_a_process_ends_the_run_clearly_and_one_process_resumes_it(vectors_file, tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [*TORCHRUN, "train", "--data", str(vectors_file), "--out", str(run), "--epochs", "100000",
            "--batch-size", "8", "--blocks", "2", "--no-progress"]
    launcher = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").exists():
            assert launcher.poll() is None, launcher.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "no checkpoint within two minutes"
            time.sleep(0.2)
        time.sleep(0.5)
        os.kill(_worker_of_rank(launcher.pid, 1), signal.SIGKILL)
        _, err = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    assert launcher.returncode != 0
    # rank 0 says why it stopped and where the last checkpoint is, in one line
    lines = [ln for ln in err.splitlines() if ln.startswith("lunet train")]
    assert lines and "checkpoint is kept in" in lines[0], err[-3000:]
    assert "Traceback" not in "\n".join(ln for ln in err.splitlines() if "lunet" in ln)
    ckpt = load_checkpoint(run / "checkpoint.pt")  # valid: written atomically
    epoch = ckpt["epoch"]
    assert main(["train", "--data", str(vectors_file), "--out", str(run), "--epochs", str(epoch + 1),
                 "--batch-size", "8", "--blocks", "2", "--no-progress", "--resume"]) == 0
    assert load_checkpoint(run / "checkpoint.pt")["epoch"] == epoch + 1
