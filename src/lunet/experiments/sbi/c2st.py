"""The classifier two-sample test (C2ST) of the SBI benchmark (sbibm 1.1.0, ``sbibm.metrics.c2st``).

The accuracy of a classifier telling draws of one distribution from the other's, out of fold: 0.5
when they cannot be told apart, 1.0 when they are disjoint. As in the benchmark: both samples
z-scored by the first's (the reference's) mean and std, scikit-learn's ``MLPClassifier`` with two
ReLU layers of ``10 * dim`` units, adam, ``random_state=seed``, 5-fold shuffled cross-validation,
the mean accuracy over folds.

One change, for cost, with ``early_stopping=True`` (the default here): each fold's classifier holds
10 % of its training rows out and stops when their accuracy has not improved for 10 epochs (sklearn's
early stopping, as sbi's own MLP C2ST does), where the benchmark trains on until the training loss
stalls (``max_iter=10000``). On 10-D samples of one distribution that is the difference between
about 2 s and about 80 s a fold, the classifier memorising noise for 500 epochs; the score is still
held-out accuracy of the same classifier. ``early_stopping=False`` is the benchmark's own test.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["c2st"]


def c2st(reference: torch.Tensor, other: torch.Tensor, seed: int = 1, folds: int = 5,
         early_stopping: bool = True) -> float:
    """Out-of-fold accuracy of telling ``reference`` (N, D) from ``other`` (M, D) apart, in [0, 1]."""
    try:
        from sklearn.model_selection import KFold, cross_val_score
        from sklearn.neural_network import MLPClassifier
    except ImportError as exc:
        raise ImportError("the C2ST needs scikit-learn: pip install 'lunet[sbi]'") from exc
    for name, t in (("reference", reference), ("other", other)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{name} must be samples (N, D), got {got}")
    if reference.shape[1] != other.shape[1]:
        raise ValueError(f"the samples differ in width: reference {reference.shape[1]}, other {other.shape[1]}")
    if not (torch.isfinite(reference).all() and torch.isfinite(other).all()):
        raise ValueError("the samples must be finite")
    reference, other = reference.double(), other.double()
    mean, std = reference.mean(0), reference.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    data = torch.cat(((reference - mean) / std, (other - mean) / std)).numpy()
    target = np.concatenate((np.zeros(len(reference)), np.ones(len(other))))
    dim = reference.shape[1]
    classifier = MLPClassifier(activation="relu", hidden_layer_sizes=(10 * dim, 10 * dim), max_iter=10000,
                               solver="adam", random_state=seed, early_stopping=early_stopping)
    splits = KFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(np.mean(cross_val_score(classifier, data, target, cv=splits, scoring="accuracy")))
