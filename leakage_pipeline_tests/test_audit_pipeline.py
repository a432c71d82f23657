"""The Dagster layer end to end, on a small synthetic dataset in temporary directories."""

import json
import shutil

import dagster as dg
import polars as pl
import pytest

from leakage_pipeline.audit.demographics import DEMOGRAPHIC_COLUMNS
from leakage_pipeline.audit.image_hashing import HASH_SCHEMA, STALE_SCHEMA
from leakage_pipeline.audit.manifest import CANONICAL_COLUMNS
from leakage_pipeline.audit.matching import PAIR_SCHEMA
from leakage_pipeline.definitions import defs as load_definitions
from leakage_pipeline.defs.assets import VERIFY_CACHE_TAG
from leakage_pipeline.defs.automation import partition_range_tags
from leakage_pipeline.defs.dataset import DEFAULT_SPLITS, Dataset
from leakage_pipeline.defs.settings import AuditSettings
from leakage_pipeline.runner import AuditFailed, run_audit
from leakage_pipeline.training.image_store import INDEX_SCHEMA
from leakage_pipeline_tests.conftest import canonical_json, new_data_sensor_ticks, write_image

EVERY_SPLIT = partition_range_tags(list(DEFAULT_SPLITS))


def _materialization_metadata(outcome, asset: str) -> dict:
    return {key: value.value for key, value in outcome.materializations(asset)[0].metadata.items()}


def _per_partition(outcome, asset: str) -> dict[str, dict]:
    return {event.partition: {key: value.value for key, value in event.metadata.items()}
            for event in outcome.materializations(asset)}


def _check_passed(outcome, name: str) -> bool:
    (evaluation,) = [e for e in outcome.check_evaluations() if e.check_name == name]
    return evaluation.passed


@pytest.fixture(scope="module")
def audited(small_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit_out")
    return run_audit(AuditSettings(manifest_path=str(small_demo), output_dir=str(out))), small_demo


def test_definitions_load_with_job_schedule_and_sensor():
    defs = load_definitions()
    assert defs.resolve_job_def("demo_audit") is not None
    assert defs.resolve_schedule_def("demo_nightly_audit").cron_schedule == "0 2 * * *"
    assert defs.resolve_sensor_def("demo_new_data") is not None
    assert defs.resolve_job_def("demo_training") is not None
    assert len(defs.resolve_asset_graph().get_all_asset_keys()) == 16  # the demo YAML turns label issues on: 3 more


def test_audit_writes_every_report_file(audited):
    outcome, _ = audited
    files = outcome.files
    for path in (files.report_json, files.report_markdown, files.flagged_test_images, files.montage,
                 files.near_duplicate_pairs, files.split_integrity, files.image_hashes("test"), files.identities,
                 files.leak_free.split_assignments, files.leak_free.report_json, files.leak_free.montage):
        assert path.exists(), path
    report = json.loads(files.report_json.read_text())
    for section in ("counts", "coverage", "split_integrity", "thresholds", "label_agreement", "patient_links",
                    "flagged", "verdict"):
        assert section in report
    metadata = _materialization_metadata(outcome, "leakage_report")
    assert "Threshold table" in metadata["report"]
    assert files.report_markdown.read_text().startswith("# Leakage audit")


def test_audit_finds_every_planted_leak_with_its_reason(audited):
    outcome, manifest = audited
    planted = json.loads((manifest.parent / "planted.json").read_text())
    report = json.loads(outcome.files.report_json.read_text())
    reasons = {row["image_uri"]: set(row["reasons"]) for row in report["flagged"]["images"]}
    test_reasons = {row["image_uri"]: set(row["reasons"])
                    for row in json.loads(outcome.files.flagged_test_images.read_text())}
    for copy in planted["exact_copies"] + planted["reencoded_copies"]:
        found = (test_reasons if copy["split"] == "test" else reasons)[copy["image_uri"]]
        assert found & {"exact_copy", "near_duplicate"}, copy
    for copy in planted["exact_copies"]:
        assert "exact_copy" in reasons[copy["image_uri"]]
    twins = planted["reenrolled_patient"]
    links = {(r["query_patient_id"], r["reference_patient_id"]) for r in report["patient_links"]["pairs"]}
    assert (twins["second_id"], twins["original"]) in links
    manifest_rows = pl.read_csv(manifest, infer_schema=False)
    for uri in manifest_rows.filter(pl.col("patient_id") == twins["second_id"])["image_uri"]:
        assert "linked_patient" in test_reasons[uri]  # every image of the twin, duplicate or not
    spanning = planted["patient_spanning_splits"]
    # Besides the planted one, the patients re-shot under their own id span splits too.
    reshot_same_id = [r["patient_id"] for r in planted["reshots"] if r["same_id"]]
    assert sorted(r["patient_id"] for r in report["split_integrity"]["patients_spanning_splits"]["examples"]) == \
        sorted([spanning["patient_id"], *reshot_same_id])
    spanning_test = manifest_rows.filter((pl.col("patient_id") == spanning["patient_id"]) & (pl.col("split") == "test"))
    for uri in spanning_test["image_uri"]:
        assert "same_patient" in test_reasons[uri]
    assert report["counts"]["per_status"]["unreadable"] == 1
    verdict = report["verdict"]
    readable_flagged = [r for r in report["flagged"]["images"] if r["split"] == "test" and r["status"] == "ok"]
    assert verdict["leaked_test_images"] == len(readable_flagged)
    assert verdict["test_images_read"] == verdict["test_images"] - 1


def _internal_column_names(outcome) -> set[str]:
    """Every column name the pipeline owns: its schemas, and every column and record key it wrote."""
    names = {"row", "identity_level", *CANONICAL_COLUMNS, *HASH_SCHEMA, *PAIR_SCHEMA, *STALE_SCHEMA, *INDEX_SCHEMA}
    for path in outcome.files.root.rglob("*.parquet"):
        names |= set(pl.read_parquet_schema(path))
    tables = json.loads(outcome.files.split_integrity.read_text())
    records = [row for rows in tables.values() for row in rows]
    records += json.loads(outcome.files.flagged_test_images.read_text())
    return names | {key for record in records for key in record}


def test_no_manifest_column_can_replace_or_clash_with_a_computed_one(audited, tmp_path):
    """The hostile pass: an extra column ``sha256`` made every test image an exact copy (100% leaked),
    and ``status``, ``phash``, ``detail`` or ``split_source`` crashed with a DuplicateError. Every
    internal name, as a manifest column at once, now changes nothing but the carried extras."""
    clean, manifest = audited
    table = pl.read_csv(manifest, infer_schema=False)
    # Demographic columns are optional manifest inputs (read, never computed), not internal names.
    internal = sorted(_internal_column_names(clean) - set(table.columns) - set(DEMOGRAPHIC_COLUMNS))
    assert {"sha256", "status", "phash", "dhash", "detail", "split_source", "location", "row", "message",
            "width", "height", "version", "size_bytes", "hash_mode", "identity_level"} <= set(internal) | set(
        table.columns)
    hostile = table.with_columns(pl.lit("0" * 64).alias(name) for name in internal)
    hostile.write_csv(tmp_path / "hostile.csv")
    outcome = run_audit(AuditSettings(manifest_path=str(tmp_path / "hostile.csv"), output_dir=str(tmp_path / "out"),
                                      image_root=str(manifest.parent)))
    carried = pl.read_parquet(outcome.files.manifest)
    assert carried.select(f"extra__{name}" for name in internal).unique().height == 1
    assert carried.drop(f"extra__{name}" for name in internal).equals(pl.read_parquet(clean.files.manifest))
    for split in DEFAULT_SPLITS:
        assert pl.read_parquet(outcome.files.image_hashes(split)).equals(pl.read_parquet(clean.files.image_hashes(split)))
    assert pl.read_parquet(outcome.files.near_duplicate_pairs).equals(pl.read_parquet(clean.files.near_duplicate_pairs))
    assert canonical_json(json.loads(outcome.files.report_json.read_text())) == canonical_json(
        json.loads(clean.files.report_json.read_text()))


def test_finding_leakage_is_a_successful_audit_with_failed_error_checks(audited):
    outcome, _ = audited
    assert all(result.success for result in outcome.results) and not outcome.training_blocked
    assert not _check_passed(outcome, "no_patient_spans_splits")
    assert not _check_passed(outcome, "no_test_image_leaked")
    assert not _check_passed(outcome, "every_image_readable")  # the planted unreadable file warns
    assert _check_passed(outcome, "test_split_read") and _check_passed(outcome, "patient_ids_given")
    assert _check_passed(outcome, "leak_free_split_is_clean")


def test_the_leak_free_split_keeps_identities_whole_and_audits_clean(audited):
    outcome, manifest = audited
    leak_free = json.loads(outcome.files.leak_free.report_json.read_text())
    assert leak_free["flagged"]["count"] == 0
    assert leak_free["split_integrity"]["patients_spanning_splits"]["count"] == 0
    assert leak_free["verdict"]["status"] == "clean"
    split = pl.read_parquet(outcome.files.leak_free.split_assignments)
    twins = json.loads((manifest.parent / "planted.json").read_text())["reenrolled_patient"]
    assert split.filter(pl.col("patient_id").is_in([twins["original"], twins["second_id"]]))["split"].n_unique() == 1
    assert _materialization_metadata(outcome, "leak_free_split")["images_moved"] > 0


def test_assigned_split_puts_each_patient_in_one_split(small_demo, tmp_path):
    outcome = run_audit(AuditSettings(manifest_path=str(small_demo), output_dir=str(tmp_path),
                                      split_policy="assign", seed=1))
    assert _check_passed(outcome, "no_patient_spans_splits")
    assignments = pl.read_parquet(outcome.files.split_assignments)
    assert assignments.group_by("patient_id").agg(pl.col("split").n_unique())["split"].max() == 1


def test_rerun_after_adding_images_hashes_only_the_new_ones(small_demo, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_demo.parent, data)
    settings = AuditSettings(manifest_path=str(data / "manifest.csv"), output_dir=str(tmp_path / "out"))
    first = _per_partition(run_audit(settings), "image_hashes")
    manifest = pl.read_csv(data / "manifest.csv", infer_schema=False)
    new_rows = [
        {**manifest.row(0, named=True), "image_uri": f"images/new_{i}.png", "patient_id": f"NEW{i}",
         "split": "test", "case_id": None}
        for i in range(5)
    ]
    for i in range(5):
        write_image(data / "images" / f"new_{i}.png", 1000 + i)
    pl.concat([manifest, pl.DataFrame(new_rows, schema=manifest.schema)]).write_csv(data / "manifest.csv")
    second = _per_partition(run_audit(settings), "image_hashes")
    assert sum(m["hashed"] for m in first.values()) == manifest.height
    assert sum(m["reused"] for m in first.values()) == 0
    assert {split: m["hashed"] for split, m in second.items()} == {"train": 0, "val": 0, "test": 5}
    # Each partition's metadata is its own split's: row counts add up to the manifest.
    assert sum(m["dagster/row_count"] for m in second.values()) == manifest.height + 5
    # The planted unreadable file is content-identified too, so it is reused, not re-read.
    assert sum(m["reused"] for m in second.values()) == manifest.height


def test_bad_manifest_fails_with_its_message(tmp_path):
    bad = tmp_path / "m.csv"
    bad.write_text("image_uri,patient_id,label,split\na.png,p1,x,train\nb.png,,x,test\n")
    with pytest.raises(AuditFailed, match=r"step manifest failed: .*'patient_id' \(patient_id\) is empty in 1 row\(s\): 2"):
        run_audit(AuditSettings(manifest_path=str(bad), output_dir=str(tmp_path / "out")))


def test_nightly_schedule_requests_one_run_over_every_split():
    request = load_definitions().resolve_schedule_def("demo_nightly_audit")(dg.build_schedule_context())
    assert request.tags == EVERY_SPLIT == {"dagster/asset_partition_range_start": "train",
                                           "dagster/asset_partition_range_end": "test"}


def test_new_data_sensor_requests_only_the_changed_split_partitions(small_demo, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(small_demo.parent, data)
    manifest = data / "manifest.csv"
    settings = AuditSettings(manifest_path=str(manifest), output_dir=str(tmp_path / "out"))
    dataset = Dataset(name="ward", splits=DEFAULT_SPLITS)
    instance = dg.DagsterInstance.ephemeral()

    def succeeded(job, request):  # recorded as the daemon records a run that succeeded
        instance.create_run_for_job(job, status=dg.DagsterRunStatus.SUCCESS,
                                    tags={**request.tags, "dagster/run_key": request.run_key})

    evaluate = new_data_sensor_ticks(dataset, settings, instance, succeeded)

    first = evaluate(None)  # nothing seen yet: every split
    assert [r.tags for r in first.run_requests] == [{**EVERY_SPLIT, "dagster/sensor_name": "ward_new_data"}]
    assert evaluate(first.cursor).skip_message is not None  # nothing changed
    rows = pl.read_csv(manifest, infer_schema=False)
    write_image(data / "images" / "late.png", 4242)
    pl.concat([rows, pl.DataFrame([{**rows.row(0, named=True), "image_uri": "images/late.png", "patient_id": "LATE",
                                    "split": "val", "case_id": None}], schema=rows.schema)]).write_csv(manifest)
    added = evaluate(first.cursor)
    assert [r.partition_key for r in added.run_requests] == ["val"]
    rewritten = rows.filter(pl.col("split") == "test")["image_uri"][0]
    write_image(data / rewritten, 4343)  # a rewrite in place: a new version of a test image
    changed = evaluate(added.cursor)
    assert [r.partition_key for r in changed.run_requests] == ["test"]
    assert evaluate(changed.cursor).skip_message is not None


def test_a_verifying_run_reports_stale_cached_hashes_in_metadata_and_a_file(tmp_path):
    rows = [{"image_uri": f"{i}.png", "patient_id": f"p{i}", "label": "a", "split": split}
            for i, split in enumerate(["train", "train", "val", "test"])]
    for i in range(4):
        write_image(tmp_path / f"{i}.png", i)
    pl.DataFrame(rows).write_csv(tmp_path / "m.csv")
    paths = {"manifest_path": str(tmp_path / "m.csv"), "output_dir": str(tmp_path / "out")}
    first = run_audit(AuditSettings(**paths))
    cached = first.files.image_hashes("train")
    truth = pl.read_parquet(cached)
    truth.with_columns(sha256=pl.lit("0" * 64)).write_parquet(cached)  # what a fooled cache key leaves behind
    verified = run_audit(AuditSettings(**paths, verify_cache=True))
    # Each partition counts its own stale hashes (both were train's); every image was hashed again.
    per_partition = _per_partition(verified, "image_hashes")
    assert {split: m["stale_cached_hashes"] for split, m in per_partition.items()} == {"train": 2, "val": 0, "test": 0}
    assert {m["reused"] for m in per_partition.values()} == {0}
    record = json.loads(verified.files.stale_cached_hashes.read_text())
    assert record["stale_count"] == 2
    assert {row["location"] for row in record["stale"]} == set(truth["location"])
    assert pl.read_parquet(cached).equals(truth)


def test_weekly_schedule_runs_the_audit_verifying_the_cache():
    request = load_definitions().resolve_schedule_def("demo_weekly_cache_verification")(dg.build_schedule_context())
    assert request.tags == {**EVERY_SPLIT, VERIFY_CACHE_TAG: "true"}
