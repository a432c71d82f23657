"""The whole audit on Google Cloud Storage: manifest, images and every output in a bucket of the
gcp-storage-emulator (127.0.0.1), through dagster-gcp's GCSResource and gcsfs; nothing local."""

import io
import json
import os
import subprocess
import sys
import time

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from leakage_pipeline.defs.dataset import DEFAULT_SPLITS, Dataset
from leakage_pipeline.defs.settings import AuditSettings, TrainingSettings
from leakage_pipeline.runner import AuditFailed, run_audit
from leakage_pipeline.storage.files import read_parquet
from leakage_pipeline.storage.locations import use_gcs_client
from leakage_pipeline.storage.output_lock import LOCK_FILE, output_lock
from leakage_pipeline_tests.conftest import canonical_json, free_port, new_data_sensor_ticks, run_as_the_daemon, write_image
from leakage_pipeline_tests.gcs_emulator import generation_preconditions_enforced


@pytest.fixture
def bucket(gcs_emulator):
    return gcs_emulator("team")


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


def test_an_audit_all_in_the_bucket_has_the_figures_of_the_same_audit_on_local_disk(bucket, small_demo, tmp_path):
    """The demo's splits with every kind of planted leak: manifest, images and outputs in the bucket, against
    the same files on local disk; every figure, pair and flagged image the same, up to where the files are."""
    data = small_demo.parent
    for path in data.rglob("*"):
        if path.is_file():
            bucket.blob(f"demo/{path.relative_to(data).as_posix()}").upload_from_filename(str(path))
    local = run_audit(AuditSettings(manifest_path=str(small_demo), output_dir=str(tmp_path / "out")))
    remote = run_audit(AuditSettings(manifest_path="gs://team/demo/manifest.csv", output_dir="gs://team/audits/demo",
                                     scratch_dir=str(tmp_path / "scratch")))

    def same_places(text: str) -> str:
        return text.replace(str(local.files.root), "gs://team/audits/demo").replace(str(data), "gs://team/demo")

    for name in ("report_json", "flagged_test_images"):
        here, there = (json.loads(getattr(outcome.files, name).read_text()) for outcome in (local, remote))
        assert canonical_json(json.loads(same_places(json.dumps(here)))) == canonical_json(there), name
    report = json.loads(remote.files.report_json.read_text())
    assert report["verdict"]["per_reason"]["exact_copy"] > 0 and {row["split"] for row in report["coverage"]} == {
        "train", "val", "test"}
    for name in ("near_duplicate_pairs", "identities"):
        here, there = (read_parquet(getattr(outcome.files, name)) for outcome in (local, remote))
        text_columns = [column for column, kind in here.schema.items() if kind == pl.String]
        here = here.with_columns(pl.col(text_columns).str.replace(str(data), "gs://team/demo", literal=True))
        assert_frame_equal(here.sort(here.columns), there.sort(there.columns), check_row_order=False), name


def test_new_images_in_the_bucket_start_a_run_that_hashes_only_them(bucket, tmp_path):
    scratch = tmp_path / "scratch"
    _upload_dataset(bucket, scratch, _rows(8))
    settings = AuditSettings(manifest_path="gs://team/scans/manifest.csv", output_dir="gs://team/audits/ward")
    dataset = Dataset(name="ward", splits=DEFAULT_SPLITS)
    instance = dg.DagsterInstance.ephemeral()
    runs = []  # each run the sensor requests, as the daemon would launch it
    tick = new_data_sensor_ticks(dataset, settings, instance,
                                 lambda job, request: runs.append(run_as_the_daemon(job, request, instance)))

    first = tick(None)
    assert [run.success for run in runs] == [True]
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
    # The run the sensor started: the audit job for the test partition only.
    result = runs[-1]
    assert result.success
    (hashes,) = [e.step_materialization_data.materialization for e in result.get_asset_materialization_events()
                 if e.asset_key == dg.AssetKey(["ward", "image_hashes"])]
    assert hashes.partition == "test" and hashes.metadata["hashed"].value == 2
    report = json.loads(bucket.blob("audits/ward/report/leakage_audit.json").download_as_text())
    assert {row["split"]: row["images"] for row in report["coverage"]}["test"] == 4


@pytest.mark.parametrize("where, message", [
    ("gs://team/scans/absent.csv", "manifest gs://team/scans/absent.csv does not exist"),
    ("gs://no-such-bucket/m.csv", "bucket gs://no-such-bucket does not exist at http://127.0.0.1"),
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


def test_one_writer_per_gcs_output_root_shared_by_the_steps_of_a_run_and_a_dead_run_is_taken_over(bucket):
    from google.api_core.exceptions import PreconditionFailed

    root, name = "gs://team/audits/ward", f"audits/ward/{LOCK_FILE}"

    def holders() -> list[int]:
        return sorted(holder["pid"] for holder in json.loads(bucket.blob(name).download_as_text())["holders"].values())

    with generation_preconditions_enforced(required=True):
        with output_lock(root, run_id="run-a"):
            stale = bucket.get_blob(name).generation
            step = _lock_from_another_process(root, run_id="run-a", while_held=f"print(read({name!r}))")
            assert step.returncode == 0, step.stderr  # another step of the run joined it
            assert len(json.loads(step.stdout)["holders"]) == 2
            assert holders() == [os.getpid()]  # that step left; this one still holds it
            with pytest.raises(PreconditionFailed):  # a rewrite at a generation since replaced is refused
                bucket.blob(name).upload_from_string("{}", if_generation_match=stale)
            for other_run in ("run-b", None):
                refused = _lock_from_another_process(root, run_id=other_run)
                assert refused.returncode != 0
                assert (f"OutputLocked: output directory {root} is in use by another run (pid {os.getpid()} on "
                        in refused.stderr and ", run run-a: " in refused.stderr)
        assert bucket.get_blob(name) is None  # the last holder deleted it
        # A run whose holders all died without releasing: their leases ran out, so the next run takes over.
        bucket.blob(name).upload_from_string(
            json.dumps({"run_id": "run-a", "holders": {"dead": {"pid": 1, "lease_until": 0}}}), if_generation_match=0)
        with output_lock(root, wait_seconds=0):  # a run without a run id (the CLI's) shares it with nobody
            assert holders() == [os.getpid()]
            assert f"OutputLocked: output directory {root} is in use" in _lock_from_another_process(root).stderr


def _lock_from_another_process(root: str, run_id: str | None = None, while_held: str = "pass") -> subprocess.CompletedProcess:
    """The lock as another step or run takes it: another process (one process's own nested holds are shared)."""
    code = ("from leakage_pipeline.storage.output_lock import output_lock\n"
            "from leakage_pipeline.storage.locations import gcs_client\n"
            "read = lambda name: gcs_client().bucket('team').blob(name).download_as_text()\n"
            f"with output_lock({root!r}, wait_seconds=0.5, run_id={run_id!r}):\n    {while_held}")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_training_on_a_bucket_puts_image_stores_models_and_evaluation_in_it(bucket, tmp_path):
    _upload_dataset(bucket, tmp_path / "scratch_images", _rows(32))
    settings = AuditSettings(manifest_path="gs://team/scans/manifest.csv", output_dir="gs://team/audits/ward",
                             scratch_dir=str(tmp_path / "scratch"))
    outcome = run_audit(settings, training=TrainingSettings(image_size=16, epochs=1, bootstrap_resamples=20))
    assert not outcome.training_blocked
    written = {blob.name for blob in bucket.list_blobs(prefix="audits/ward/training/")}
    for name in ("leak_free/model.pt", "leak_free/preprocessing.json", "leak_free/test_predictions.parquet",
                 "leaky/model.pt", "leaky/split.parquet", "evaluation/evaluation.json", "evaluation/evaluation.md"):
        assert f"audits/ward/training/{name}" in written, name
    assert any(name.startswith("audits/ward/training/image_store/16px_3ch/split=test/") for name in written)
    evaluation = json.loads(bucket.blob("audits/ward/training/evaluation/evaluation.json").download_as_text())
    assert evaluation["shared_test_images"] > 0


def test_an_unreachable_endpoint_for_the_output_root_fails_in_seconds(tmp_path, monkeypatch):
    port = free_port()  # nothing listens there
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    use_gcs_client(None)
    (tmp_path / "m.csv").write_text("image_uri,patient_id,label,split\na.png,p0,a,train\n")
    started = time.monotonic()
    with pytest.raises(AuditFailed, match=rf"cannot read gs://team at http://127.0.0.1:{port} within 5 s"):
        run_audit(AuditSettings(manifest_path=str(tmp_path / "m.csv"), output_dir="gs://team/audits/ward"))
    assert time.monotonic() - started < 20
    use_gcs_client(None)
