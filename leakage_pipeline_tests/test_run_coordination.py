"""Runs of one dataset take turns, and the new-data sensor never loses a change: what it requested is
taken as audited only once that run succeeded."""

import dagster as dg
import pytest

from leakage_pipeline.defs.dataset import DEFAULT_SPLITS, Dataset
from leakage_pipeline.defs.dataset_defs import build_dataset_defs, shared_resources
from leakage_pipeline.defs.settings import AuditSettings
from leakage_pipeline_tests.conftest import new_data_sensor_ticks, run_as_the_daemon, write_image, write_manifest


@pytest.fixture
def tiny_manifest(tmp_path):
    rows = []
    for index, split in enumerate(["train", "train", "val", "test"]):
        write_image(tmp_path / "images" / f"{index}.png", index)
        rows.append({"image_uri": f"images/{index}.png", "patient_id": f"p{index}", "label": "x", "split": split})
    return write_manifest(tmp_path / "m.csv", rows)


WARD = Dataset(name="ward", splits=DEFAULT_SPLITS)


def _ward(settings: AuditSettings) -> dg.Definitions:
    return dg.Definitions.merge(build_dataset_defs(WARD, audit=settings), dg.Definitions(resources=shared_resources()))


def test_a_sensor_run_that_fails_leaves_its_change_to_a_later_tick(tiny_manifest, tmp_path):
    out = tmp_path / "out"
    out.write_text("a file where the output directory should be: every run fails")
    settings = AuditSettings(manifest_path=str(tiny_manifest), output_dir=str(out), same_subject=False)
    with dg.instance_for_test() as instance:
        runs = []
        tick = new_data_sensor_ticks(WARD, settings, instance,
                                     lambda job, request: runs.append(run_as_the_daemon(job, request, instance)))
        first = tick(None)
        (request,) = first.run_requests
        assert [run.success for run in runs] == [False]  # the output directory is a file
        out.unlink()
        second = tick(first.cursor)
        (again,) = second.run_requests  # the change was not audited: requested again, under a new run key
        assert again.run_key != request.run_key and again.tags == request.tags
        assert [run.success for run in runs] == [False, True]
        third = tick(second.cursor)
        assert not third.run_requests
        assert third.skip_message == "no image or manifest row changed since the last audit"


def test_the_sensor_waits_while_its_run_has_not_finished(tiny_manifest, tmp_path):
    settings = AuditSettings(manifest_path=str(tiny_manifest), output_dir=str(tmp_path / "out"))
    with dg.instance_for_test() as instance:
        started = []  # the run the daemon made and started, still running

        def start(job, request):
            started.append(instance.create_run_for_job(job, status=dg.DagsterRunStatus.STARTED,
                                                       tags={**request.tags, "dagster/run_key": request.run_key}))

        tick = new_data_sensor_ticks(WARD, settings, instance, start)
        first = tick(None)
        waiting = tick(first.cursor)
        assert not waiting.run_requests and waiting.skip_message == (
            f"waiting for run {started[0].run_id} to finish before looking again")
        instance.report_run_canceled(started[0])
        (again,) = tick(waiting.cursor).run_requests  # cancelled: asked again
        assert again.tags == first.run_requests[0].tags


def test_a_run_without_split_partitions_is_refused_in_its_first_step_before_any_write(tiny_manifest, tmp_path):
    out = tmp_path / "out"
    definitions = _ward(AuditSettings(manifest_path=str(tiny_manifest), output_dir=str(out), same_subject=False))
    with dg.instance_for_test() as instance:
        result = definitions.resolve_job_def("ward_audit").execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    assert result.get_asset_materialization_events() == []  # nothing upstream was written either
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    assert failure.step_key == "ward__manifest"
    assert failure.step_failure_data.error.message.strip().endswith(
        "this run has no split partitions, and ward/image_hashes is partitioned by split: launch it with a split or "
        "a range of splits (choose them all to audit every split)")
    assert not (out / "manifest.parquet").exists()
