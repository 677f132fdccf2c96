"""The log of a training (lunet.experiments.training.log): metrics.jsonl with its units, the lines on
the console, the curves redrawn at most every half minute, and durations as people write them."""

import json

import pytest

from conftest import mixture_trainer
from experiments.training.test_trainer import StoppedLog
from lunet.cli import main


def test_metrics_name_their_unit_and_hold_the_figures_the_console_shows(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "gmm2d", "--out", str(out), "--epochs", "2", "--eval-every", "1",
                 "--blocks", "2", "--starts", "1"]) == 0
    printed = capsys.readouterr()
    rows = [json.loads(line) for line in (out / "starts" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_nll_nats", "val_nll_nats", "lr", "train_seconds", "steps"}
    assert rows[0]["steps"] == "eager"
    shown = printed.out + printed.err  # the epoch lines go through the progress bar's stream
    for r in rows:
        assert f"train {r['train_nll_nats']:.4f} nats  val {r['val_nll_nats']:.4f} nats" in shown
    assert "epochs," in printed.out and "s training" in printed.out
    assert (out / "starts" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_curves_are_redrawn_at_most_every_half_minute_and_for_every_row_at_a_stop(tmp_path, monkeypatch):
    import lunet.experiments.plots as plots

    drawn = []  # the epochs of the metrics each drawing showed
    monkeypatch.setattr(plots, "plot_training_curves", lambda metrics, *a: drawn.append(
        [json.loads(line)["epoch"] for line in metrics.read_text().splitlines()]))
    trainer, _ = mixture_trainer(tmp_path / "whole", epochs=5)
    trainer.fit()
    assert drawn == [[1], [1, 2, 3, 4, 5]]  # the first epoch, then the last: all within 30 s
    drawn.clear()
    stopped, _ = mixture_trainer(tmp_path / "stopped", epochs=5, log=StoppedLog(tmp_path / "stopped", 3))
    with pytest.raises(KeyboardInterrupt):
        stopped.fit()
    assert drawn == [[1], [1, 2, 3]]


@pytest.mark.parametrize("seconds, text", [(0.04, "0.0 s"), (9.96, "10.0 s"), (42.4, "42 s"), (185, "3 min 05 s"),
                                           (3725, "1 h 02 min")])
def test_durations_read_as_people_write_them(seconds, text):
    from lunet.experiments.training.log import format_seconds

    assert format_seconds(seconds) == text
