"""What the Dagster UI shows, checked in the real webserver and a real browser.

A demo audit is materialized into a Dagster instance; `dagster-webserver` serves it on 127.0.0.1.
Through its GraphQL API: the report's metadata holds the verdict and the montage as an inline
image, and each split partition of the hashes holds its own counts. Then headless Chromium
renders the report asset's page to a PNG (kept under LEAKAGE_UI_SCREENSHOTS when set). Without
Chromium the browser part fails: `apt-get install chromium` (Debian) first.
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
import requests

from leakage_pipeline.definitions import defs as load_definitions
from leakage_pipeline.defs.automation import partition_range_tags
from leakage_pipeline_tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
REPORT_METADATA = """
query ($key: AssetKeyInput!) {
  assetNodeOrError(assetKey: $key) { ... on AssetNode {
    assetMaterializations(limit: 10) { partition metadataEntries {
      label
      ... on MarkdownMetadataEntry { mdStr }
      ... on TextMetadataEntry { text }
      ... on IntMetadataEntry { intValue }
    } }
  } }
}"""


def _materializations(url: str, key: list[str]) -> list[dict]:
    response = requests.post(f"{url}/graphql", json={"query": REPORT_METADATA, "variables": {"key": {"path": key}}},
                             timeout=60)
    response.raise_for_status()
    return [{"partition": m["partition"],
             **{e["label"]: e.get("mdStr", e.get("text", e.get("intValue"))) for e in m["metadataEntries"]}}
            for m in response.json()["data"]["assetNodeOrError"]["assetMaterializations"]]


@pytest.fixture
def served_demo(small_demo, tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("nux:\n  enabled: false\n")  # no welcome dialog over the page
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("LEAKAGE_MANIFEST", str(small_demo))
    monkeypatch.setenv("LEAKAGE_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.delenv("LEAKAGE_DATASETS_DIR", raising=False)
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        result = load_definitions().resolve_job_def("demo_audit").execute_in_process(
            instance=instance, tags=partition_range_tags(["train", "val", "test"]))
        assert result.success
    port = free_port()
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-webserver")), "-h", "127.0.0.1", "-p", str(port),
         "-w", str(ROOT / "workspace.yaml")],
        cwd=ROOT, env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/server_info", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "the webserver did not start"
            time.sleep(1)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


@pytest.mark.slow
def test_the_report_page_shows_the_verdict_the_montage_and_per_partition_counts(served_demo, small_demo, tmp_path):
    (report,) = _materializations(served_demo, ["demo", "leakage_report"])
    assert report["montage"].startswith("![leak montage](data:image/jpeg;base64,")
    assert "test images" in report["verdict"]
    hashes = {m["partition"]: m for m in _materializations(served_demo, ["demo", "image_hashes"])}
    assert set(hashes) == {"train", "val", "test"}
    per_split = dict(pl.read_csv(small_demo, infer_schema=False).group_by("split").len().iter_rows())
    assert {split: hashes[split]["dagster/row_count"] for split in hashes} == per_split

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the browser check needs Debian's chromium (apt-get install chromium)"
    shots = Path(os.environ.get("LEAKAGE_UI_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    # The report, and the hashing asset: a step per split partition, shown as one asset.
    for asset in ("leakage_report", "image_hashes"):
        shot = shots / f"{asset}_asset.png"
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1400,2600", "--virtual-time-budget=20000", f"--screenshot={shot}",
                        f"{served_demo}/assets/demo/{asset}"], check=True, timeout=180, capture_output=True)
        assert shot.stat().st_size > 30_000  # a rendered page, not a blank one
