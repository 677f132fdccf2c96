"""The options the commands share (lunet.cli.options): a device that is not there."""

import pytest
import torch

from lunet.cli import main


@pytest.mark.parametrize("command", [
    ["train", "--dataset", "gmm2d", "--epochs", "1"],
    ["train", "--dataset", "mnist", "--limit", "100", "--epochs", "1", "--data-dir", "."],  # no data there
    ["bench", "--micro"],
], ids=["train-2d", "train-images", "bench"])
def test_a_gpu_asked_for_where_there_is_none_fails_with_one_line(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    if command[0] == "train":
        command = command + ["--out", str(tmp_path / "run")]
    assert main(command + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"lunet {command[0]}: error: device 'cuda' was requested but CUDA is not available here; "
                   f"use --device cpu"]
    assert not (tmp_path / "run").exists()  # refused before anything was written
