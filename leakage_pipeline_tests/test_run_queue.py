"""Two runs of one dataset launched together both succeed, one after the other: the real run queue
(``dagster-daemon`` with deploy/dagster.yaml's concurrency settings) holds the second until the first ends."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from leakage_pipeline.defs.automation import partition_range_tags
from leakage_pipeline.defs.dataset import DATASETS_DIR_VARIABLE, DEFAULT_SPLITS
from leakage_pipeline_tests.conftest import write_image, write_manifest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _home(tmp_path: Path) -> Path:
    """A DAGSTER_HOME with the deployment's run queue and concurrency settings, on SQLite."""
    deployed = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    home = tmp_path / "home"
    home.mkdir()
    instance = {key: deployed[key] for key in ("run_coordinator", "concurrency")}
    instance["run_coordinator"]["config"] = {"dequeue_interval_seconds": 1}
    (home / "dagster.yaml").write_text(yaml.safe_dump({**instance, "telemetry": {"enabled": False}}))
    with dg.DagsterInstance.from_config(str(home)):
        pass  # its SQLite tables, made once before several processes open them
    (home / "workspace.yaml").write_text(yaml.safe_dump({"load_from": [{"python_module": {
        "module_name": "leakage_pipeline.definitions", "location_name": "leakage_pipeline", "working_directory": str(REPO)}}]}))
    return home


def _dataset(tmp_path: Path) -> Path:
    """A four-image dataset whose runs refuse at once when another run holds its output directory."""
    rows = []
    for index, split in enumerate(["train", "train", "val", "test"]):
        write_image(tmp_path / "images" / f"{index}.png", index)
        rows.append({"image_uri": f"images/{index}.png", "patient_id": f"p{index}", "label": "x", "split": split})
    folder = tmp_path / "datasets"
    folder.mkdir()
    (folder / "ward.yaml").write_text(yaml.safe_dump({"name": "ward", "audit": {
        "manifest_path": str(write_manifest(tmp_path / "m.csv", rows)), "output_dir": str(tmp_path / "out"),
        "lock_wait_seconds": 0, "same_subject": False}}))
    return folder


@pytest.mark.slow
def test_two_runs_of_one_dataset_launched_together_queue_and_both_succeed(tmp_path):
    home = _home(tmp_path)
    env = {**os.environ, "DAGSTER_HOME": str(home), DATASETS_DIR_VARIABLE: str(_dataset(tmp_path)),
           "PYTHONPATH": str(REPO), "DAGSTER_DISABLE_TELEMETRY": "yes"}
    workspace = ["-w", str(home / "workspace.yaml")]
    log = (tmp_path / "daemon.log").open("w")
    daemon = subprocess.Popen([BIN / "dagster-daemon", "run", *workspace], env=env, cwd=REPO, stdout=log,
                              stderr=subprocess.STDOUT)
    try:
        tags = json.dumps(partition_range_tags(list(DEFAULT_SPLITS)))
        launches = [subprocess.Popen([BIN / "dagster", "job", "launch", *workspace, "-j", "ward_audit", "--tags", tags],
                                     env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                    for _ in range(2)]
        for launch in launches:
            output, _ = launch.communicate(timeout=120)
            assert launch.returncode == 0, output.decode()
        with dg.DagsterInstance.from_config(str(home)) as instance:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                records = instance.get_run_records(dg.RunsFilter(job_name="ward_audit"))
                if len(records) == 2 and all(record.dagster_run.is_finished for record in records):
                    break
                time.sleep(2)
            statuses = [record.dagster_run.status for record in records]
            assert statuses == [dg.DagsterRunStatus.SUCCESS] * 2, (tmp_path / "daemon.log").read_text()[-3000:]
            first, second = sorted(records, key=lambda record: record.start_time)
            assert first.end_time <= second.start_time  # one after the other: the queue held the second
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
