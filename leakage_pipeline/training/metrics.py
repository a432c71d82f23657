"""Classification metrics and their confidence intervals from a bootstrap over patients.

Images of one patient are correlated, so resampling images pretends the test set holds more
independent evidence than it does. The bootstrap here draws whole patients with replacement
and takes every image of each drawn patient.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

METRICS = ("top1", "top3", "macro_f1", "macro_auc")
CONFIDENCE = 0.95


def top_k_accuracy(labels: np.ndarray, probabilities: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the ``k`` most probable (ties: higher class first,
    as scikit-learn breaks them)."""
    top = np.argsort(probabilities, axis=1, kind="stable")[:, ::-1][:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted ones."""
    return np.bincount(labels * num_classes + predicted, minlength=num_classes**2).reshape(num_classes, num_classes)


def macro_f1(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Mean F1 over the classes that occur among the labels or the predictions (as scikit-learn)."""
    matrix = confusion_matrix(labels, predicted, num_classes)
    true_positive = np.diag(matrix).astype(float)
    denominator = matrix.sum(axis=0) + matrix.sum(axis=1)
    present = denominator > 0
    return float((2 * true_positive[present] / denominator[present]).mean())


def macro_auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean one-vs-rest ROC-AUC over the classes with both positives and negatives (NaN if none).

    With two classes it is the AUC of class 1, as scikit-learn reports it (the two one-vs-rest
    AUCs agree in exact arithmetic, but not always once the probabilities are rounded).
    """
    aucs = []
    for cls in [1] if probabilities.shape[1] == 2 else range(probabilities.shape[1]):
        positive = labels == cls
        n_pos = int(positive.sum())
        n_neg = len(labels) - n_pos
        if n_pos == 0 or n_neg == 0:
            continue
        ranks = rankdata(probabilities[:, cls])  # ties get average ranks: the Mann-Whitney form of AUC
        aucs.append((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else float("nan")


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """top-1, top-3 (only with more than 3 classes, else NaN), macro F1 and macro one-vs-rest AUC."""
    num_classes = probabilities.shape[1]
    predicted = probabilities.argmax(axis=1)
    return {
        "top1": float((predicted == labels).mean()),
        "top3": top_k_accuracy(labels, probabilities, 3) if num_classes > 3 else float("nan"),
        "macro_f1": macro_f1(labels, predicted, num_classes),
        "macro_auc": macro_auc(labels, probabilities),
    }


def patient_resamples(patients: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Image indices of ``resamples`` bootstrap samples, each of whole patients drawn with replacement."""
    _, codes = np.unique(patients, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        drawn = rng.integers(0, len(sizes), len(sizes))
        lengths = sizes[drawn]
        within = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        yield order[np.repeat(starts[drawn], lengths) + within]


@dataclass(frozen=True)
class Estimate:
    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float | None]:
        """JSON-ready: an undefined value or bound (say, top-3 with three classes) is None."""
        return {name: None if np.isnan(number) else number
                for name, number in (("value", self.value), ("low", self.low), ("high", self.high))}


def _interval(value: float, draws: np.ndarray) -> Estimate:
    draws = draws[~np.isnan(draws)]
    if np.isnan(value) or not len(draws):
        return Estimate(value, float("nan"), float("nan"))
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Estimate(value, float(low), float(high))


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimates with percentile intervals, and the draws (resample x metric) for differences."""

    estimates: dict[str, Estimate]
    draws: np.ndarray


def bootstrap_metrics(
    labels: np.ndarray, probabilities: np.ndarray, patients: np.ndarray, *,
    keep: np.ndarray | None = None, resamples: int = 1000, seed: int = 0,
) -> BootstrapResult:
    """Metrics of the images in ``keep`` (default all) with patient-bootstrap intervals.

    Resamples are drawn over all patients, then restricted to ``keep``: the same seed gives the
    same patient draws for the full and a reduced test set, so their difference is paired.
    """
    keep = np.ones(len(labels), bool) if keep is None else keep
    point = classification_metrics(labels[keep], probabilities[keep])
    draws = np.full((resamples, len(METRICS)), np.nan)
    for number, sample in enumerate(patient_resamples(patients, resamples, seed)):
        sample = sample[keep[sample]]
        if len(sample):
            draws[number] = list(classification_metrics(labels[sample], probabilities[sample]).values())
    estimates = {name: _interval(point[name], draws[:, column]) for column, name in enumerate(METRICS)}
    return BootstrapResult(estimates=estimates, draws=draws)


def difference(a: BootstrapResult, b: BootstrapResult, metric: str = "top1") -> Estimate:
    """``a - b`` with an interval from the resample-wise differences of their draws."""
    column = METRICS.index(metric)
    return _interval(a.estimates[metric].value - b.estimates[metric].value, a.draws[:, column] - b.draws[:, column])
