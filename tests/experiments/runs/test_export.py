"""``lunet export`` (lunet.experiments.runs.export): a 2-D run's best model in one file, and a folder
without a run refused."""

import torch

from lunet.cli import main
from lunet.experiments.store.checkpoint import load_model


def test_export_of_a_2d_run_loads_as_the_runs_best_model(tmp_path, capsys):

    run = tmp_path / "run"
    assert main(["train", "--dataset", "gmm2d", "--out", str(run), "--epochs", "2", "--blocks", "2",
                 "--no-progress"]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "model.pt")]) == 0
    assert "load_model" in capsys.readouterr().out
    model, info = load_model(tmp_path / "model.pt")
    trained, _ = load_model(run / "checkpoint.pt", which="best")
    assert info["run"] == {"dataset": "gmm2d"} and "optimizer" not in info
    x = torch.randn(5, 2)
    torch.testing.assert_close(model.log_prob(x), trained.log_prob(x), rtol=0, atol=0)


def test_export_refuses_a_folder_without_a_run(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "m.pt")]) == 2
    assert "holds no run made by `lunet train`" in capsys.readouterr().err
