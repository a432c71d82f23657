import polars as pl
import pytest

from leakage_pipeline.audit.identity import identities, identity_edges
from leakage_pipeline.audit.integrity import check_split_integrity
from leakage_pipeline.audit.report import (
    ReportSettings,
    build_report,
    label_agreement_table,
    label_chance,
    patient_links,
    trusted_radii,
)


def pair(q, r, ql, rl, phash=0, dhash=0, sha=False, qs="test", rs="train"):
    return {"query_patient_id": q, "reference_patient_id": r, "query_label": ql, "reference_label": rl,
            "query_location": f"/{q}{phash}{dhash}", "reference_location": f"/{r}", "query_split": qs,
            "reference_split": rs, "phash_distance": phash, "dhash_distance": dhash, "sha256_equal": sha}


def test_chance_is_the_sum_of_squared_label_shares():
    images = pl.DataFrame({"label": ["a"] * 6 + ["b"] * 3 + ["c"], "status": ["ok"] * 10})
    assert label_chance(images) == pytest.approx(0.36 + 0.09 + 0.01)


def test_a_hash_matching_across_labels_is_called_coincidental():
    # pHash pairs agree on the label; dHash pairs are labelled at random (50/50 over two labels).
    rows = [pair(f"q{i}", f"r{i}", "a" if i % 2 else "b", "a" if i % 2 else "b", phash=1, dhash=9)
            for i in range(40)]
    rows += [pair(f"s{i}", f"t{i}", "a" if i % 2 else "b", "a" if i % 4 < 2 else "b", phash=20, dhash=1)
             for i in range(40)]
    table = label_agreement_table(pl.DataFrame(rows), chance=0.5, radii=(0, 2, 5))
    by = {(r["criterion"], r["radius"]): r for r in table}
    assert by[("phash", 2)]["same_label_share"] == 1.0 and not by[("phash", 2)]["coincidental"]
    assert by[("dhash", 2)]["same_label_share"] == pytest.approx(0.5)
    assert by[("dhash", 2)]["coincidental"] and by[("dhash", 2)]["kappa"] == pytest.approx(0.0)
    assert not by[("dhash", 0)]["coincidental"]  # no pairs: nothing to judge
    assert trusted_radii(table, ReportSettings(radii=(0, 2, 5))) == {"phash": 5, "dhash": 0}
    assert trusted_radii(table, ReportSettings(trusted_radius={"dhash": 5}))["dhash"] == 5


def test_patient_links_group_ids_into_clusters():
    trusted = pl.DataFrame([pair("A", "B", "x", "x"), pair("B2", "B", "x", "x", phash=1),
                            pair("A", "C", "x", "x", phash=2), pair("D", "E", "x", "x"),
                            pair("F", "F", "x", "x")])
    images = pl.DataFrame({"patient_id": list("ABCDEF") + ["B2"], "case_id": [None] * 7}, schema_overrides={"case_id": pl.String})
    table = identities(images["patient_id"], identity_edges(images, trusted))
    links = patient_links(trusted, table)
    assert {(r["query_patient_id"], r["reference_patient_id"]) for r in links["pairs"]} == {
        ("A", "B"), ("B2", "B"), ("A", "C"), ("D", "E")}
    assert links["clusters"] == [["A", "B", "B2", "C"]]
    assert links["identities_with_several_ids"] == 2
    assert dict(table.iter_rows())["E"] == "D"


def test_verdict_bounds_the_metric_by_the_leaked_share():
    n = 400
    images = pl.DataFrame({
        "image_uri": [f"i{i}" for i in range(n)], "location": [f"/i{i}" for i in range(n)],
        "patient_id": [f"p{i}" for i in range(n)], "label": ["a", "b"] * (n // 2),
        "split": ["test"] * 100 + ["train"] * 300, "status": ["ok"] * n, "detail": [30.0] * n,
        "row": list(range(1, n + 1)), "case_id": [None] * n, "vendor": [None] * n,
        "sha256": [f"s{i}" for i in range(n)],
    }, schema_overrides={"case_id": pl.String, "vendor": pl.String})
    pairs = pl.DataFrame([
        {**pair(f"p{i}", f"p{100 + i}", "a", "a", phash=1, dhash=1), "query_location": f"/i{i}",
         "query_image_uri": f"i{i}", "reference_image_uri": f"i{100 + i}", "query_detail": 30.0,
         "reference_detail": 30.0}
        for i in range(12)
    ])
    audit = build_report(images, pairs, check_split_integrity(images), ["train", "test"])
    verdict = audit.report["verdict"]
    assert verdict["leaked_test_images"] == 12 and verdict["leaked_share"] == pytest.approx(0.12)
    assert verdict["max_top1_shift_points"] == pytest.approx(12.0)
    assert verdict["can_move_metric"]  # 12 points > the ±9.8-point noise of 100 images
    assert "could move top-1 accuracy by up to 12.0 points, which exceeds the ±9.8-point" in verdict["text"]
    assert audit.flagged.height == 12
