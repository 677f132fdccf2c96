"""Checkpoint files (lunet.experiments.store.checkpoint): round trips, refusals, atomic writes, a flipped
byte, permissions, earlier formats and files that are no checkpoint."""

import stat
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import MIXTURE_SPEC, mixture_trainer
from lunet.experiments.store.checkpoint import FORMAT_VERSION, load_checkpoint, load_model, save_atomic, save_checkpoint


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


def test_a_checkpoint_of_an_earlier_format_is_refused_by_name(gmm_run, tmp_path):
    contents = load_checkpoint(gmm_run / "checkpoint.pt")
    contents.pop("checksum")
    contents["format"] = 1
    torch.save(contents, tmp_path / "old.pt")
    with pytest.raises(ValueError, match=r"earlier development version of lunet \(format 1\).*train the run again"):
        load_model(tmp_path / "old.pt")
    save_checkpoint(contents, tmp_path / "new.pt")
    assert load_checkpoint(tmp_path / "new.pt")["format"] == FORMAT_VERSION


def test_a_checkpoint_that_is_no_pytorch_file_is_one_short_line(gmm_run, tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"\x80\x02not a checkpoint at all")
    with pytest.raises(ValueError) as caught:
        load_checkpoint(tmp_path / "junk.pt")
    assert "corrupt" in str(caught.value) and "\n" not in str(caught.value)


def test_a_checkpoint_of_another_model_is_one_line(gmm_run, tmp_path):
    contents = load_checkpoint(gmm_run / "checkpoint.pt")
    contents["model_spec"] = dict(contents["model_spec"], num_blocks=3)
    save_checkpoint(contents, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not match its model spec") as caught:
        load_model(tmp_path / "other.pt")
    assert "\n" not in str(caught.value)
