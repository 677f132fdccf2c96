"""Weights-only loads of PyTorch files (lunet.experiments.files.loads): tensors and plain containers come
back; a file that would run code, a damaged file and one that would unpack far beyond its size are
refused in one line naming the file."""

from __future__ import annotations

import fractions
import re
import zipfile

import pytest
import torch

from lunet.experiments.files import loads
from lunet.experiments.files.loads import MAX_INFLATION, load_weights_only

RULE = "save the state_dict instead"


def test_tensors_and_plain_containers_load(tmp_path):
    path = tmp_path / "w.pt"
    stored = {"weight": torch.arange(6.0).view(2, 3), "epoch": 3, "name": "lunet", "sizes": [1, 2], "none": None}
    torch.save(stored, path)
    loaded = load_weights_only(path, "checkpoint", RULE)
    assert loaded.keys() == stored.keys() and torch.equal(loaded["weight"], stored["weight"])
    assert {k: v for k, v in loaded.items() if k != "weight"} == {k: v for k, v in stored.items() if k != "weight"}


def test_a_file_holding_a_python_object_is_refused_naming_it_and_the_rule(tmp_path):
    path = tmp_path / "code.pt"
    torch.save({"ratio": fractions.Fraction(1, 3)}, path)
    with pytest.raises(ValueError) as caught:
        load_weights_only(path, "checkpoint", RULE)
    message = str(caught.value)
    assert message.startswith(f"{path} holds a Python object (fractions.Fraction)")
    assert "could run code" in message and message.endswith(RULE) and "\n" not in message


@pytest.mark.parametrize("content", [b"not a checkpoint at all", b"PK\x03\x04 cut short"], ids=["text", "cut-zip"])
def test_a_damaged_file_is_refused_naming_what_it_should_be(content, tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(f"{path} could not be read as a weights file: it is corrupt")):
        load_weights_only(path, "weights file", RULE)


def test_members_packed_tighter_than_torch_packs_them_are_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "packed.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data/0", b"\0" * (4 * MAX_INFLATION * 4096))
    unpacked = 4 * MAX_INFLATION * 4096
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("the file was unpacked"))
    with pytest.raises(ValueError, match=re.escape(f"{path} could not be read as a checkpoint: its contents would "
                                                   f"unpack from ")) as caught:
        load_weights_only(path, "checkpoint", RULE)
    assert f"to {unpacked:,}" in str(caught.value) and "refused unread" in str(caught.value)


def test_contents_larger_than_the_machines_memory_are_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    torch.save({"weight": torch.zeros(1000)}, path)
    with zipfile.ZipFile(path) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
    monkeypatch.setattr(loads, "machine_memory", lambda: unpacked - 1)
    with pytest.raises(ValueError, match="more than the .* of memory this machine has"):
        load_weights_only(path, "checkpoint", RULE)
    monkeypatch.setattr(loads, "machine_memory", lambda: unpacked)
    assert torch.equal(load_weights_only(path, "checkpoint", RULE)["weight"], torch.zeros(1000))
