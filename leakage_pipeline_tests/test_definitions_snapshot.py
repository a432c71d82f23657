"""A snapshot of the definitions: asset keys, deps, kinds, groups, partitions, checks, job
selections, schedules and sensors. A change to any of them shows here as a diff to review;
`UPDATE_SNAPSHOTS=1 pytest leakage_pipeline_tests/test_definitions_snapshot.py` writes the new one."""

import json
import os
from pathlib import Path

from leakage_pipeline.definitions import defs as load_definitions

SNAPSHOT = Path(__file__).parent / "snapshots" / "definitions.json"


def _snapshot() -> dict:
    defs = load_definitions()
    graph = defs.resolve_asset_graph()
    assets = {}
    for key in sorted(graph.get_all_asset_keys()):
        node = graph.get(key)
        assets[key.to_user_string()] = {
            "deps": sorted(parent.to_user_string() for parent in node.parent_keys),
            "group": node.group_name,
            "kinds": sorted(node.kinds),
            "partitions": node.partitions_def.get_partition_keys() if node.partitions_def else None,
            "checks": sorted(check.name for check in node.check_keys),
        }
    jobs = {job.name: sorted(key.to_user_string() for key in job.asset_layer.selected_asset_keys)
            for job in defs.resolve_all_job_defs() if not job.name.startswith("__")}
    return {
        "assets": assets,
        "jobs": jobs,
        "schedules": {s.name: {"cron": s.cron_schedule, "job": s.job_name} for s in defs.schedules},
        "sensors": {s.name: {"job": s.job_name, "interval": s.minimum_interval_seconds} for s in defs.sensors},
        "resources": sorted(defs.resources),
    }


def test_definitions_match_the_snapshot(monkeypatch):
    monkeypatch.delenv("LEAKAGE_DATASETS_DIR", raising=False)  # the packaged datasets only
    current = _snapshot()
    if os.environ.get("UPDATE_SNAPSHOTS"):
        SNAPSHOT.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    assert current == json.loads(SNAPSHOT.read_text())
