"""The accept threshold on inliers, chosen from the data rather than hard-coded.

Calibration pairs come from the training split, found exactly as the audited pairs are (each
sampled training image's nearest neighbours in training, verified): pairs of one patient's images
are true, pairs of two patients are false. For each inlier threshold they give a precision (true
among the pairs at or above it) and a recall (true pairs at or above it, over all true pairs). The
accepted threshold is the smallest one from which precision stays at or above the target for every
higher threshold, with at least ``min_true_pairs`` true pairs above it; when no threshold gets
there (too few patients with repeated images, or subjects no keypoint can tell apart) nothing is
accepted and the stage says why. A review band below it (precision at least ``review_precision``)
lists pairs a person should look at.

Precision depends on how many true pairs are among the candidates: within training most
images have their own patient's other images among their neighbours, while most val and test
images have no twin at all, so the same threshold is less precise there. When the audited pairs'
inliers are given, the chosen threshold must therefore also reach the target at their own mix: the false accepts to
expect among them are the calibration false-accept rate (false pairs at or above the threshold,
plus half a pair, so that a threshold no calibration false pair reached still expects some) times
the audited candidates, and the estimated precision is one minus those over the pairs the
threshold accepts. Two images of one patient filed under two ids in training count as false here,
which only makes the estimate cautious.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class CalibrationSettings:
    target_precision: float = 0.95
    review_precision: float = 0.5
    min_true_pairs: int = 10  # fewer true pairs above a threshold than this cannot vouch for its precision
    # A similarity transform fits 2 points exactly and RANSAC finds a few chance agreements in any
    # pair, so no threshold below this is trusted, whatever the calibration pairs say.
    min_inliers: int = 8


@dataclass(frozen=True)
class Calibration:
    threshold: int | None  # accept pairs with at least this many inliers; None: accept nothing
    review_threshold: int | None  # pairs from here up to the threshold are worth a look
    precision: float | None  # at the threshold, on the calibration pairs
    recall: float | None
    audited_precision: float | None  # estimated at the threshold on the audited pairs' own mix (when given)
    true_pairs: int  # calibration pairs of one patient
    false_pairs: int  # calibration pairs of two patients
    true_accepted: int
    false_accepted: int
    target_precision: float
    reason: str | None  # why nothing is accepted, when threshold is None
    curve: list[dict] = field(default_factory=list)  # precision and recall per threshold

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def precision_recall_curve(inliers: np.ndarray, same: np.ndarray, audited: np.ndarray | None = None) -> list[dict]:
    """Per distinct inlier count t: true and false calibration pairs with at least t inliers, precision,
    recall; with ``audited`` (the audited pairs' inliers) also the audited pairs accepted at t, the false
    accepts to expect among them and the precision that leaves (see the module notes)."""
    inliers, same = np.asarray(inliers, np.int64), np.asarray(same, bool)
    total_true, total_false = int(same.sum()), int((~same).sum())
    thresholds = np.unique(np.concatenate([inliers, [] if audited is None else np.asarray(audited, np.int64)]))
    rows = []
    for threshold in thresholds.astype(np.int64):
        above = inliers >= threshold
        true, false = int((above & same).sum()), int((above & ~same).sum())
        row = {"threshold": int(threshold), "true": true, "false": false,
               "precision": true / (true + false) if true + false else 1.0,
               "recall": true / total_true if total_true else 0.0}
        if audited is not None:
            accepted = int((np.asarray(audited) >= threshold).sum())
            expected_false = (false + 0.5) / (total_false + 1) * len(audited)
            row |= {"audited_accepted": accepted, "audited_expected_false": expected_false,
                    "audited_precision": max(0.0, 1 - expected_false / accepted) if accepted else 1.0}
        rows.append(row)
    return rows


def _lowest_holding(curve: list[dict], precision: float, min_true: int, floor: int) -> dict | None:
    """The lowest threshold (at least ``floor``) from which precision never falls below ``precision``.

    The curve has a row per observed inlier count; every threshold between two observed counts
    accepts the same calibration pairs as the higher count, so the threshold returned is the lowest
    of those (one above the count below), never under ``floor``."""
    chosen = None
    for position in range(len(curve) - 1, -1, -1):  # from the highest threshold down
        row = curve[position]
        if row["precision"] < precision:
            break
        # The audited estimate is judged at the threshold itself, not above it: at high thresholds few
        # pairs are accepted, and the half pair of expected false accepts weighs more there.
        if row["threshold"] >= floor and row["true"] >= min_true and row.get("audited_precision", 1.0) >= precision:
            below = curve[position - 1]["threshold"] + 1 if position else floor
            chosen = {**row, "threshold": max(floor, below)}
    return chosen


def calibrate(inliers: np.ndarray, same: np.ndarray, settings: CalibrationSettings = CalibrationSettings(),
              audited: np.ndarray | None = None) -> Calibration:
    """The threshold from calibration pairs' ``inliers`` and whether each pair is of one patient (``same``);
    with ``audited`` (the audited candidate pairs' inliers) it must also hold at their mix."""
    same = np.asarray(same, bool)
    curve = precision_recall_curve(inliers, same, audited)
    true_pairs, false_pairs = int(same.sum()), int((~same).sum())
    # Thresholds below the floor cannot be chosen, but the curve from the floor up must hold.
    chosen = _lowest_holding(curve, settings.target_precision, settings.min_true_pairs, settings.min_inliers)
    common = dict(true_pairs=true_pairs, false_pairs=false_pairs, target_precision=settings.target_precision,
                  curve=curve)
    if chosen is None:
        if true_pairs < settings.min_true_pairs:
            reason = (f"only {true_pairs} calibration pair(s) of one patient's images were found in training, "
                      f"under the {settings.min_true_pairs} needed: too few patients with repeated images")
        else:
            reason = (f"no inlier threshold reaches {settings.target_precision:.0%} precision with at least "
                      f"{settings.min_true_pairs} true pairs on {true_pairs} true and {false_pairs} false "
                      "calibration pairs" + ("" if audited is None else " and on the audited pairs' own mix"))
        return Calibration(threshold=None, review_threshold=None, precision=None, recall=None, true_accepted=0,
                           false_accepted=0, reason=reason, audited_precision=None, **common)
    review = _lowest_holding(curve, settings.review_precision, 1, settings.min_inliers)
    review_threshold = review["threshold"] if review and review["threshold"] < chosen["threshold"] else None
    return Calibration(threshold=chosen["threshold"], review_threshold=review_threshold,
                       precision=chosen["precision"], recall=chosen["recall"], true_accepted=chosen["true"],
                       false_accepted=chosen["false"], reason=None,
                       audited_precision=chosen.get("audited_precision"), **common)
