"""Node classification from frozen embeddings: GRACE's / ARIEL's logistic-regression protocol.

The official protocol (ARIEL ``eval.py:49-75``, GRACE's the same): L2-normalise the
embeddings, split the nodes at random into 10% training and 90% test nodes, fit a
one-vs-rest logistic regression (liblinear) chosen by 5-fold cross-validation over
``C in 2^-10 .. 2^9``, and report the test accuracy's mean and standard deviation over
20 random splits.  :class:`NodeClassificationProtocol` holds these numbers; its defaults
are a cheaper grid and fewer repeats (what tests and smoke runs use), and the configs
of the published tables set the official ones.  Split ``r`` is a function of
``(seed, r)``, so two encoders scored with one seed see the same splits.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, KFold, train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import normalize
from torch import Tensor

from contraseg.seeding import mix_seed

__all__ = ["NodeClassificationProtocol", "node_classification_accuracy"]

OFFICIAL_C_GRID = tuple(float(2.0**k) for k in range(-10, 10))


@dataclass(frozen=True)
class NodeClassificationProtocol:
    """The evaluation protocol's numbers (``model.evaluation`` in a config).

    Attributes:
        train_ratio: Fraction of nodes that train the classifier (official 0.1).
        repeats: Random splits (official 20).
        c_grid: Inverse regularisation strengths searched (official ``2^-10 .. 2^9``).
        folds: Cross-validation folds of the search (official 5; 1: no search, the first
            ``C``).
        seed: Seed of the splits.
    """

    train_ratio: float = 0.1
    repeats: int = 3
    c_grid: Sequence[float] = (0.25, 1.0, 4.0, 16.0)
    folds: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.train_ratio < 1 or self.repeats < 1 or self.folds < 1 or not self.c_grid:
            raise ValueError(f"model.evaluation: train_ratio in (0, 1), repeats >= 1, folds >= 1 "
                             f"and a non-empty c_grid, got {self}")  # fmt: skip


def _one_split(features: np.ndarray, labels: np.ndarray, protocol: NodeClassificationProtocol,
               repeat: int) -> float:  # fmt: skip
    state = mix_seed(protocol.seed, repeat) % (2**32)
    x_train, x_test, y_train, y_test = train_test_split(
        features, labels, train_size=protocol.train_ratio, random_state=state)
    classifier = OneVsRestClassifier(LogisticRegression(solver="liblinear"))
    folds = min(protocol.folds, len(y_train))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", UserWarning)  # a class absent from a fold
        if folds >= 2 and len(protocol.c_grid) > 1:
            search = GridSearchCV(classifier, {"estimator__C": list(protocol.c_grid)},
                                  cv=KFold(folds), n_jobs=1)  # fmt: skip
            search.fit(x_train, y_train)
            classifier = search.best_estimator_
        else:
            classifier.set_params(estimator__C=float(protocol.c_grid[0]))
            classifier.fit(x_train, y_train)
        return float((classifier.predict(x_test) == y_test).mean())


def node_classification_accuracy(
    embeddings: Tensor, labels: Tensor, protocol: NodeClassificationProtocol | None = None
) -> tuple[float, float]:
    """Mean and standard deviation of the test accuracy over ``protocol.repeats`` splits.

    Args:
        embeddings: ``(n, d)`` node embeddings (L2-normalised here).
        labels: ``(n,)`` classes.
        protocol: The protocol (``None``: the defaults).

    Returns:
        ``(mean, std)`` (numpy's population std, as the official ``np.std``).
    """
    protocol = protocol or NodeClassificationProtocol()
    if embeddings.shape[0] != labels.shape[0]:
        raise ValueError(f"{embeddings.shape[0]} embeddings for {labels.shape[0]} labels")
    features = normalize(embeddings.detach().float().cpu().numpy(), norm="l2")
    y = labels.detach().cpu().numpy()
    scores = [_one_split(features, y, protocol, r) for r in range(protocol.repeats)]
    return float(np.mean(scores)), float(np.std(scores))
