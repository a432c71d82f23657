"""The whole audit on Google Cloud Storage: manifest, images and every output in a bucket of the
gcp-storage-emulator (127.0.0.1), through dagster-gcp's GCSResource and gcsfs; nothing local."""

import io
import json
import os

import dagster as dg
import polars as pl
import pytest
from gcp_storage_emulator.server import create_server

from leakage_pipeline.defs.assets import build_audit_assets
from leakage_pipeline.defs.dataset import DEFAULT_SPLITS, Dataset
from leakage_pipeline.defs.dataset_defs import build_dataset_defs, shared_resources
from leakage_pipeline.defs.settings import AuditSettings
from leakage_pipeline.runner import AuditFailed, run_audit
from leakage_pipeline.storage.locations import gcs_client, use_gcs_client
from leakage_pipeline_tests.conftest import write_image
from leakage_pipeline_tests.test_gcs_images import _free_port


@pytest.fixture
def bucket(monkeypatch):
    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="team")
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    use_gcs_client(None)
    yield gcs_client().bucket("team")
    use_gcs_client(None)
    server.stop()


def _upload_dataset(bucket, scratch, rows: list[dict]) -> None:
    for row in rows:
        bucket.blob(f"scans/{row['image_uri']}").upload_from_filename(
            str(write_image(scratch / row["image_uri"], row.pop("seed"))))
    buffer = io.BytesIO()
    pl.DataFrame(rows).write_csv(buffer)
    bucket.blob("scans/manifest.csv").upload_from_string(buffer.getvalue())


def _rows(count: int, start: int = 0) -> list[dict]:
    splits = ["train", "train", "val", "test"]
    # Image 2 (test) repeats image 0 (train) byte for byte: one planted exact copy.
    return [{"image_uri": f"{i}.png", "patient_id": f"p{i}", "label": "ab"[i % 2], "split": splits[i % 4],
             "seed": 0 if i == 3 else i} for i in range(start, start + count)]


def test_the_whole_audit_reads_and_writes_only_the_bucket(bucket, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    _upload_dataset(bucket, scratch, _rows(12))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)  # a run that wrote to ./gs:/... would leave it here
    settings = AuditSettings(manifest_path="gs://team/scans/manifest.csv", output_dir="gs://team/audits/ward")
    outcome = run_audit(settings)

    written = {blob.name for blob in bucket.list_blobs(prefix="audits/ward/")}
    for name in ("manifest.parquet", "split_assignments.parquet", "image_hashes/split=test.parquet",
                 "near_duplicate_pairs.parquet", "report/leakage_audit.json", "report/report.md",
                 "report/flagged_test_images.json", "report/leakage_pairs_montage.png",
                 "leak_free_split/report/leakage_audit.json"):
        assert f"audits/ward/{name}" in written, name
    assert not any(name.endswith(".leakage-pipeline.lock") for name in written)  # released
    assert list(work.iterdir()) == []
    report = json.loads(bucket.blob("audits/ward/report/leakage_audit.json").download_as_text())
    assert report["verdict"]["per_reason"]["exact_copy"] == 1
    assert str(outcome.files.report_json) == "gs://team/audits/ward/report/leakage_audit.json"


def test_new_images_in_the_bucket_start_a_run_that_hashes_only_them(bucket, tmp_path):
    scratch = tmp_path / "scratch"
    _upload_dataset(bucket, scratch, _rows(8))
    settings = AuditSettings(manifest_path="gs://team/scans/manifest.csv", output_dir="gs://team/audits/ward")
    dataset = Dataset(name="ward", splits=DEFAULT_SPLITS)
    # The dataset's own definitions, so the sensor is evaluated as the daemon evaluates it.
    definitions = dg.Definitions.merge(build_dataset_defs(dataset, audit=settings),
                                       dg.Definitions(resources=shared_resources()))
    sensor = definitions.resolve_sensor_def("ward_new_data")

    def tick(cursor):
        with dg.build_sensor_context(cursor=cursor, definitions=definitions,
                                      resources={"ward_audit": settings, **shared_resources()}) as context:
            return sensor.evaluate_tick(context)

    first = tick(None)
    run_audit(settings)
    assert tick(first.cursor).skip_message is not None
    rows = _rows(8)
    for row in rows:
        row.pop("seed")
    added = [{"image_uri": f"{i}.png", "patient_id": f"new{i}", "label": "a", "split": "test"} for i in (20, 21)]
    for row in added:
        bucket.blob(f"scans/{row['image_uri']}").upload_from_filename(str(write_image(scratch / row["image_uri"], 500)))
    buffer = io.BytesIO()
    pl.DataFrame(rows + added).write_csv(buffer)
    bucket.blob("scans/manifest.csv").upload_from_string(buffer.getvalue())

    second = tick(first.cursor)
    (request,) = second.run_requests
    assert request.partition_key == "test"
    # The run the sensor starts: the audit job for the test partition only.
    result = dg.materialize(build_audit_assets(dataset), partition_key=request.partition_key,
                            resources={"ward_audit": settings, **shared_resources()})
    (hashes,) = [e.step_materialization_data.materialization for e in result.get_asset_materialization_events()
                 if e.asset_key == dg.AssetKey(["ward", "image_hashes"])]
    assert hashes.partition == "test" and hashes.metadata["hashed"].value == 2
    report = json.loads(bucket.blob("audits/ward/report/leakage_audit.json").download_as_text())
    assert {row["split"]: row["images"] for row in report["coverage"]}["test"] == 4


@pytest.mark.parametrize("where, message", [
    ("gs://team/scans/absent.csv", "manifest gs://team/scans/absent.csv does not exist"),
    ("gs://no-such-bucket/m.csv", "manifest gs://no-such-bucket/m.csv"),
    ("gs:/team/scans/manifest.csv", "is not a gs:// URI"),
    ("s3://team/m.csv", "only local paths and gs://bucket/prefix are supported"),
])
def test_a_manifest_that_cannot_be_read_is_a_clear_error(bucket, tmp_path, where, message):
    with pytest.raises(AuditFailed, match=message.replace(".", r"\.").replace("/", "/")):
        run_audit(AuditSettings(manifest_path=where, output_dir=str(tmp_path / "out")))


def test_a_missing_image_object_is_a_recorded_status(bucket, tmp_path):
    rows = _rows(8)
    _upload_dataset(bucket, tmp_path, rows)
    bucket.blob("scans/5.png").delete()
    outcome = run_audit(AuditSettings(manifest_path="gs://team/scans/manifest.csv", output_dir="gs://team/out"))
    report = json.loads(outcome.files.report_json.read_text())
    assert report["counts"]["per_status"]["missing"] == 1
    assert os.environ["STORAGE_EMULATOR_HOST"].startswith("http://127.0.0.1:")
