"""Checkpoint files: round trips, refusals, atomic writes."""

import pytest
import torch

from conftest import MIXTURE_SPEC, mixture_trainer
from lunet.experiments.store.checkpoint import load_checkpoint, load_model, save_atomic


def test_checkpoint_round_trip_and_refusals(tmp_path):
    trainer, data = mixture_trainer(tmp_path, epochs=2)
    trainer.fit()
    model, ckpt = load_model(tmp_path / "checkpoint.pt", which="last")
    assert ckpt["epoch"] == 2 and ckpt["model_spec"] == MIXTURE_SPEC
    x = data["test"][:100]
    with torch.no_grad():
        assert torch.equal(model.log_prob(x), trainer.model.log_prob(x))
    # a fresh run must not overwrite an existing one
    again, _ = mixture_trainer(tmp_path, epochs=2)
    with pytest.raises(FileExistsError, match="pass resume=True"):
        again.fit()
    # resuming with another model spec is refused by name
    other, _ = mixture_trainer(tmp_path, epochs=2, spec=dict(MIXTURE_SPEC, num_blocks=7))
    with pytest.raises(ValueError, match="holds model"):
        other.resume()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_save_atomic_leaves_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "c.pt"
    save_atomic({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_atomic({"a": Unpicklable()}, path)
    assert torch.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind
