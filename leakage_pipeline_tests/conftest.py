import io
import json
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from leakage_pipeline.demo.synthetic_dataset import DemoSpec, build_demo_dataset
from leakage_pipeline.storage.locations import gcs_client, use_gcs_client
from leakage_pipeline_tests.gcs_emulator import generation_preconditions_enforced, without_emulator_artifacts

SMALL_DEMO = DemoSpec(patients=70, images_per_patient=(2, 4), seed=3, scale=0.4)


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png_bomb(width: int, height: int) -> bytes:
    """A valid grayscale PNG of ``width`` x ``height`` black pixels, a few KB compressed per 100 Mpx."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0, then black pixels
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def write_image(path: Path, seed: int, size=(64, 48), mode="RGB", fmt="PNG") -> Path:
    """A smooth random image (seeded) written to ``path``."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
    image = Image.fromarray(coarse, "RGB").resize(size, Image.Resampling.BICUBIC).convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(image, fmt))
    return path


def canonical_json(value):
    """JSON content up to what two clean runs already differ in: the order of rows that tie, and
    float sums taken in another order."""
    if isinstance(value, dict):
        return {key: canonical_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return sorted((canonical_json(item) for item in value), key=lambda item: json.dumps(item, sort_keys=True))
    return round(value, 9) if isinstance(value, float) else value


def write_manifest(path: Path, rows: list[dict]) -> Path:
    pl.DataFrame(rows).write_csv(path)
    return path


def images_frame(rows: list[dict]) -> pl.DataFrame:
    """Audited images; each row needs patient_id and split, and gets a distinct random hash unless given one."""
    rng = np.random.default_rng(0)
    filled = []
    for index, row in enumerate(rows):
        uri = row.get("image_uri", f"img{index}.png")
        filled.append({
            "row": index + 1, "image_uri": uri, "location": f"/data/{uri}", "label": "a" if index % 2 else "b",
            "case_id": None, "vendor": None, "status": "ok", "sha256": f"sha{index}",
            "phash": int(rng.integers(0, 2**63)), "dhash": int(rng.integers(0, 2**63)), "detail": 30.0, **row,
        })
    return pl.DataFrame(filled, schema_overrides={
        "case_id": pl.String, "vendor": pl.String, "phash": pl.UInt64, "dhash": pl.UInt64, "detail": pl.Float32,
        "sha256": pl.String, "status": pl.String})


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory) -> Path:
    """Manifest path of a small synthetic dataset with every kind of planted leak."""
    return build_demo_dataset(tmp_path_factory.mktemp("small_demo"), SMALL_DEMO)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (yet)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def gcs_emulator(monkeypatch):
    """gcp-storage-emulator on a free 127.0.0.1 port, enforcing generation preconditions as GCS does, with
    this process's GCS client (and gcsfs) pointed at it; yields a function that creates a bucket there
    and returns it."""
    from gcp_storage_emulator.server import create_server

    without_emulator_artifacts(monkeypatch.setattr)
    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True)
    server.start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    use_gcs_client(None)
    with generation_preconditions_enforced():
        yield lambda name: gcs_client().create_bucket(name)
    use_gcs_client(None)
    server.stop()


def new_data_sensor_ticks(dataset, settings, instance, launch=None):
    """The dataset's new-data sensor with the dataset's own definitions, so it is evaluated as the daemon
    evaluates it: a function from a cursor to that tick's result. The sensor reads its runs' outcomes from
    ``instance``; ``launch(job, request)`` is handed each run the tick requests, with the audit job, as the
    daemon would launch it."""
    import dagster as dg

    from leakage_pipeline.defs.dataset_defs import build_dataset_defs, shared_resources
    from leakage_pipeline.defs.dataset_step import AUDIT

    definitions = dg.Definitions.merge(build_dataset_defs(dataset, audit=settings),
                                       dg.Definitions(resources=shared_resources()))
    sensor = definitions.resolve_sensor_def(f"{dataset.name}_new_data")
    job = definitions.resolve_job_def(f"{dataset.name}_audit")

    def tick(cursor: str | None):
        resources = {dataset.resource_key(AUDIT): settings, **shared_resources()}
        with dg.build_sensor_context(cursor=cursor, definitions=definitions, resources=resources,
                                     instance=instance) as context:
            result = sensor.evaluate_tick(context)
        for request in result.run_requests if launch else ():
            launch(job, request)
        return result

    return tick


def run_as_the_daemon(job, request, instance):
    """The run the daemon launches for a sensor's ``request``, executed in-process (with its run key)."""
    return job.execute_in_process(instance=instance, partition_key=request.partition_key,
                                  tags={**request.tags, "dagster/run_key": request.run_key}, raise_on_error=False)
