"""The inlier threshold is calibrated from same- and different-patient pairs, never guessed."""

import numpy as np

from leakage_pipeline.same_subject.calibration import CalibrationSettings, calibrate, precision_recall_curve


def test_curve_counts_pairs_at_or_above_each_threshold():
    curve = precision_recall_curve(np.array([0, 5, 10, 10, 30]), np.array([False, False, True, False, True]))
    by_threshold = {row["threshold"]: row for row in curve}
    assert by_threshold[10] == {"threshold": 10, "true": 2, "false": 1, "precision": 2 / 3, "recall": 1.0}
    assert by_threshold[30]["precision"] == 1.0 and by_threshold[30]["recall"] == 0.5


def test_smallest_threshold_whose_precision_holds_above_it_is_chosen():
    # False pairs reach 12 inliers by chance; true pairs run from 9 to 60.
    rng = np.random.default_rng(0)
    false = rng.integers(0, 13, 300)
    true = np.concatenate([rng.integers(30, 60, 40), [9, 10, 11]])
    inliers, same = np.concatenate([false, true]), np.concatenate([np.zeros(300, bool), np.ones(43, bool)])
    result = calibrate(inliers, same, CalibrationSettings(target_precision=0.95, min_true_pairs=10, min_inliers=8))
    assert result.threshold == 13  # the first threshold no false pair reaches
    assert result.precision == 1.0 and result.true_accepted == 40 and result.false_accepted == 0
    assert result.recall == 40 / 43
    assert result.true_pairs == 43 and result.false_pairs == 300
    # Below it, a review band where at least half the pairs are true.
    assert result.review_threshold is not None and result.review_threshold < 13


def test_a_dip_in_precision_above_a_threshold_disqualifies_it():
    # At 10 and up precision would be 0.95, but at 20 and up it falls to 0.5: 20 is not safe, so neither is 10.
    inliers = np.array([10] * 19 + [20, 20] + [40] * 12)
    same = np.array([True] * 19 + [True, False] + [True] * 12)
    result = calibrate(inliers, same, CalibrationSettings(target_precision=0.95, min_true_pairs=10, min_inliers=8))
    assert result.threshold == 21  # one above the unsafe 20: every threshold from 21 to 40 accepts the same pairs


def test_the_floor_is_never_undercut_even_when_calibration_pairs_are_perfect():
    result = calibrate(np.array([3] * 20 + [0] * 20), np.array([True] * 20 + [False] * 20),
                       CalibrationSettings(min_inliers=8, min_true_pairs=5))
    assert result.threshold is None and "no inlier threshold" in result.reason


def test_too_few_repeated_patients_accept_nothing_and_say_why():
    result = calibrate(np.array([50, 60, 0, 1, 2]), np.array([True, True, False, False, False]),
                       CalibrationSettings(min_true_pairs=10))
    assert result.threshold is None and result.precision is None
    assert "too few patients with repeated images" in result.reason


def test_an_unreachable_target_accepts_nothing():
    # True and false pairs overlap everywhere: precision never reaches 0.95.
    inliers = np.tile(np.arange(8, 40), 4)
    same = np.tile([True, False], inliers.size // 2)
    result = calibrate(inliers, same, CalibrationSettings(target_precision=0.95, min_true_pairs=5))
    assert result.threshold is None and "reaches 95% precision" in result.reason


def test_a_threshold_must_also_hold_at_the_audited_pairs_mix():
    # Calibration: 2 false pairs in 20,000 reach 10 inliers; plenty of true pairs. Alone, 8 is precise enough.
    inliers = np.concatenate([np.full(19_998, 2), [10, 10], np.full(200, 50)])
    same = np.concatenate([np.zeros(20_000, bool), np.ones(200, bool)])
    assert calibrate(inliers, same).threshold == 8
    # Audited: 20,000 candidates of which 30 are true re-shots (50 inliers). At 8 to 10, 2.5 false accepts
    # are expected among 30 accepted (92% precise); above 10 half a pair (98%).
    audited = np.concatenate([np.full(19_970, 2), np.full(30, 50)])
    result = calibrate(inliers, same, audited=audited)
    assert result.threshold == 11 and result.audited_precision >= 0.95 and result.precision == 1.0
    assert result.curve[-1]["audited_accepted"] == 30
    # Too few calibration pairs to vouch for a large audit: nothing is accepted, and the reason says so.
    sparse = calibrate(inliers[::10], same[::10], CalibrationSettings(min_true_pairs=5), audited=audited)
    assert sparse.threshold is None and "audited pairs' own mix" in sparse.reason
