"""Training with several processes (torch.distributed, gloo on the CPU): the same model as one
process, files from rank 0 only, resume with another process count."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lunet import LUNet
from lunet.experiments.config.training import TrainConfig
from lunet.experiments.store.checkpoint import load_checkpoint
from lunet.experiments.training.distributed import SINGLE, Group
from lunet.experiments.training.step import Objective
from lunet.experiments.training.trainer import Trainer

DIM = 3
SPEC = {"name": "lunet", "features": DIM, "num_blocks": 2}
# 203 rows in batches of 20: the last batch has 3 rows, split 2 + 1 over two processes
CONFIG = dict(epochs=3, batch_size=20, lr=1e-2, seed=5, grad_clip=5.0, dtype="float64")


def vectors(n: int = 260) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, DIM, generator=gen, dtype=torch.float64)
    return x @ torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.5, 0.0], [0.0, -0.3, 0.2]], dtype=torch.float64) + x**2 * 0.3


def log_prob(model, batch, generator):
    return model.log_prob(batch.to(next(model.parameters())))


def make_trainer(out: Path, group: Group, rows: int = 203, **changes) -> Trainer:
    data = vectors()
    torch.manual_seed(1)
    model = LUNet(DIM, 2)
    return Trainer(model, SPEC, TrainConfig(**{**CONFIG, **changes}), (data[:rows], data[203:]),
                   Objective(log_prob, features=DIM), out, progress=False, group=group)


def _worker(rank: int, world: int, init_file: str, out: str, epochs: int, resume: bool) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        trainer = make_trainer(Path(out), Group(rank, world), epochs=epochs)
        if resume:
            trainer.resume()
        trainer.fit()
        # every process holds the same weights after training
        flat = torch.cat([p.detach().reshape(-1) for p in trainer.model.parameters()])
        gathered = [torch.zeros_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        assert all(torch.equal(g, flat) for g in gathered), "processes hold different weights"
        dist.barrier()  # both past the last exchange before either tears its connections down
    finally:
        dist.destroy_process_group()


def run_processes(tmp_path: Path, out: Path, world: int, epochs: int = CONFIG["epochs"], resume: bool = False) -> None:
    init_file = tmp_path / f"init-{world}-{epochs}-{resume}"
    mp.spawn(_worker, args=(world, str(init_file), str(out), epochs, resume), nprocs=world, join=True)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("single") / "run"
    make_trainer(out, SINGLE).fit()
    return out


def weights(run: Path, key: str = "model") -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint.pt")[key]


def test_two_processes_train_the_model_one_process_trains(tmp_path, single_run):
    out = tmp_path / "two"
    run_processes(tmp_path, out, world=2)
    one, two = weights(single_run), weights(out)
    assert one.keys() == two.keys()
    for k in one:
        assert torch.allclose(one[k], two[k], rtol=1e-9, atol=1e-11), k
    rows_one = [json.loads(ln) for ln in (single_run / "metrics.jsonl").read_text().splitlines()]
    rows_two = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_two] == [1, 2, 3]  # one row per epoch: rank 0 alone wrote
    for a, b in zip(rows_one, rows_two):
        assert b["train_nats_per_dim"] == pytest.approx(a["train_nats_per_dim"], rel=1e-9)
        assert b["val_nats_per_dim"] == pytest.approx(a["val_nats_per_dim"], rel=1e-9)


def test_a_run_of_two_processes_resumes_in_one_and_one_in_two(tmp_path):
    # --resume --epochs 3 after 2 epochs stretches the cosine schedule: compare with one process doing the same
    reference = tmp_path / "one-then-one"
    make_trainer(reference, SINGLE, epochs=2).fit()
    resumed = make_trainer(reference, SINGLE)
    resumed.resume()
    resumed.fit()
    two_then_one = tmp_path / "two-then-one"
    run_processes(tmp_path, two_then_one, world=2, epochs=2)
    trainer = make_trainer(two_then_one, SINGLE)
    trainer.resume()
    trainer.fit()
    one_then_two = tmp_path / "one-then-two"
    make_trainer(one_then_two, SINGLE, epochs=2).fit()
    run_processes(tmp_path, one_then_two, world=2, resume=True)
    for run in (two_then_one, one_then_two):
        got = weights(run)
        assert load_checkpoint(run / "checkpoint.pt")["epoch"] == 3
        for k, v in weights(reference).items():
            assert torch.allclose(got[k], v, rtol=1e-9, atol=1e-11), (run.name, k)


def test_group_shards_cover_every_row_once():
    rows = torch.arange(7)
    shards = [Group(r, 3).shard(rows) for r in range(3)]
    assert torch.equal(torch.cat(shards), rows)
    assert [len(s) for s in shards] == [3, 2, 2]
    assert [Group(r, 3).owns(4) for r in range(3)] == [False, True, False]


def test_more_processes_than_rows_in_a_batch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="batch_size 2 is below the 3 processes"):
        make_trainer(tmp_path / "x", Group(0, 3), batch_size=2)


def test_compile_with_several_processes_is_refused(tmp_path):
    with pytest.raises(ValueError, match="compile trains in one process only"):
        make_trainer(tmp_path / "x", Group(0, 2), compile=True)


def test_the_2d_mixture_is_refused_under_torchrun(tmp_path, monkeypatch, capsys):
    from lunet.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "1"]) == 2
    assert "--dataset gmm2d trains its starts side by side in one process" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_last_batch_smaller_than_the_processes_still_trains_the_model_of_one(tmp_path):
    # 201 training rows in batches of 20: the last batch has 1 row, so one process gets none
    out_one, out_two = tmp_path / "one", tmp_path / "two"
    make_trainer(out_one, SINGLE, rows=201).fit()
    init_file = tmp_path / "init-remainder"
    mp.spawn(_worker_rows, args=(2, str(init_file), str(out_two), 201), nprocs=2, join=True)
    for k, v in weights(out_one).items():
        assert torch.allclose(weights(out_two)[k], v, rtol=1e-9, atol=1e-11), k


def _worker_rows(rank: int, world: int, init_file: str, out: str, rows: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        make_trainer(Path(out), Group(rank, world), rows=rows).fit()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _worker_decisions(rank: int, world: int, init_file: str, folder: str, results: str) -> None:
    import fcntl

    from lunet.experiments.files.lock import RunFolderBusy
    from lunet.experiments.store.folder import RunFolder

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    group, seen = Group(rank, world), []
    try:
        for decision in (lambda: b"\xff".decode(), lambda: open(Path(folder) / "missing" / "x")):
            try:
                group.on_main(decision)
            except Exception as exc:  # noqa: BLE001 (the kind that arrives is what is tested)
                seen.append(type(exc).__name__)
        holder = os.open(Path(folder) / ".lock", os.O_RDWR | os.O_CREAT) if rank == 0 else None
        if holder is not None:  # another holder of the lock: the run folder is busy
            fcntl.flock(holder, fcntl.LOCK_EX)
        try:
            with group.entered_on_main(RunFolder(folder).locked()):
                seen.append("entered")
        except RunFolderBusy:
            seen.append("busy")
        Path(results, f"rank{rank}").write_text(" ".join(seen))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_every_process_raises_what_rank_0_decided_and_none_waits(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    mp.spawn(_worker_decisions, args=(2, str(tmp_path / "init-decisions"), str(folder), str(tmp_path)), nprocs=2,
             join=True)
    # a subclass travels as its nearest listed kind; the lock held elsewhere is busy for both
    assert (tmp_path / "rank0").read_text() == (tmp_path / "rank1").read_text() == "ValueError FileNotFoundError busy"


def test_a_refused_shared_setting_leaves_the_run_that_overwrite_would_replace(tmp_path):
    from lunet.experiments.runs.vectors import train_vectors

    out = tmp_path / "run"
    train_vectors(vectors(), out, TrainConfig(**{**CONFIG, "epochs": 1}), progress=False)
    with pytest.raises(ValueError, match="batch_size 1 is below the 2 processes"):
        train_vectors(vectors(), out, TrainConfig(**{**CONFIG, "batch_size": 1}), overwrite=True, group=Group(0, 2))
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1
