"""The command line, and the full demo exactly as `make demo` runs it."""

import json

from leakage_pipeline.cli import EXIT_COULD_NOT_RUN, EXIT_RAN, main


def test_demo_finds_every_planted_case_then_shows_the_leaky_model_inflated(tmp_path, capsys):
    assert main(["demo", "--dir", str(tmp_path)]) == EXIT_RAN
    printed = capsys.readouterr().out
    assert "| criterion | query split |" in printed and "Report: " in printed
    assert "Training is blocked" in printed  # the team's split, as delivered
    report = json.loads((tmp_path / "out" / "report" / "leakage_audit.json").read_text())
    planted = json.loads((tmp_path / "data" / "planted.json").read_text())
    flagged = {row["query_image_uri"] for row in report["flagged"]["images"]}
    for copy in planted["exact_copies"] + planted["reencoded_copies"]:
        assert copy["image_uri"] in flagged, copy
    links = {(r["query_patient_id"], r["reference_patient_id"]) for r in report["patient_links"]["pairs"]}
    assert (planted["reenrolled_patient"]["second_id"], planted["reenrolled_patient"]["original"]) in links
    assert [r["patient_id"] for r in report["split_integrity"]["patients_spanning_splits"]["examples"]] == [
        planted["patient_spanning_splits"]["patient_id"]]
    assert report["counts"]["per_status"]["unreadable"] == 1
    # dHash on the smooth images collides across labels; pHash stays trustworthy for re-encodes.
    assert "dhash" in report["coincidental_hashes"]
    assert report["trusted_radius"]["phash"] >= 2
    assert report["trusted_radius"]["dhash"] is None or report["trusted_radius"]["dhash"] < report["trusted_radius"]["phash"]

    # Re-split per patient, the demo trains both models: memorised patients inflate the leaky score.
    evaluation = json.loads((tmp_path / "patient_split" / "training" / "evaluation" / "evaluation.json").read_text())
    top1 = {key: row["metrics"]["top1"]["value"] for key, row in evaluation["rows"].items()}
    assert top1["leaky_full_test"] > top1["leak_free_full_test"] + 0.03
    assert evaluation["leaky_split_shared_patients"] > 100
    assert "| leaky (image-level split) |" in printed and evaluation["verdict"] in printed


def test_audit_exit_codes_and_column_mapping(small_demo, tmp_path, capsys):
    renamed = tmp_path / "renamed.csv"
    renamed.write_text(small_demo.read_text().replace("image_uri,patient_id,label", "path,pid,dx", 1))
    args = ["audit", "--manifest", str(renamed), "--image-root", str(small_demo.parent), "--out", str(tmp_path / "o")]
    assert main(args + ["--columns", "image_uri=path,patient_id=pid,label=dx"]) == EXIT_RAN
    assert "Training is blocked" in capsys.readouterr().out
    assert main(args) == EXIT_COULD_NOT_RUN
    assert "missing required column(s): image_uri" in capsys.readouterr().err
    assert main(args + ["--columns", "nonsense"]) == EXIT_COULD_NOT_RUN
