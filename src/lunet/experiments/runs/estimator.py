"""A density estimator of table rows in the scikit-learn style, in memory.

``DensityEstimator().fit(X)`` trains an LU-Net exactly as ``lunet train --data``
does (its defaults, chosen from the rows; early stopping; the Gaussian baseline),
but keeps no run folder unless one is given: the fitted run is held in memory
and written to one file by :meth:`DensityEstimator.save`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch

from lunet.experiments.runs.vector_run import VectorRun, Vectors, load_vector_run
from lunet.experiments.runs.vectors import train_vectors
from lunet.experiments.store.checkpoint import save_checkpoint

__all__ = ["DensityEstimator"]


class DensityEstimator:
    """An LU-Net density of rows (N, D), fitted by maximum likelihood.

    Args:
        config: :class:`~lunet.experiments.config.training.TrainConfig` fields to change in the defaults
            chosen from the rows (``{"lr": 3e-3}``), or a whole ``TrainConfig``.
        model_spec: LU-Net spec entries to change (``{"num_blocks": 8}``), or a whole spec.
        val_fraction: rows held out to choose the best weights and when to stop.
        drop_constant, dequantize: the column rules of :class:`~lunet.experiments.data.columns.ColumnRules`.
        run_dir: a folder to keep the run in (checkpoint, metrics, pictures); None keeps nothing on disk.
        progress: show a progress bar while fitting.
        context_kind: how contexts given to :meth:`fit` are read (``"auto"``, ``"labels"``, ``"vectors"``).

    After :meth:`fit`: ``flow_`` (the trained :class:`~lunet.LUNet`, eval mode), ``summary_`` (the
    run's summary, with the Gaussian's validation NLL beside the flow's) and ``n_features_in_``.
    Inputs may be numpy arrays or tensors; outputs are numpy arrays (float64).

    ``fit(X, context=C)`` fits ``p(x | c)`` instead, one context row per row of ``X`` (class labels or
    vectors); :meth:`score_samples`, :meth:`score` and :meth:`sample` then take contexts too.
    """

    def __init__(self, config: Union[Mapping[str, Any], Any, None] = None,
                 model_spec: Optional[Mapping[str, Any]] = None, val_fraction: float = 0.1,
                 drop_constant: bool = False, dequantize: str = "auto", run_dir: Optional[str | Path] = None,
                 progress: bool = False, context_kind: str = "auto") -> None:
        self.config = config
        self.model_spec = model_spec
        self.val_fraction = val_fraction
        self.drop_constant = drop_constant
        self.dequantize = dequantize
        self.run_dir = run_dir
        self.progress = progress
        self.context_kind = context_kind
        self._run: Optional[VectorRun] = None

    def fit(self, X: Vectors, y: Any = None, context: Optional[Vectors] = None) -> "DensityEstimator":
        """Train on the rows ``X`` (N, D), with ``context`` (N, C) one context row per row for
        ``p(x | c)``; ``y`` is ignored. Returns the estimator."""
        config = self.config if self.config is None or not isinstance(self.config, Mapping) else dict(self.config)
        spec = dict(self.model_spec) if self.model_spec is not None else None

        def train(run_dir: str | Path) -> None:
            _, self.summary_ = train_vectors(X, run_dir, config, model_spec=spec, val_fraction=self.val_fraction,
                                             progress=self.progress, drop_constant=self.drop_constant,
                                             dequantize=self.dequantize, context=context,
                                             context_kind=self.context_kind)
            self._run = load_vector_run(run_dir)

        if self.run_dir is not None:
            train(self.run_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="lunet-fit-") as folder:
                train(Path(folder) / "run")
        return self

    @property
    def fitted(self) -> VectorRun:
        if self._run is None:
            raise ValueError("this DensityEstimator is not fitted yet: call fit(X) first")
        return self._run

    @property
    def flow_(self) -> torch.nn.Module:
        return self.fitted.model

    @property
    def n_features_in_(self) -> int:
        return self.fitted.columns.width

    def score_samples(self, X: Vectors, context: Optional[Vectors] = None) -> np.ndarray:
        """``log p(x)`` in nats of each row of ``X`` (N, D): (N,); ``log p(x | c)`` given ``context`` (N, C)."""
        return self.fitted.log_prob(X, name="X", context=context).numpy()

    def score(self, X: Vectors, y: Any = None, context: Optional[Vectors] = None) -> float:
        """The mean ``log p(x)`` (or ``log p(x | c)``) per row of ``X``, nats (higher is better, as
        scikit-learn scores)."""
        return float(self.score_samples(X, context).mean())

    def sample(self, n_samples: int = 1, random_state: int = 0, temperature: float = 1.0,
               context: Optional[Vectors] = None) -> np.ndarray:
        """``n_samples`` rows (n_samples, D) drawn from the density (latents from ``random_state``); given
        ``context`` (M, C), ``n_samples`` under each of its rows, (M · n_samples, D) context by context."""
        return self.fitted.sample(n_samples, temperature, seed=random_state, context=context).numpy()

    def save(self, path: str | Path) -> Path:
        """Write the fitted estimator to one file (atomically); :meth:`load` reads it back."""
        save_checkpoint(self.fitted.export(), path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "DensityEstimator":
        """An estimator fitted earlier, from :meth:`save`'s file or a ``lunet export`` of a run on own data."""
        estimator = cls()
        estimator._run = VectorRun.from_export(path)
        return estimator

    def __repr__(self) -> str:
        state = f"fitted on {self.n_features_in_} columns" if self._run is not None else "not fitted"
        return f"DensityEstimator({state})"
