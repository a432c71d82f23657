"""Leak reasons and the verdict: every way a test image leaked counts, once, over the images read."""

import polars as pl
import pytest

from leakage_pipeline.audit.integrity import check_split_integrity
from leakage_pipeline.audit.matching import cross_split_pairs
from leakage_pipeline.audit.report import (
    VERDICT_CANNOT_VOUCH,
    VERDICT_CLEAN,
    VERDICT_LEAKED,
    VERDICT_NOTHING_TO_AUDIT,
    ReportSettings,
    build_report,
    wilson_interval,
)
from leakage_pipeline_tests.conftest import images_frame

SPLITS = ["train", "val", "test"]


def audit(images: pl.DataFrame, settings: ReportSettings = ReportSettings(trusted_radius={"phash": 8, "dhash": 0})):
    pairs = cross_split_pairs(images, SPLITS, 8)
    return build_report(images, pairs, check_split_integrity(images), SPLITS, settings)


def copy_of(images_so_far: list[dict], index: int, **row) -> dict:
    """A row whose image has the same bytes (sha256 and hashes) as row ``index``."""
    source = images_frame(images_so_far).row(index, named=True)
    return {"sha256": source["sha256"], "phash": source["phash"], "dhash": source["dhash"], **row}


def test_shared_patients_without_duplicate_images_count_every_test_image_of_them():
    rows = [{"patient_id": f"p{i}", "split": "train"} for i in range(40)]
    rows += [{"patient_id": f"p{i}", "split": "test"} for i in range(5) for _ in range(3)]  # 15 leaked
    rows += [{"patient_id": f"q{i}", "split": "test"} for i in range(25)]
    verdict = audit(images_frame(rows)).report["verdict"]
    assert verdict["status"] == VERDICT_LEAKED
    assert verdict["leaked_test_images"] == 15 and verdict["test_images_read"] == 40
    assert verdict["per_reason"]["same_patient"] == 15 and verdict["per_reason"]["near_duplicate"] == 0
    assert verdict["text"].startswith("15 of 40 test images (37.5%")
    assert "show a patient or image that is also in train or val" in verdict["text"]


def test_duplicates_only_count_the_duplicates():
    rows = [{"patient_id": f"p{i}", "split": "train"} for i in range(30)]
    rows += [copy_of(rows, i, patient_id=f"copy{i}", split="test") for i in range(4)]
    near = images_frame(rows).row(10, named=True)
    rows.append({"patient_id": "near", "split": "test", "phash": near["phash"] ^ 0b111, "dhash": 12345})
    rows += [{"patient_id": f"q{i}", "split": "test"} for i in range(15)]
    report = audit(images_frame(rows)).report
    verdict = report["verdict"]
    assert verdict["leaked_test_images"] == 5
    # An exact copy is not counted again as a near-duplicate.
    assert verdict["per_reason"]["exact_copy"] == 4 and verdict["per_reason"]["near_duplicate"] == 1
    assert verdict["per_reason"]["same_patient"] == 0
    # Each copy's patient id is tied by it to the source's patient: one identity, so also linked.
    assert verdict["reason_overlap"] == {"linked_patient + exact_copy": 4, "linked_patient + near_duplicate": 1}


def test_the_verdict_counts_the_union_of_reasons_once_per_image():
    rows = [{"patient_id": f"p{i}", "split": "train"} for i in range(30)]
    rows += [{"patient_id": "p0", "split": "test"}, {"patient_id": "p1", "split": "test"}]  # same patient
    rows += [copy_of(rows, 5, patient_id="p5", split="test")]  # same patient and an exact copy
    rows += [copy_of(rows, 6, patient_id="twin", split="test"), {"patient_id": "twin", "split": "test"}]
    rows += [{"patient_id": f"q{i}", "split": "test"} for i in range(15)]
    audited = audit(images_frame(rows))
    verdict = audited.report["verdict"]
    assert verdict["leaked_test_images"] == 5  # p0, p1, p5's copy, and both images of the twin
    assert verdict["per_reason"] == {"same_patient": 3, "linked_patient": 2, "exact_copy": 2, "near_duplicate": 0,
                                     "same_subject": 0}
    twin = audited.flagged.filter(pl.col("patient_id") == "twin")
    # The twin's second image is no duplicate, but its patient is one identity with p6 in train.
    assert sorted(map(tuple, twin["reasons"].to_list())) == [
        ("linked_patient",), ("linked_patient", "exact_copy")]
    evidence = {e["reason"]: e for e in twin["evidence"].to_list()[0]}
    assert evidence["linked_patient"]["partner_patient_id"] == "p6"
    assert audited.report["patient_links"]["identities_with_several_ids"] == 1
    assert audited.identities.filter(pl.col("patient_id") == "twin")["identity"].item() == "p6"


def test_a_case_id_under_two_patient_ids_links_them():
    rows = [{"patient_id": "a", "split": "train", "case_id": "c1"}, {"patient_id": "b", "split": "test", "case_id": "c1"}]
    rows += [{"patient_id": f"q{i}", "split": "test"} for i in range(9)]
    verdict = audit(images_frame(rows)).report["verdict"]
    assert verdict["per_reason"]["linked_patient"] == 1 and verdict["leaked_test_images"] == 1


def test_val_images_are_judged_against_train_only():
    rows = [{"patient_id": "a", "split": "train"}, {"patient_id": "a", "split": "val"},
            {"patient_id": "b", "split": "val"}, {"patient_id": "b", "split": "test"}]
    flagged = audit(images_frame(rows)).flagged
    assert dict(zip(flagged["image_uri"], flagged["split"], strict=True)) == {"img1.png": "val", "img3.png": "test"}


def test_a_split_without_leaks_says_so_plainly():
    rows = [{"patient_id": f"p{i}", "split": split} for i, split in enumerate(["train"] * 30 + ["test"] * 10)]
    verdict = audit(images_frame(rows)).report["verdict"]
    assert verdict["status"] == VERDICT_CLEAN and verdict["leaked_test_images"] == 0
    assert verdict["text"].startswith("None of the 10 test images read shows a patient or image")
    assert verdict["can_move_metric"] is False


def test_images_not_read_are_not_audited_and_too_few_read_cannot_be_vouched_for():
    rows = [{"patient_id": f"p{i}", "split": "train"} for i in range(20)]
    rows += [{"patient_id": f"t{i}", "split": "test", "status": "missing", "sha256": None} for i in range(30)]
    rows += [{"patient_id": f"u{i}", "split": "test"} for i in range(10)]
    report = audit(images_frame(rows)).report
    verdict = report["verdict"]
    assert verdict["status"] == VERDICT_CANNOT_VOUCH and verdict["can_move_metric"] is None
    assert verdict["test_images"] == 40 and verdict["test_images_read"] == 10 and verdict["coverage"] == 0.25
    assert verdict["text"].startswith("The audit cannot vouch for the test split: only 10 of 40 test images (25.0%)")
    assert {r["split"]: r["not_audited"] for r in report["coverage"]} == {"train": 0, "val": 0, "test": 30}
    # Shares are over the images read.
    test_rows = [r for r in report["thresholds"] if r["query_split"] == "test"]
    assert {r["query_images"] for r in test_rows} == {10}


def test_a_few_unread_test_images_are_named_beside_a_verdict_on_the_rest():
    rows = [{"patient_id": f"p{i}", "split": "train"} for i in range(20)]
    rows += [{"patient_id": f"u{i}", "split": "test"} for i in range(19)]
    rows += [{"patient_id": "bad", "split": "test", "status": "unreadable", "sha256": None}]
    verdict = audit(images_frame(rows)).report["verdict"]
    assert verdict["status"] == VERDICT_CLEAN
    assert "1 of 20 test images could not be read; it is not audited." in verdict["text"]


def test_no_test_images_means_nothing_to_audit_against():
    rows = [{"patient_id": f"p{i}", "split": "train"} for i in range(5)] + [{"patient_id": "v", "split": "val"}]
    verdict = audit(images_frame(rows)).report["verdict"]
    assert verdict["status"] == VERDICT_NOTHING_TO_AUDIT and verdict["can_move_metric"] is None
    assert "no test images: there is nothing to audit against" in verdict["text"]
    assert "0 of 0" not in verdict["text"]


def test_image_level_audit_says_the_count_is_a_lower_bound():
    rows = [{"patient_id": f"img{i}.png", "split": "train", "identity_level": "image"} for i in range(10)]
    rows += [copy_of(rows, 0, patient_id="img10.png", split="test", identity_level="image")]
    rows += [{"patient_id": f"img{i}.png", "split": "test", "identity_level": "image"} for i in range(11, 20)]
    report = audit(images_frame(rows)).report
    assert report["patient_ids_given"] is False
    assert report["verdict"]["text"].startswith("Patient ids were not given")
    assert report["verdict"]["leaked_test_images"] == 1


@pytest.mark.parametrize(("hits", "total"), [(0, 10), (3, 10), (10, 10), (773, 2005)])
def test_wilson_interval_contains_the_share_and_stays_in_0_1(hits, total):
    low, high = wilson_interval(hits, total)
    assert 0 <= low <= hits / total <= high <= 1


def _same_subject_pairs(images: pl.DataFrame, pairs: list[tuple[int, int, int, bool]]) -> pl.DataFrame:
    """Same-subject pairs (query row, reference row, inliers, accepted) in the stage's schema."""
    from leakage_pipeline.same_subject.matcher import PAIR_SCHEMA

    sides = ("location", "image_uri", "patient_id", "label", "split")
    rows = []
    for query, reference, inliers, accepted in pairs:
        q, r = images.row(query, named=True), images.row(reference, named=True)
        rows.append({**{f"query_{c}": q[c] for c in sides}, **{f"reference_{c}": r[c] for c in sides},
                     "rank": 1, "cosine": 0.9, "inliers": inliers, "mirrored": False, "accepted": accepted,
                     "review": False})
    return pl.DataFrame(rows, schema=PAIR_SCHEMA)


def test_accepted_same_subject_pairs_are_a_reason_and_tie_identities():
    rows = [{"patient_id": f"p{i}", "split": "train"} for i in range(30)]
    rows += [{"patient_id": "reshot", "split": "test"}, {"patient_id": "reshot", "split": "test"}]
    rows += [{"patient_id": "rejected", "split": "test"}]
    rows += [{"patient_id": f"q{i}", "split": "test"} for i in range(15)]
    images = images_frame(rows)
    same_subject = _same_subject_pairs(images, [(30, 7, 120, True), (32, 8, 5, False)])
    audited = build_report(images, cross_split_pairs(images, SPLITS, 8), check_split_integrity(images), SPLITS,
                           ReportSettings(trusted_radius={"phash": 8, "dhash": 0}), same_subject,
                           {"status": "ran", "reason": None, "top_k": 20, "candidate_pairs": 2, "accepted_pairs": 1,
                            "review_pairs": 0, "accepted_query_images": 1, "calibration": {"threshold": 30}})
    verdict = audited.report["verdict"]
    # The accepted re-shot is same_subject and linked; the patient's other image is linked through it.
    assert verdict["per_reason"]["same_subject"] == 1 and verdict["leaked_test_images"] == 2
    assert verdict["reason_overlap"] == {"linked_patient": 1, "linked_patient + same_subject": 1}
    evidence = audited.reasons.filter(pl.col("reason") == "same_subject").row(0, named=True)
    assert evidence["evidence"] == "120 inliers, cosine 0.9, to img7.png in train"
    assert audited.identities.filter(pl.col("patient_id") == "reshot")["identity"].item() == "p7"
    assert audited.report["same_subject"]["calibration"] == {"threshold": 30}
    assert "rejected" not in audited.flagged["patient_id"].to_list()
