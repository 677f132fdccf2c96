"""The peers benchmark's report (lunet.experiments.benchmarks.peers.report): parameter counts as the tables
show them, the three tables of each data set from a results file, and its figures."""

from __future__ import annotations

import base64

import pytest
import torch

from lunet.experiments.benchmarks.peers.protocol import FORMS
from lunet.experiments.benchmarks.peers.report import draw_figures, format_params, markdown_tables

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def mark(budget, test, **extra):
    return {"budget_s": budget, "test": test, "test_sem": 0.0123, "epochs": 2.25, "train_seconds": budget + 0.04,
            "process_seconds": 2 * budget, "steps": 12345, "best_at_s": 0.8 * budget, **extra}


def model(label, marks, sampled=True):
    speed = {"params": 2_460_000, "params_free": 4_800, "peak_train_memory_mib": 123.4,
             "density": {"per_s": 98765.4, "batch": 1000},
             "sampling": {"per_s": 1234.56, "batch": 500, "calls": 3} if sampled else {"why": "too slow"},
             "sampling_batch1": {"per_s": 400.0, "seconds": 0.0025, "calls": 7} if sampled else {"why": "too slow"}}
    pixels = base64.b64encode(bytes(range(2 * 16))).decode() if sampled else None
    return {"label": label, "marks": marks, "eval_seconds": 3.21, "speed": speed,
            "curve": [{"train_seconds": 0.0, "test": 9.0}, {"train_seconds": 1.0, "test": 5.0},
                      {"train_seconds": 2.0, "test": None}],
            "samples": {"pixels_b64": pixels} if sampled else {}}


DOC = {
    "protocol": {"schedule": "cosine", "grid_samples": 2},
    "machine": {"torch_threads": 4},
    "quick": True,
    "datasets": {
        "tiny": {"budgets_s": [1.0, 2.5], "unit": "bits/dim", "models": {
            "lunet": model("LU-Net 8×16", [mark(1.0, 5.4321), mark(2.5, None, stopped=True)]),
            "maf": model("MAF", [mark(1.0, 6.0), mark(2.5, 5.5)], sampled=False)}},
        "empty": {"budgets_s": [1.0], "unit": "nats/dim", "models": {}},
    },
}


@pytest.mark.parametrize("n, text", [(2_460_000, "2.46M"), (1_000_000, "1.00M"), (4_800, "4.8k"), (1_000, "1.0k"),
                                     (950, "950"), (0, "0")])
def test_parameter_counts_read_as_the_tables_show_them(n, text):
    assert format_params(n) == text


def test_each_data_set_gets_its_figures_its_clocks_and_its_speed():
    text = markdown_tables(DOC)
    lines = text.splitlines()
    assert lines[0] == f"### tiny (bits/dim, lower is better; {FORMS['cosine']})"
    assert "### empty" not in text  # no models: no tables
    assert "| model | 1 s | 2.5 s |" in lines
    assert "| LU-Net 8×16 | 5.432 ± 0.012 (2.2 ep) | — (2.2 ep) stopped |" in lines
    assert "| MAF | 6.000 ± 0.012 (2.2 ep) | 5.500 ± 0.012 (2.2 ep) |" in lines
    assert "| LU-Net 8×16 | 1 | 1.0 | 2.0 | 12,345 | 0.8 | 3.2 |" in lines  # the clocks, evaluation once
    assert "|  | 2.5 | 2.5 | 5.0 | 12,345 | 2.0 |  |" in lines
    assert "| LU-Net 8×16 | 2.46M (4.8k) | 123 | 98,765 (1,000) | 1,234.6 (500, 3) | 2.5 (7) |" in lines
    assert "| MAF | 2.46M (4.8k) | 123 | 98,765 (1,000) | not measured (too slow) | not measured (too slow) |" in lines


def test_the_constant_form_is_named_where_the_protocol_has_no_schedule():
    doc = {**DOC, "protocol": {}}
    assert FORMS["constant"] in markdown_tables(doc).splitlines()[0]


def test_the_figures_are_the_curves_and_for_images_a_row_of_samples_per_model(tmp_path, monkeypatch):
    from lunet.experiments import plots

    grids = []
    save_image_grid = plots.save_image_grid
    monkeypatch.setattr(plots, "save_image_grid", lambda images, path, **kw: grids.append((images, kw)) or
                        save_image_grid(images, path, **kw))
    paths = draw_figures(DOC, "tiny", tmp_path, image_shape=(4, 4))
    assert paths == [tmp_path / "peers-tiny-curves.png", tmp_path / "peers-tiny-samples.png"]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)
    [(images, kw)] = grids
    assert images.shape == (4, 4, 4) and kw["nrow"] == 2
    assert kw["row_labels"] == ["LU-Net 8×16", "MAF: not sampled"]
    assert torch.equal(images[:2], torch.arange(32.0).view(2, 4, 4) / 255)  # the stored pixels
    assert bool((images[2:] == 0.5).all())  # grey where a model was not sampled
    assert draw_figures(DOC, "tiny", tmp_path / "vectors") == [tmp_path / "vectors" / "peers-tiny-curves.png"]
