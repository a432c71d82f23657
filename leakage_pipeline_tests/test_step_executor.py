"""Each step of a run in its own process (the multiprocess executor, as the k8s_job_executor runs a pod
per step): the split steps run at once, share the run's output lock, and the audit matches one
in-process run's."""

import json

import dagster as dg
import polars as pl
import pytest

from leakage_pipeline.definitions import defs
from leakage_pipeline.defs.automation import partition_range_tags
from leakage_pipeline.defs.dataset import DEFAULT_SPLITS
from leakage_pipeline.defs.settings import AuditSettings
from leakage_pipeline.defs.step_executor import STEP_EXECUTOR_ENV, step_executor
from leakage_pipeline.runner import run_audit


def demo_audit_job() -> dg.JobDefinition:
    """The demo dataset's audit job, rebuilt in each step's process from the environment."""
    return defs().resolve_job_def("demo_audit")


def _lock_windows(instance: dg.DagsterInstance, run_id: str) -> dict[str, tuple[float, float, int]]:
    """Each step's stretch of holding the output lock (from its resources' start, which takes the lock,
    to its success, which is before it lets go) and the pid of the process it ran in."""
    windows: dict[str, list] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type == dg.DagsterEventType.RESOURCE_INIT_SUCCESS:
            windows[event.step_key] = [record.timestamp, None, event.pid]
        elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
            windows[event.step_key][1] = record.timestamp
    return {key: tuple(value) for key, value in windows.items()}


@pytest.mark.slow
def test_the_steps_of_a_run_run_in_their_own_processes_at_once(small_demo, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv(STEP_EXECUTOR_ENV, "multiprocess")
    assert step_executor().name == "multiprocess"
    # No waiting for the lock: a step that found another step of its run holding it would fail at once.
    run_config = {"execution": {"config": {"max_concurrent": 4}},
                  "resources": {"demo_audit": {"config": {"manifest_path": str(small_demo), "output_dir": str(out),
                                                          "lock_wait_seconds": 0}}}}
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        result = dg.execute_job(dg.reconstructable(demo_audit_job), instance=instance, run_config=run_config,
                                tags=partition_range_tags(list(DEFAULT_SPLITS)))
        assert result.success
        windows = _lock_windows(instance, result.run_id)

    assert len([key for key in windows if "hash_split_" in key]) == len(DEFAULT_SPLITS)  # a step per split
    assert len({pid for *_, pid in windows.values()}) == len(windows)  # each in a process of its own
    overlapping = [(a, b) for a in windows for b in windows
                   if a < b and max(windows[a][0], windows[b][0]) < min(windows[a][1], windows[b][1])]
    assert overlapping, windows  # steps held the lock at the same time: they shared it

    # The same answer as one process running every step.
    reference = run_audit(AuditSettings(manifest_path=str(small_demo), output_dir=str(tmp_path / "reference")))
    def read(root, name):
        return json.loads((root / "report" / name).read_text())

    assert read(out, "leakage_audit.json")["verdict"] == read(reference.files.root, "leakage_audit.json")["verdict"]
    assert read(out, "flagged_test_images.json") == read(reference.files.root, "flagged_test_images.json")
    for split in DEFAULT_SPLITS:
        assert pl.read_parquet(out / "image_hashes" / f"split={split}.parquet").equals(
            pl.read_parquet(reference.files.image_hashes(split)))


def test_an_unknown_executor_is_refused_naming_the_known_ones(monkeypatch):
    monkeypatch.setenv(STEP_EXECUTOR_ENV, "ray")
    with pytest.raises(ValueError, match="LEAKAGE_STEP_EXECUTOR='ray': expected in_process, multiprocess or k8s"):
        step_executor()
