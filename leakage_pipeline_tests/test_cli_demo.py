"""The command line, and the full demo exactly as `make demo` runs it."""

import json
import os

import polars as pl
import pytest

from leakage_pipeline.cli import EXIT_COULD_NOT_RUN, EXIT_RAN, main
from leakage_pipeline_tests.conftest import write_image, write_manifest


@pytest.mark.slow
def test_demo_finds_every_planted_case_then_measures_the_leak_on_the_same_images(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path)]) == EXIT_RAN
    printed = capsys.readouterr().out
    assert "| criterion | query split |" in printed and "Report: " in printed
    assert "Training is blocked" not in printed  # the team's split leaks, the leak-free split does not
    out = tmp_path / "out"
    report = json.loads((out / "report" / "leakage_audit.json").read_text())
    planted = json.loads((tmp_path / "data" / "planted.json").read_text())
    flagged = {row["image_uri"] for row in report["flagged"]["images"]}
    for copy in planted["exact_copies"] + planted["reencoded_copies"]:
        assert copy["image_uri"] in flagged, copy
    links = {(r["query_patient_id"], r["reference_patient_id"]) for r in report["patient_links"]["pairs"]}
    assert (planted["reenrolled_patient"]["second_id"], planted["reenrolled_patient"]["original"]) in links
    # Besides the planted one, the patients re-shot under their own id span splits too.
    reshot_same_id = [r["patient_id"] for r in planted["reshots"] if r["same_id"]]
    assert sorted(r["patient_id"] for r in report["split_integrity"]["patients_spanning_splits"]["examples"]) == \
        sorted([planted["patient_spanning_splits"]["patient_id"], *reshot_same_id])
    # The re-shots of a training patient's lesion, under any id: found by the same-subject stage.
    same_subject = {row["image_uri"] for row in report["flagged"]["images"] if "same_subject" in row["reasons"]}
    found = [r["image_uri"] in same_subject for r in planted["reshots"]]
    assert sum(found) >= 0.8 * len(found) and report["same_subject"]["calibration"]["audited_precision"] >= 0.95
    assert report["counts"]["per_status"]["unreadable"] == 1
    # dHash on the smooth images collides across labels; pHash stays trustworthy for re-encodes.
    assert "dhash" in report["coincidental_hashes"]
    assert report["trusted_radius"]["phash"] >= 2
    assert report["trusted_radius"]["dhash"] is None or report["trusted_radius"]["dhash"] < report["trusted_radius"]["phash"]
    verdict = report["verdict"]
    assert printed.count(verdict["text"]) == 1 and verdict["per_reason"]["same_patient"] >= 2
    assert verdict["per_reason"]["linked_patient"] >= 4 and verdict["per_reason"]["exact_copy"] == 4

    leak_free = json.loads((out / "leak_free_split" / "report" / "leakage_audit.json").read_text())
    assert leak_free["flagged"]["count"] == 0
    assert leak_free["split_integrity"]["patients_spanning_splits"]["count"] == 0
    assert "0 flagged image(s), 0 patient(s) in more than one split" in printed

    # Trained on the leak-free split, the leaky model scores higher on the very same test images.
    evaluation = json.loads((out / "training" / "evaluation" / "evaluation.json").read_text())
    assert evaluation["leak_effect_top1"]["low"] > 0
    assert evaluation["shared_test_images"] > 150
    assert "| leaky (test patients' images in train) |" in printed and evaluation["verdict"] in printed

    # Label flips planted in every split: most are flagged as likely label issues, and at least 0.7 of the flags
    # are plants or look-alikes. The demo's classes within a modality overlap by design (the leak effect needs
    # it), and its class signal is the patient's own lesion or infiltrate, so a patient drawn atypical of their
    # class looks like another class in every shot: such a flag is ambiguous, not a wrong label, and the report
    # says so (patient_looks_like_suggested).
    issues = pl.read_parquet(out / "label_issues" / "label_issues.parquet").filter("is_label_issue")
    flips = {os.path.abspath(tmp_path / "data" / flip["image_uri"]) for flip in planted["label_flips"]}
    assert {flip["split"] for flip in planted["label_flips"]} == {"train", "val", "test"}
    found = issues.filter(pl.col("location").is_in(list(flips))).height
    look_alikes = issues.filter(~pl.col("location").is_in(list(flips)),
                                pl.col("patient_context") == "patient_looks_like_suggested").height
    assert found >= 0.7 * len(flips) and found + look_alikes >= 0.7 * issues.height, (
        f"label flips: {found} of {len(flips)} flagged; {issues.height} flags, {look_alikes} look-alikes")
    assert "are flagged for label review" in printed and (out / "label_issues" / "taxonomy_review.md").exists()

    # The same seed on the same machine: the same numbers (the dataset is built only the first time), and
    # the out-of-fold models, whose inputs did not change, are not retrained.
    fold_models = {path: path.stat().st_mtime_ns for path in (out / "training" / "out_of_fold").glob("fold=*/model.pt")}
    assert len(fold_models) == 5
    assert main(["demo", "--dir", str(tmp_path)]) == EXIT_RAN
    assert {path: path.stat().st_mtime_ns for path in fold_models} == fold_models
    assert printed.startswith("building the demo dataset")
    assert capsys.readouterr().out == printed.split("\n", 1)[1]


def test_audit_exit_codes_and_column_mapping(small_demo, tmp_path, capsys):
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(small_demo.read_text().replace("image_uri,patient_id,label", "path,pid,dx", 1))
    args = ["audit", "--manifest", str(renamed), "--image-root", str(small_demo.parent), "--out", str(tmp_path / "o")]
    assert main(args + ["--columns", "image_uri=path,patient_id=pid,label=dx"]) == EXIT_RAN
    assert "show a patient or image that is also in train or val" in capsys.readouterr().out
    assert main(args) == EXIT_COULD_NOT_RUN
    assert "missing required column(s): image_uri" in capsys.readouterr().err
    assert main(args + ["--columns", "nonsense"]) == EXIT_COULD_NOT_RUN


def test_a_manifest_without_patient_ids_audits_at_image_level(tmp_path, capsys):
    """MedMNIST-style: 28x28 images, no patient ids; copies across splits are still found."""
    rows = []
    for index in range(60):
        split = "train" if index < 40 else "test"
        write_image(tmp_path / f"{index}.png", seed=index, size=(28, 28), mode="L")
        rows.append({"image_uri": f"{index}.png", "label": "ab"[index % 2], "split": split})
    for copy in range(3):  # train images 0-2 again in test, under new names
        (tmp_path / f"copy{copy}.png").write_bytes((tmp_path / f"{copy}.png").read_bytes())
        rows.append({"image_uri": f"copy{copy}.png", "label": "ab"[copy % 2], "split": "test"})
    manifest = write_manifest(tmp_path / "manifest.csv", rows)
    out = tmp_path / "out"
    assert main(["audit", "--manifest", str(manifest), "--out", str(out)]) == EXIT_RAN
    assert "Patient ids were not given" in capsys.readouterr().out
    report = json.loads((out / "report" / "leakage_audit.json").read_text())
    assert report["patient_ids_given"] is False
    assert report["verdict"]["leaked_test_images"] == 3 and report["verdict"]["per_reason"]["exact_copy"] == 3
    assert (out / "report" / "report.md").read_text().count("Patient-level leakage cannot be checked") == 1
    leak_free = json.loads((out / "leak_free_split" / "report" / "leakage_audit.json").read_text())
    assert leak_free["flagged"]["count"] == 0
