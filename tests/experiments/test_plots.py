"""Pictures (lunet.experiments.plots): the log-density grid, each figure's contents (read back from the
figure before it is written), and figures written atomically as the suffix names them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lunet.experiments import plots
from lunet.experiments.plots import (
    LOG_DENSITY_RANGE,
    log_density_grid,
    plot_density_2d,
    plot_samples_2d,
    plot_samples_beside_data,
    plot_score_histograms,
    plot_training_curves,
    plt,
    save_figure,
    save_image_grid,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The figures the plots would write, kept open to be read instead."""
    figures: list = []

    def keep(fig, path):
        figures.append(fig)
        return Path(path)

    monkeypatch.setattr(plots, "save_figure", keep)
    yield figures
    for fig in figures:
        plt.close(fig)


def test_the_grid_holds_the_log_density_with_rows_along_y():
    grid = log_density_grid(lambda p: p[:, 0] + 10 * p[:, 1], (-1.0, 1.0, 0.0, 2.0), resolution=5)
    xs, ys = np.linspace(-1, 1, 5), np.linspace(0, 2, 5)
    assert grid.shape == (5, 5) and grid.dtype == np.float64
    np.testing.assert_allclose(grid, xs[None, :] + 10 * ys[:, None])


def test_a_figure_is_written_in_the_format_of_its_suffix_and_closed(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_figure(fig, tmp_path / "a.png")
    assert path.read_bytes()[:8] == PNG_MAGIC and not plt.fignum_exists(fig.number)
    fig, _ = plt.subplots()
    assert save_figure(fig, tmp_path / "a.pdf").read_bytes()[:5] == b"%PDF-"


def test_a_figure_that_cannot_be_written_leaves_the_old_file_and_no_temporary(tmp_path):
    (tmp_path / "a.nosuchformat").write_bytes(b"old")
    fig, _ = plt.subplots()
    with pytest.raises(ValueError, match="nosuchformat"):
        save_figure(fig, tmp_path / "a.nosuchformat")
    assert (tmp_path / "a.nosuchformat").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.nosuchformat"]
    assert not plt.fignum_exists(fig.number)


def test_the_curves_show_the_rows_that_hold_both_figures(drawn, tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [{"epoch": 1, "train_nll": 3.0, "val_nll": 3.5}, {"epoch": 2, "train_nll": 2.0},  # an older row
            {"epoch": 3, "train_nll": 1.0, "val_nll": 1.5}]
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + "\n{ cut sho\n")
    plot_training_curves(metrics, tmp_path / "curves.png", "nll", "NLL, nats")
    [fig] = drawn
    ax = fig.axes[0]
    (train, val) = ax.get_lines()
    assert list(train.get_xdata()) == [1, 3] and list(train.get_ydata()) == [3.0, 1.0]
    assert list(val.get_xdata()) == [1, 3] and list(val.get_ydata()) == [3.5, 1.5]
    assert ax.get_ylabel() == "NLL, nats" and [t.get_text() for t in ax.get_legend().get_texts()] == ["train",
                                                                                                      "validation"]


def test_samples_beside_the_data_count_the_points_outside_the_axes(drawn, tmp_path):
    data = torch.tensor([[0.0, 0.0], [0.5, 0.5], [-0.5, 0.2]])
    samples = torch.tensor([[0.0, 0.0], [5.0, 0.0], [0.0, -9.0], [0.9, 0.9]])
    plot_samples_2d(samples, data, (-1.0, 1.0, -1.0, 1.0), tmp_path / "s.png")
    [fig] = drawn
    assert [ax.get_title() for ax in fig.axes] == ["data (3 points)", "samples (4 points, 2 outside the axes)"]
    assert fig.axes[1].get_xlim() == (-1.0, 1.0)


def test_the_density_rows_share_a_scale_and_the_log_row_is_clipped_to_its_range(drawn, tmp_path):
    low = np.full((4, 4), -100.0)
    high = np.linspace(-1.0, 0.5, 16).reshape(4, 4)
    plot_density_2d(torch.zeros(5, 2), [("flow", high), ("truth", low)], (-1.0, 1.0, -1.0, 1.0), tmp_path / "d.png",
                    title="mixture")
    [fig] = drawn
    top = [ax for ax in fig.axes if ax.get_title().endswith("density")]
    bottom = [ax for ax in fig.axes if ax.get_title().endswith("log-density, nats")]
    assert len(top) == len(bottom) == 2
    for ax in top:
        assert ax.images[0].get_clim() == pytest.approx((0.0, np.exp(0.5)))
    np.testing.assert_allclose(top[0].images[0].get_array(), np.exp(high))
    clipped = bottom[1].images[0].get_array()
    assert float(clipped.min()) == pytest.approx(0.5 - LOG_DENSITY_RANGE)
    assert bottom[0].images[0].get_clim() == pytest.approx((0.5 - LOG_DENSITY_RANGE, 0.5))
    assert fig._suptitle.get_text() == "mixture"


def test_an_image_grid_places_each_image_in_its_cell(drawn, tmp_path):
    images = torch.rand(5, 3, 4, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2  # some beyond [0, 1]
    save_image_grid(images, tmp_path / "g.png", nrow=2, row_labels=["a", "b", "c"], title="samples")
    [fig] = drawn
    canvas = np.asarray(fig.axes[0].images[0].get_array())
    assert canvas.shape == (3 * (3 + 2) + 2, 2 * (4 + 2) + 2)
    expected = images.clamp(0, 1).numpy()
    for i in range(5):
        r, c = divmod(i, 2)
        np.testing.assert_allclose(canvas[2 + r * 5 : 2 + r * 5 + 3, 2 + c * 6 : 2 + c * 6 + 4], expected[i])
    assert canvas[2 + 2 * 5, 2 + 6] == 1.0  # the empty cell after the last image stays white
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b", "c"]


def test_the_score_histograms_name_each_score_and_its_auroc(drawn, tmp_path):
    gen = torch.Generator().manual_seed(0)
    scores = {"flow": {"nll": (torch.randn(50, generator=gen), torch.randn(40, generator=gen) + 2),
                       "typicality": (torch.randn(50, generator=gen), torch.randn(40, generator=gen))}}
    report = {"dataset": "mnist", "against": "fashion-mnist", "kind": "per_class",
              "scores": {"nll": "negative log-likelihood", "typicality": "typicality"},
              "models": {"flow": {"label": "LU-Net",
                                  "metrics": {"nll": {"auroc": 0.91234}, "typicality": {"auroc": 0.5}}}}}
    plot_score_histograms(scores, report, tmp_path / "h.png")
    [fig] = drawn
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["LU-Net\nnegative log-likelihood: AUROC 0.912", "LU-Net\ntypicality: AUROC 0.500"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["mnist test (50)",
                                                                            "fashion-mnist test (40)"]
    assert fig._suptitle.get_text() == "mnist per-class run against fashion-mnist"


def test_samples_beside_the_data_show_the_first_columns_pairwise(drawn, tmp_path):
    gen = torch.Generator().manual_seed(0)
    data, samples = torch.randn(30, 6, generator=gen), torch.randn(20, 6, generator=gen)
    plot_samples_beside_data(data, samples, tmp_path / "b.png", names=list("abcdef"), max_columns=3)
    [fig] = drawn
    assert len(fig.axes) == 9
    assert [fig.axes[6 + j].get_xlabel() for j in range(3)] == ["a", "b", "c"]
    assert "beside 20 samples" in fig._suptitle.get_text() and "3 of 6 columns" in fig._suptitle.get_text()
    below, above = fig.axes[3], fig.axes[1]  # row 1 column 0: data; row 0 column 1: samples
    np.testing.assert_allclose(below.collections[0].get_offsets(), data[:, [0, 1]].numpy())
    np.testing.assert_allclose(above.collections[0].get_offsets(), samples[:, [1, 0]].numpy())
