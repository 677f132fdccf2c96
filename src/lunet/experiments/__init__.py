"""The experiment side: data sets, preprocessing, run folders, training, evaluation, plots and benchmarks.

``lunet.experiments.DensityEstimator`` is the scikit-learn-style estimator of table rows
(:mod:`lunet.experiments.runs.estimator`), imported on first use so that this package stays light.
"""

from typing import Any

__all__ = ["DensityEstimator"]


def __getattr__(name: str) -> Any:
    if name == "DensityEstimator":
        from lunet.experiments.runs.estimator import DensityEstimator

        return DensityEstimator
    raise AttributeError(f"module 'lunet.experiments' has no attribute {name!r}")
