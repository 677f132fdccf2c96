"""The tables of the tabular benchmark: scikit-learn's bundled tables and synthetic ones.

Every table is split once, 80 % to train on and 20 % to test, by a fixed seed;
a run on the training part holds out its own validation rows. The synthetic
tables are drawn from fixed seeds, so every call returns the same tensors.
scikit-learn's tables need the ``peers`` extra (``pip install .[peers]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from lunet.baselines.gaussian import FullCovarianceGaussian
from lunet.experiments.benchmarks.peers.models import require
from lunet.experiments.data.columns import ColumnRules

__all__ = ["TABLES", "SYNTHETIC", "Table", "load_table", "split_table", "gaussian_baseline"]

TABLE_SPLIT_SEED = 0
TEST_FRACTION = 0.2


@dataclass
class Table:
    """One table split in two: ``train`` and ``test`` (N, D) float64, with where it came from."""

    name: str
    train: torch.Tensor
    test: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> int:
        return self.train.shape[1]


def split_table(name: str, x: torch.Tensor, info: dict[str, Any]) -> Table:
    """``x`` (N, D) as a :class:`Table`: a fixed random 20 % of the rows to test on."""
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(TABLE_SPLIT_SEED))
    num_test = math.ceil(TEST_FRACTION * x.shape[0])
    x = x.to(torch.float64)
    return Table(name, x[order[num_test:]], x[order[:num_test]],
                 {"rows": x.shape[0], "features": x.shape[1], **info})


def drop_constant_columns(table: Table) -> Table:
    """``table`` without the columns that are constant over its training rows (a density has no
    spread to model there); their indices are recorded in ``info["dropped_constant_columns"]``."""
    constant = (table.train == table.train[0]).all(0)
    keep = ~constant
    return Table(table.name, table.train[:, keep], table.test[:, keep],
                 {**table.info, "features": int(keep.sum()),
                  "dropped_constant_columns": constant.nonzero().flatten().tolist()})


def _sklearn(loader: str) -> Callable[[], tuple[torch.Tensor, dict[str, Any]]]:
    def load() -> tuple[torch.Tensor, dict[str, Any]]:
        datasets = require("sklearn.datasets", f"the {loader[5:]} table")
        x = torch.as_tensor(getattr(datasets, loader)().data, dtype=torch.float64)
        return x, {"source": f"sklearn.datasets.{loader} (bundled, offline)"}

    return load


def _banana(n: int = 5_000, seed: int = 11) -> tuple[torch.Tensor, dict[str, Any]]:
    """Three bent pairs: ``x[2k+1] = x[2k]² / 2 + N(0, 0.5²)``, ``x[2k] ~ N(0, 1)``; 6 columns."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    x[:, 1::2] = x[:, 0::2] ** 2 / 2 + 0.5 * x[:, 1::2]
    return x, {"source": "synthetic: three pairs x' = x²/2 + N(0, 0.5²), x ~ N(0, 1)"}


def _clusters(n: int = 20_000, seed: int = 12) -> tuple[torch.Tensor, dict[str, Any]]:
    """Five Gaussian clusters of random shapes and unequal weights in 8 columns."""
    gen = torch.Generator().manual_seed(seed)
    k, d = 5, 8
    means = 4 * torch.randn(k, d, generator=gen, dtype=torch.float64)
    factors = torch.randn(k, d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    weights = torch.tensor([0.35, 0.25, 0.2, 0.12, 0.08], dtype=torch.float64)
    which = torch.multinomial(weights, n, replacement=True, generator=gen)
    noise = torch.randn(n, d, 1, generator=gen, dtype=torch.float64)
    x = means[which] + (factors[which] @ noise).squeeze(-1)
    return x, {"source": "synthetic: a mixture of five Gaussians in 8 columns, random means and covariances"}


def _skewed(n: int = 100_000, seed: int = 13) -> tuple[torch.Tensor, dict[str, Any]]:
    """Ten columns of skewed and heavy-tailed margins (log-normal, Student-t with 4 degrees of
    freedom, exponential, a bimodal one), mixed by a fixed random rotation of half of them."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 10, generator=gen, dtype=torch.float64)
    chi = torch.randn(n, 4, generator=gen, dtype=torch.float64).pow(2).sum(1, keepdim=True)
    cols = [
        (0.5 * z[:, 0:3]).exp(),  # log-normal
        z[:, 3:5] / (chi / 4).sqrt(),  # Student-t, 4 degrees of freedom
        -torch.log(torch.rand(n, 2, generator=gen, dtype=torch.float64)),  # exponential
        z[:, 7:10] * 0.4 + 2 * torch.sign(z[:, 0:3] + z[:, 3:6]),  # bimodal, tied to the others
    ]
    x = torch.cat(cols, dim=1)
    rotation, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    x[:, :5] = x[:, :5] @ rotation
    return x, {"source": "synthetic: log-normal, Student-t(4), exponential and bimodal columns, "
                         "five of them mixed by a random rotation"}


# name -> loader of the whole table (N, D) and its description
TABLES: dict[str, Callable[[], tuple[torch.Tensor, dict[str, Any]]]] = {
    "iris": _sklearn("load_iris"),
    "wine": _sklearn("load_wine"),
    "breast-cancer": _sklearn("load_breast_cancer"),
    "diabetes": _sklearn("load_diabetes"),
    "digits": _sklearn("load_digits"),
    "banana": _banana,
    "clusters": _clusters,
    "skewed": _skewed,
}
SYNTHETIC = ("banana", "clusters", "skewed")
# tables whose columns constant over the training rows are dropped (digits' blank border pixels)
DROP_CONSTANT = ("digits",)


def load_table(name: str) -> Table:
    """Table ``name`` (one of :data:`TABLES`), split 80/20 by a fixed seed."""
    if name not in TABLES:
        raise ValueError(f"unknown table {name!r}; known: {', '.join(TABLES)}")
    x, info = TABLES[name]()
    table = split_table(name, x, info)
    return drop_constant_columns(table) if name in DROP_CONSTANT else table


def gaussian_baseline(table: Table) -> tuple[ColumnRules, FullCovarianceGaussian, torch.Tensor]:
    """What every model of the benchmark is set beside: the column rules lunet chooses for the
    training rows, the full-covariance Gaussian of those rows (whole-number columns dequantised by
    one fixed draw) and the test rows dequantised as lunet's evaluation dequantises them."""
    rules = ColumnRules.choose(table.train)
    fit = FullCovarianceGaussian.fit(rules.dequantized(table.train, torch.Generator().manual_seed(1)))
    return rules, fit, rules.dequantized(table.test)
