"""Fixtures and helpers shared by several test modules (import the helpers with ``from conftest import ...``).

tests/ is laid out as src/lunet/ is (docs/layout.md). Its sub-folders are packages, so that test modules of
one name in two folders do not clash, and a module takes another's helpers by its name from here
(``from experiments.runs.test_vectors import make_rows``)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch


def random_bias_flow(learn_alpha: bool = False):
    """A small LU-Net (6 features, 3 blocks) from a fixed seed, its biases drawn away from zero."""
    from lunet import LUNet

    torch.manual_seed(0)
    flow = LUNet(6, 3, init="random", init_scale=1.0, learn_alpha=learn_alpha)
    with torch.no_grad():
        for block in flow.blocks:
            block.bias.normal_()
    return flow


def run_cli(*argv: object) -> int:
    """``lunet ARGV`` in this process, every argument as a string; returns the exit code."""
    from lunet.cli import main

    return main([str(a) for a in argv])


def read_metrics(path: Path) -> list[dict]:
    """The rows of a ``metrics.jsonl`` (``path``: the file, or the run folder that holds it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def one_line_error(capsys, command: str) -> str:
    """The error line of a failed command (a missing data file adds where it looked, indented)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"lunet {command}:")]
    assert len(lines) == 1 and lines[0].startswith(f"lunet {command}: error:"), err
    return lines[0]


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes holding ``array`` (rank 1 or 3)."""
    magic = 0x800 | array.ndim
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """``array`` as an IDX file at ``path`` (gzipped, with ``.gz`` added to the name, if ``gz``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


MIXTURE_SPEC = {"name": "lunet", "features": 2, "num_blocks": 6, "alpha": 0.1, "diag": "exp", "init_scale": 1.0}


def mixture_trainer(out_dir: Path, epochs: int, model_spec: dict = MIXTURE_SPEC, spec: dict | None = None,
                    log=None, optimizer=None, **config):
    """A Trainer of the LU-Net of ``model_spec`` on the 2-D mixture (batch 1,024, lr 2e-2 unless
    ``config`` says otherwise), seeded; ``spec``: the model spec it records, ``model_spec`` by
    default; ``optimizer``: a function of the model giving its optimiser (default: the Trainer's).
    Returns the trainer and the data splits."""
    from lunet import LUNet
    from lunet.experiments.config.training import TrainConfig
    from lunet.experiments.runs.gmm2d import _log_prob_fn, make_splits
    from lunet.experiments.training.step import Objective
    from lunet.experiments.training.trainer import Trainer

    data = make_splits(0)
    torch.manual_seed(0)
    model = LUNet(**{k: v for k, v in model_spec.items() if k != "name"})
    model.standardize(data["train"])
    config = TrainConfig(**{"epochs": epochs, "batch_size": 1024, "lr": 2e-2, "seed": 0, **config})
    trainer = Trainer(model, spec or model_spec, config, (data["train"], data["val"]),
                      Objective(_log_prob_fn, features=2), out_dir, progress=False, log=log,
                      optimizer=None if optimizer is None else optimizer(model))
    return trainer, data


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread while a module runs (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    its models are small, and on a busy 2-core machine two threads wait on each other at every
    small operation."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def two_threads():
    """Two intra-op threads, so that ``FrozenAffine`` has shares to split into; restored after."""
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(saved)


@pytest.fixture
def interrupt_at(monkeypatch):
    """``interrupt_at(n)``: every training from now on stops as on Ctrl-C when it has trained ``n``
    epochs (``None``: no more stops), through the run log's hook before each epoch."""
    from lunet.experiments.training.log import RunLog

    def at(epochs_done):
        def epoch_begins(self, epoch):
            if epoch == epochs_done:
                raise KeyboardInterrupt

        monkeypatch.setattr(RunLog, "epoch_begins", epoch_begins)

    return at


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory):
    """Random 28x28 images under the MNIST file names: 5,900 training, 100 test (``--no-verify``)."""
    from lunet.experiments.data.mnist import FILES

    root = tmp_path_factory.mktemp("data") / "mnist"
    rng = np.random.default_rng(0)
    for split, n in (("train", 5900), ("test", 100)):
        images_name, labels_name = FILES[split]
        write_idx(root / images_name, rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / labels_name, rng.integers(0, 10, n))
    return root


# -- small runs of the command line, and fixtures of them (module-scoped: one run per test module) --

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
