import polars as pl
import pytest

from leakage_pipeline.audit.identity import identities
from leakage_pipeline.audit.integrity import check_split_integrity
from leakage_pipeline.audit.leak_free_split import leak_free_split
from leakage_pipeline.audit.manifest import ManifestError
from leakage_pipeline.audit.splitting import (
    MOVED_WITH_IDENTITY,
    SplitPlan,
    assign_splits,
    identities_whole,
    keep_splits,
)
from leakage_pipeline_tests.conftest import images_frame


def manifest(patients: int, start: int = 0, images: int = 3) -> pl.DataFrame:
    labels = ["common"] * 6 + ["rare"] * 3 + ["very_rare"]
    return pl.DataFrame([
        {"image_uri": f"p{p}_{i}.png", "patient_id": f"p{p}", "label": labels[p % len(labels)], "split": None}
        for p in range(start, start + patients) for i in range(images)
    ], schema_overrides={"split": pl.String})


def test_assignment_is_patient_level_deterministic_and_stratified():
    frame = manifest(600)
    plan = SplitPlan(seed=11)
    assigned = assign_splits(frame, plan)
    assert assigned.group_by("patient_id").agg(pl.col("split").n_unique())["split"].max() == 1
    assert assigned.equals(assign_splits(frame, plan))
    assert not assigned.equals(assign_splits(frame, SplitPlan(seed=12)))
    for label, group in assigned.unique("patient_id").group_by("label"):
        shares = group["split"].value_counts(normalize=True)
        share = dict(zip(shares["split"], shares["proportion"]))
        assert abs(share["train"] - 0.7) < 0.02, label
        assert abs(share["test"] - 0.15) < 0.02, label


def test_new_patients_never_move_old_ones():
    plan = SplitPlan(seed=3)
    first = assign_splits(manifest(300), plan)
    ledger = first.select("patient_id", "split").unique()
    grown = pl.concat([manifest(300), manifest(200, start=300)])
    second = assign_splits(grown, plan, ledger)
    before = dict(ledger.iter_rows())
    after = dict(second.select("patient_id", "split").unique().iter_rows())
    assert all(after[p] == s for p, s in before.items())
    assert set(second.filter(pl.col("patient_id").is_in(list(before)).not_())["split_source"]) == {"assigned"}


def test_keep_needs_a_split_on_every_row():
    frame = manifest(2).with_columns(split=pl.lit("train"))
    assert keep_splits(frame)["split"].to_list() == ["train"] * 6
    with pytest.raises(ManifestError, match="2 row\\(s\\) have none, first: \\[2, 5\\]"):
        keep_splits(frame.with_columns(split=pl.when(pl.col("image_uri").str.ends_with("_1.png"))
                                       .then(None).otherwise(pl.col("split"))))


def test_integrity_finds_every_kind_of_crossing():
    frame = pl.DataFrame({
        "row": [1, 2, 3, 4, 5, 6],
        "image_uri": ["a", "b", "c", "d", "./e", "e"],
        "location": ["/a", "/b", "/c", "/d", "/e", "/e"],
        "patient_id": ["p1", "p1", "p2", "p3", "p4", "p5"],
        "label": ["x", "x", "y", "y", "x", "x"],
        "split": ["train", "test", "train", "val", "train", "test"],
        "case_id": ["c1", "c1", "c2", "c2", None, None],
        "vendor": [None] * 6,
    }, schema_overrides={"vendor": pl.String})
    findings = check_split_integrity(frame)
    assert findings.leaky
    assert findings.patients_spanning_splits.to_dicts() == [
        {"patient_id": "p1", "splits": ["test", "train"], "images": 2}]
    assert set(findings.case_ids_spanning_splits["case_id"]) == {"c1", "c2"}
    assert findings.case_ids_under_several_patients.to_dicts() == [
        {"case_id": "c2", "patient_ids": ["p2", "p3"], "images": 2}]
    assert findings.duplicate_locations.to_dicts() == [
        {"location": "/e", "splits": ["test", "train"], "rows": [5, 6]}]
    assert findings.counts.columns == ["split", "label", "images"]


def test_each_identity_goes_whole_to_the_split_holding_most_of_its_images():
    assignments = pl.DataFrame({
        "location": [f"/{n}" for n in range(9)],
        "patient_id": ["a", "a", "a", "b", "c", "c", "c", "d", "e"],
        "split": ["train", "train", "train", "test", "train", "test", "test", "val", "test"],
        "split_source": ["manifest"] * 9,
    })
    linked = pl.DataFrame({"patient_id": ["a", "b"], "identity": ["a", "a"]})
    split = identities_whole(assignments, linked, ["train", "val", "test"])
    assert dict(zip(split["location"], split["split"], strict=True)) == {
        "/0": "train", "/1": "train", "/2": "train", "/3": "train", "/4": "test", "/5": "test", "/6": "test",
        "/7": "val", "/8": "test"}
    assert split.filter(pl.col("split_source") == MOVED_WITH_IDENTITY)["location"].to_list() == ["/3", "/4"]
    # An earlier leak-free split's placements come first: stable as data grows.
    ledger = pl.DataFrame({"patient_id": ["b", "c"], "split": ["test", "train"]})
    again = identities_whole(assignments, linked, ["train", "val", "test"], ledger)
    assert set(again.filter(pl.col("patient_id").is_in(["a", "b"]))["split"]) == {"test"}
    assert set(again.filter(pl.col("patient_id") == "c")["split"]) == {"train"}


def test_leak_free_split_follows_a_duplicate_that_a_move_brings_across_splits():
    rows = [{"patient_id": "A", "split": "train"}]
    a = images_frame(rows).row(0, named=True)
    rows += [{"patient_id": "C", "split": "train", "dhash": a["dhash"]}]  # a near-duplicate of A, within train
    rows += [{"patient_id": "B", "split": "test", "sha256": a["sha256"], "phash": a["phash"]}]  # A's copy
    rows += [{"patient_id": "B", "split": "test"}, {"patient_id": "B", "split": "test"}]
    rows += [{"patient_id": f"p{i}", "split": "train"} for i in range(6)] + [{"patient_id": "v", "split": "val"}]
    images = images_frame(rows)
    assignments = images.select("row", "image_uri", "location", "patient_id", "label", "split", "case_id", "vendor",
                                split_source=pl.lit("manifest"))
    hashes = images.select("location", "status", "sha256", "phash", "dhash", "detail")
    # The audited split ties B to A (the copy crosses splits); C's tie to A is within train, unseen there.
    audited = identities(images["patient_id"], pl.DataFrame({"patient_id": ["B"], "linked_patient_id": ["A"]}))
    result = leak_free_split(assignments, hashes, audited, ["train", "val", "test"], {"phash": 4, "dhash": 4},
                             min_detail=3.0)
    placed = dict(zip(result.assignments["patient_id"], result.assignments["split"], strict=False))
    # A joins B in test, which brings C's near-duplicate across: the next round moves C too.
    assert placed["A"] == placed["B"] == placed["C"] == "test"
    assert result.rounds == 2
