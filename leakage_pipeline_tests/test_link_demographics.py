"""Identity links checked against demographics: conflicts listed for review with both images, never acted on."""

import polars as pl
import pytest

from leakage_pipeline.audit.integrity import check_split_integrity
from leakage_pipeline.audit.manifest import ColumnMapping, ManifestError, load_manifest
from leakage_pipeline.audit.matching import cross_split_pairs
from leakage_pipeline.audit.report import ReportSettings, build_report
from leakage_pipeline.audit.report_markdown import report_markdown
from leakage_pipeline.same_subject.matcher import run_same_subject
from leakage_pipeline_tests.conftest import images_frame
from leakage_pipeline_tests.test_leak_reasons import SPLITS, _same_subject_pairs, copy_of
from leakage_pipeline_tests.test_same_subject_stage import _images, _settings, photographs  # noqa: F401 (a fixture)

SETTINGS = ReportSettings(trusted_radius={"phash": 8, "dhash": 0})
SUMMARY = {"status": "ran", "reason": None, "top_k": 20, "candidate_pairs": 1, "accepted_pairs": 1,
           "review_pairs": 0, "accepted_query_images": 1,
           "calibration": {"threshold": 30, "review_threshold": None, "target_precision": 0.95, "precision": 1.0,
                           "recall": 0.5, "audited_precision": 0.96, "true_pairs": 40, "false_pairs": 400,
                           "true_accepted": 20, "false_accepted": 0, "calibration_queries": 600}}


def _people(count: int) -> list[dict]:
    return [{"patient_id": f"p{i}", "split": "train", "age": "40", "sex": "male", "body_site": "back"} for i in range(count)]


def _report(rows: list[dict], accepted: list[tuple[int, int]]):
    images = images_frame(rows)
    same_subject = _same_subject_pairs(images, [(q, r, 120, True) for q, r in accepted])
    return build_report(images, cross_split_pairs(images, SPLITS, 8), check_split_integrity(images), SPLITS, SETTINGS,
                        same_subject, SUMMARY)


def test_a_same_subject_link_between_sexes_is_a_conflict_shown_with_both_images():
    rows = _people(30)
    rows.append({"patient_id": "reshot", "split": "test", "age": "41", "sex": "female", "body_site": "back"})  # row 30
    rows.append(copy_of(rows, 3, patient_id="copy", split="test", age="42", sex="M", body_site="Back"))  # consistent
    rows += [{"patient_id": f"q{i}", "split": "test"} for i in range(10)]
    audited = _report(rows, [(30, 7)])
    section = audited.report["link_demographics"]
    assert section["checked"] and section["columns_given"] == ["age", "sex", "body_site"]
    assert (section["links"], section["conflict"], section["consistent"], section["not_comparable"]) == (2, 1, 1, 0)
    conflict, consistent = section["link_rows"]
    assert (conflict["patient_id"], conflict["linked_patient_id"], conflict["status"]) == ("p7", "reshot", "conflict")
    assert conflict["disagree"] == ["sex"] and conflict["links"] == ["same_subject"]
    assert {conflict["query_image_uri"], conflict["reference_image_uri"]} == {"img30.png", "img7.png"}
    assert (consistent["patient_id"], consistent["status"], consistent["links"]) == ("copy", "consistent", ["sha256"])
    # Nothing is dropped or merged because of it: the re-shot is still one identity with p7, and flagged.
    assert audited.identities.filter(pl.col("patient_id") == "reshot")["identity"].item() == "p7"
    assert "reshot" in audited.flagged["patient_id"].to_list()
    markdown = report_markdown(audited.report)
    assert "## Demographics of linked patient ids" in markdown
    conflict_line = next(line for line in markdown.splitlines() if "img30.png" in line and "img7.png" in line)
    assert "sex female" in conflict_line and "sex male" in conflict_line and "| sex |" in conflict_line


@pytest.mark.parametrize(("other_age", "status"), [("45", "consistent"), ("45.5", "conflict"), (None, "consistent")])
def test_ages_disagree_only_beyond_the_tolerance(other_age, status):
    rows = _people(20)
    rows.append({"patient_id": "later", "split": "test", "age": other_age, "sex": "male", "body_site": "back"})
    rows += [{"patient_id": f"q{i}", "split": "test"} for i in range(5)]
    (link,) = _report(rows, [(20, 4)]).report["link_demographics"]["link_rows"]
    assert link["status"] == status
    assert link["compared"] == (["sex", "body_site"] if other_age is None else ["age", "sex", "body_site"])


def test_a_shared_case_id_is_a_link_and_unknown_values_cannot_disagree():
    rows = _people(20)
    rows[2] |= {"case_id": "c1"}
    rows.append({"patient_id": "b", "split": "test", "case_id": "c1", "age": "70", "sex": "unknown", "body_site": None})
    rows += [{"patient_id": f"q{i}", "split": "test"} for i in range(5)]
    section = _report(rows, []).report["link_demographics"]
    (link,) = section["link_rows"]
    assert (link["patient_id"], link["linked_patient_id"], link["links"]) == ("b", "p2", ["case_id"])
    assert link["status"] == "conflict" and link["disagree"] == ["age"] and link["compared"] == ["age"]


def test_without_demographic_columns_links_are_not_checked():
    rows = [{"patient_id": f"p{i}", "split": "train"} for i in range(20)] + [{"patient_id": "q", "split": "test"}]
    audited = _report(rows, [(20, 3)])
    assert audited.report["link_demographics"] == {
        "columns_given": [], "age_tolerance_years": 5.0, "checked": False,
        "reason": "the manifest gives no age, sex or body site"}
    assert "Not checked: the manifest gives no age, sex or body site." in report_markdown(audited.report)


def test_demographic_columns_map_by_name_and_a_bad_age_is_refused_with_its_row(tmp_path):
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,pid,dx,years,gender,localization\na.png,p1,x,40,male,back\nb.png,p2,x,forty,f,face\n")
    columns = ColumnMapping.parse("image_uri=path,patient_id=pid,label=dx,age=years,sex=gender,body_site=localization")
    with pytest.raises(ManifestError, match=r"column 'years' \(age\) is not a number of years .* 1 row\(s\): 2"):
        load_manifest(manifest, columns)
    manifest.write_text(manifest.read_text().replace("forty", "41"))
    frame = load_manifest(manifest, columns)
    assert frame.select("age", "sex", "body_site").rows() == [("40", "male", "back"), ("41", "f", "face")]


def test_the_stage_finds_a_planted_reshot_filed_under_another_sex_and_the_report_lists_it(photographs, tmp_path):  # noqa: F811
    """The real matcher on synthetic photographs: subject S5's re-shot, filed as NEW5 with the other sex."""
    root, rows = photographs
    images = _images(root, rows).with_columns(
        age=pl.lit("50"), body_site=pl.lit("back"),
        sex=pl.when(pl.col("patient_id") == "NEW5").then(pl.lit("female")).otherwise(pl.lit("male")),
        row=pl.int_range(1, pl.len() + 1), case_id=pl.lit(None, pl.String), vendor=pl.lit(None, pl.String))
    run = run_same_subject(images, SPLITS, tmp_path, _settings(), log=lambda _: None)
    assert run.pairs.filter(pl.col("accepted") & (pl.col("query_patient_id") == "NEW5")).height
    audited = build_report(images, cross_split_pairs(images, SPLITS, 8), check_split_integrity(images), SPLITS,
                           SETTINGS, run.pairs, run.summary)
    section = audited.report["link_demographics"]
    conflicts = [link for link in section["link_rows"] if link["status"] == "conflict"]
    assert [(c["patient_id"], c["linked_patient_id"], c["disagree"]) for c in conflicts] == [("NEW5", "S5", ["sex"])]
    assert section["consistent"] == section["links"] - 1 >= 2  # the other re-shots under a new id agree
    assert "NEW5_reshot.jpg" in report_markdown(audited.report)
