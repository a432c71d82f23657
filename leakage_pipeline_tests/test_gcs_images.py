"""gs:// image URIs, against the gcp-storage-emulator on 127.0.0.1 with the real client."""

import hashlib
import threading
import time

import polars as pl
import pytest
from gcp_storage_emulator.server import create_server

from leakage_pipeline.audit import image_source
from leakage_pipeline.audit.image_hashing import STATUS_MISSING, STATUS_OK, hash_image, hash_images
from leakage_pipeline.defs.settings import AuditSettings
from leakage_pipeline.runner import AuditFailed, run_audit
from leakage_pipeline.storage.locations import use_gcs_client
from leakage_pipeline_tests.conftest import free_port, write_image


@pytest.fixture
def bucket(gcs_emulator):
    return gcs_emulator("scans")


def test_gcs_images_hash_and_cache_by_generation(bucket, tmp_path):
    for i in range(3):
        bucket.blob(f"ct/{i}.png").upload_from_filename(str(write_image(tmp_path / f"{i}.png", i)))
    locations = [f"gs://scans/ct/{i}.png" for i in range(3)] + ["gs://scans/ct/absent.png"]
    first = hash_images(locations)
    assert first.hashes["status"].to_list() == [STATUS_OK] * 3 + [STATUS_MISSING]
    local = hash_images([str(tmp_path / f"{i}.png") for i in range(3)]).hashes
    assert first.hashes["phash"].head(3).to_list() == local["phash"].to_list()
    bucket.blob("ct/1.png").upload_from_filename(str(write_image(tmp_path / "new.png", 50)))  # new generation
    second = hash_images(locations, first.hashes)
    assert (second.hashed, second.reused) == (2, 2)  # the rewritten object and the missing one


def test_an_image_is_one_download_at_its_listed_generation_and_read_afresh_if_rewritten_since(bucket, tmp_path):
    first, second = (write_image(tmp_path / f"{seed}.png", seed).read_bytes() for seed in (1, 2))
    bucket.blob("ct/0.png").upload_from_string(first)
    location = "gs://scans/ct/0.png"
    listed = image_source.stat_many([location])[location]
    assert image_source.read_bytes(location, listed.version) == first
    bucket.blob("ct/0.png").upload_from_string(second)  # rewritten between the listing and the read
    fetched = image_source.read_batch([location], [listed.version])[location]
    assert isinstance(fetched, image_source.ImageMissing)
    for row in (hash_image(location, listed=listed), hash_image(location, listed=listed, fetched=fetched)):
        assert row["status"] == STATUS_OK
        assert (row["sha256"], row["version"]) == (hashlib.sha256(second).hexdigest(),
                                                   str(bucket.get_blob("ct/0.png").generation))
    bucket.blob("ct/0.png").delete()
    assert hash_image(location, listed=listed)["status"] == STATUS_MISSING


def test_a_read_the_network_fails_is_a_named_error_within_its_bound_never_an_unreadable_image(monkeypatch):
    _point_client_at(monkeypatch, free_port())  # nothing listens there
    monkeypatch.setattr(image_source, "GCS_READ_SECONDS", 2.0)
    started = time.monotonic()
    with pytest.raises(image_source.StorageUnreachable, match=r"cannot read gs://scans/x\.png at http://127\.0\.0\.1:\d+ "
                                                                r"within 2 s, retries included"):
        image_source.read_batch(["gs://scans/x.png"], ["1"])
    assert time.monotonic() - started < 10
    use_gcs_client(None)


def test_audit_reads_a_manifest_whose_images_are_in_gcs(bucket, tmp_path):
    rows = []
    for i, split in enumerate(["train", "train", "test"]):
        path = write_image(tmp_path / f"{i}.png", 7 if i in (0, 2) else i)  # 0 and 2 are the same image
        bucket.blob(f"x/{i}.png").upload_from_filename(str(path))
        rows.append({"image_uri": f"x/{i}.png", "patient_id": f"p{i}", "label": "a", "split": split})
    pl.DataFrame(rows).write_csv(tmp_path / "m.csv")
    outcome = run_audit(AuditSettings(manifest_path=str(tmp_path / "m.csv"), output_dir=str(tmp_path / "out"),
                                      image_root="gs://scans"))
    pairs = pl.read_parquet(outcome.files.near_duplicate_pairs)
    assert pairs.filter(pl.col("sha256_equal"))[["query_image_uri", "reference_image_uri"]].rows() == [
        ("x/2.png", "x/0.png")]


def _point_client_at(monkeypatch, port: int) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    use_gcs_client(None)


def test_an_unreachable_endpoint_fails_in_seconds_naming_it(tmp_path, monkeypatch):
    """The hostile pass: an unreachable GCS endpoint took about 2.5 minutes to fail."""
    port = free_port()  # nothing listens there
    _point_client_at(monkeypatch, port)
    (tmp_path / "m.csv").write_text("image_uri,patient_id,label,split\nx/0.png,p0,a,train\n")
    started = time.monotonic()
    with pytest.raises(AuditFailed, match=rf"cannot read gs://scans at http://127.0.0.1:{port} within 5 s"):
        run_audit(AuditSettings(manifest_path=str(tmp_path / "m.csv"), output_dir=str(tmp_path / "out"),
                                image_root="gs://scans"))
    assert time.monotonic() - started < 20  # 5 s of preflight plus the run's own start
    assert not (tmp_path / "out" / "manifest.parquet").exists()  # it failed before any work
    use_gcs_client(None)


def test_the_preflight_retries_an_endpoint_that_comes_up_late(monkeypatch):
    port = free_port()
    _point_client_at(monkeypatch, port)
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="scans")
    late_start = threading.Timer(0.3, server.start)  # down at the first try, up well within the 5 s budget
    late_start.start()
    try:
        image_source.check_gcs_reachable(["gs://scans/x/0.png", "/local/a.png"])  # a missing object is fine
    finally:
        late_start.join()
        server.stop()
        use_gcs_client(None)
