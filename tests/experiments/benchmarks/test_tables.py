"""The tables of the tabular benchmark (lunet.experiments.benchmarks.tables): a fixed 80/20 split, the
synthetic tables drawn alike at every call, scikit-learn's tables naming the peers extra they need, and
the Gaussian every model is set beside."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from lunet.experiments.benchmarks.peers.models import MissingExtra
from lunet.experiments.benchmarks.tables import SYNTHETIC, TABLES, Table, gaussian_baseline, load_table, split_table


def test_a_split_puts_a_fifth_of_the_rows_aside_to_test_on_the_same_each_time():
    x = torch.arange(51.0).unsqueeze(1).repeat(1, 2)
    table = split_table("t", x, {"source": "here"})
    assert isinstance(table, Table) and table.features == 2
    assert table.test.shape[0] == math.ceil(0.2 * 51) and table.train.shape[0] == 51 - table.test.shape[0]
    assert table.train.dtype == table.test.dtype == torch.float64
    assert sorted(torch.cat([table.train, table.test])[:, 0].tolist()) == x[:, 0].tolist()  # each row once
    assert table.info == {"rows": 51, "features": 2, "source": "here"}
    again = split_table("t", x, {})
    assert torch.equal(again.train, table.train) and torch.equal(again.test, table.test)
    assert not torch.equal(table.test[:, 0], x[: table.test.shape[0], 0].double())  # shuffled, not the first rows


@pytest.mark.parametrize("name, rows, features",
                         [("banana", 5_000, 6), ("clusters", 20_000, 8), ("skewed", 100_000, 10)])
def test_the_synthetic_tables_are_drawn_alike_at_every_call(name, rows, features):
    assert name in SYNTHETIC and name in TABLES
    table = load_table(name)
    assert (table.info["rows"], table.features) == (rows, features)
    assert table.train.shape[0] + table.test.shape[0] == rows
    assert torch.equal(load_table(name).train, table.train)
    assert table.info["source"].startswith("synthetic")


def test_the_banana_bends_each_pair_as_it_says():
    x = torch.cat([load_table("banana").train, load_table("banana").test])
    residual = x[:, 1::2] - x[:, 0::2] ** 2 / 2
    assert residual.std(0).tolist() == pytest.approx([0.5] * 3, abs=0.02)
    assert x[:, 0::2].std(0).tolist() == pytest.approx([1.0] * 3, abs=0.04)


def test_an_unknown_table_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="unknown table 'mnist'; known: iris, wine"):
        load_table("mnist")


def test_scikit_learns_tables_name_the_extra_they_need(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # as if scikit-learn were not installed
    with pytest.raises(MissingExtra, match=r"the iris table needs the optional package 'sklearn.datasets'"):
        load_table("iris")


def test_the_gaussian_baseline_is_the_fit_of_the_training_rows_with_whole_numbers_dequantised():
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(300, 2, generator=gen, dtype=torch.float64),
                   torch.randint(0, 4, (300, 1), generator=gen).double()], dim=1)
    table = split_table("mixed", x, {})
    rules, fit, test = gaussian_baseline(table)
    assert rules.integer == [2]
    noise = test - table.test
    assert bool((noise[:, :2] == 0).all()) and bool(((noise[:, 2] >= 0) & (noise[:, 2] < 1)).all())
    assert float(noise[:, 2].std()) > 0.1  # dequantised, not shifted
    # the fit is of the training rows: their own mean where real, the mean plus U[0, 1) noise's ~1/2 where whole
    mean = table.train.mean(0)
    torch.testing.assert_close(fit.mean[:2], mean[:2])
    assert 0.4 < float(fit.mean[2] - mean[2]) < 0.6
    again = gaussian_baseline(table)
    assert torch.equal(again[2], test) and torch.equal(again[1].mean, fit.mean)  # the same draw each time
