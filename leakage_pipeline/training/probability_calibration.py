"""Calibrated out-of-fold probabilities for confident learning: matrix scaling fitted on images no model trained on.

Small CNNs are overconfident: where two classes look alike they give the other one 0.99, and confident
learning then reads look-alikes as wrong labels (on the demo, 4 flags in 5). A multinomial logistic
regression on the log-probabilities (matrix scaling, Guo et al. 2017) maps them to the frequencies seen on
held-out images. Each fold is mapped by a fit on the other folds' predictions, so no image calibrates
itself; images without a fold (the test split, scored by the leak-free model) by a fit on every fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A fit needs every class, with at least this many images, outside the fold it maps: a class missing from
# the fit would get probability 0 and each of its images would look mislabelled.
MIN_IMAGES_PER_CLASS = 5
# Inverse L2 strength of the regression (scikit-learn's C): the map has classes x (classes + 1) weights,
# so a mild penalty keeps it from fitting noise where a class has few images.
REGULARISATION = 1.0
_FLOOR = 1e-6  # log(0) guard: probabilities are clipped here before the log


@dataclass(frozen=True)
class Calibrated:
    probabilities: np.ndarray  # (images, classes), rows sum to 1
    not_calibrated_because: str | None  # None: every image was mapped; else why none was (raw probabilities)


def _fit(log_probabilities: np.ndarray, labels: np.ndarray):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=REGULARISATION, max_iter=2000).fit(log_probabilities, labels)


def _too_few(labels: np.ndarray, class_names: list[str], where: str) -> str | None:
    counts = np.bincount(labels, minlength=len(class_names))
    short = [f"{name} ({count})" for name, count in zip(class_names, counts, strict=True) if count < MIN_IMAGES_PER_CLASS]
    return f"{where} has fewer than {MIN_IMAGES_PER_CLASS} images of {', '.join(short)}" if short else None


def calibrate(probabilities: np.ndarray, labels: np.ndarray, folds: np.ndarray, class_names: list[str]) -> Calibrated:
    """``probabilities`` (images, classes) with each image's given label (class index) and fold (-1: no fold,
    mapped by a fit on all folds). Where some fit would lack a class, nothing is mapped and the reason says why."""
    logs = np.log(np.clip(probabilities, _FLOOR, 1.0))
    in_folds = folds >= 0
    fold_ids = np.unique(folds[in_folds])
    reasons = [_too_few(labels[in_folds & (folds != fold)], class_names, f"the out-of-fold predictions without fold {fold + 1}")
               for fold in fold_ids] if fold_ids.size else ["no image has an out-of-fold prediction"]
    reason = next((reason for reason in reasons if reason), None)
    if reason:
        return Calibrated(probabilities / probabilities.sum(axis=1, keepdims=True), reason)
    calibrated = np.empty_like(probabilities, dtype=np.float64)
    for fold in fold_ids:
        rows = folds == fold
        calibrated[rows] = _fit(logs[in_folds & ~rows], labels[in_folds & ~rows]).predict_proba(logs[rows])
    if (~in_folds).any():
        calibrated[~in_folds] = _fit(logs[in_folds], labels[in_folds]).predict_proba(logs[~in_folds])
    return Calibrated(calibrated, None)
