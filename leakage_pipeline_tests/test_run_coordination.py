"""Runs of one dataset take turns, and the new-data sensor never loses a change: what it requested is
taken as audited only once that run succeeded."""

import dagster as dg
import pytest

from leakage_pipeline.defs.dataset import DEFAULT_SPLITS, Dataset
from leakage_pipeline.defs.dataset_defs import build_dataset_defs, shared_resources
from leakage_pipeline.defs.settings import AuditSettings
from leakage_pipeline_tests.conftest import write_image, write_manifest


@pytest.fixture
def tiny_manifest(tmp_path):
    rows = []
    for index, split in enumerate(["train", "train", "val", "test"]):
        write_image(tmp_path / "images" / f"{index}.png", index)
        rows.append({"image_uri": f"images/{index}.png", "patient_id": f"p{index}", "label": "x", "split": split})
    return write_manifest(tmp_path / "m.csv", rows)


def _ward(settings: AuditSettings) -> dg.Definitions:
    return dg.Definitions.merge(build_dataset_defs(Dataset(name="ward", splits=DEFAULT_SPLITS), audit=settings),
                                dg.Definitions(resources=shared_resources()))


def test_a_sensor_run_that_fails_leaves_its_change_to_a_later_tick(tiny_manifest, tmp_path):
    out = tmp_path / "out"
    out.write_text("a file where the output directory should be: every run fails")
    settings = AuditSettings(manifest_path=str(tiny_manifest), output_dir=str(out), same_subject=False)
    definitions = _ward(settings)
    sensor, job = definitions.resolve_sensor_def("ward_new_data"), definitions.resolve_job_def("ward_audit")

    with dg.instance_for_test() as instance:
        def tick(cursor):
            with dg.build_sensor_context(cursor=cursor, definitions=definitions, instance=instance,
                                         resources={"ward_audit": settings, **shared_resources()}) as context:
                return sensor.evaluate_tick(context)

        def launch(request) -> bool:
            """The run the daemon would launch for ``request``, executed for real."""
            tags = {**request.tags, "dagster/run_key": request.run_key}
            return job.execute_in_process(instance=instance, tags=tags, raise_on_error=False).success

        first = tick(None)
        (request,) = first.run_requests
        assert not launch(request)  # the output directory is a file
        second = tick(first.cursor)
        (again,) = second.run_requests  # the change was not audited: requested again, under a new run key
        assert again.run_key != request.run_key and again.tags == request.tags
        out.unlink()
        assert launch(again)
        third = tick(second.cursor)
        assert not third.run_requests
        assert third.skip_message == "no image or manifest row changed since the last audit"


def test_the_sensor_waits_while_its_run_has_not_finished(tiny_manifest, tmp_path):
    settings = AuditSettings(manifest_path=str(tiny_manifest), output_dir=str(tmp_path / "out"))
    definitions = _ward(settings)
    sensor = definitions.resolve_sensor_def("ward_new_data")
    with dg.instance_for_test() as instance:
        def tick(cursor):
            with dg.build_sensor_context(cursor=cursor, definitions=definitions, instance=instance,
                                         resources={"ward_audit": settings, **shared_resources()}) as context:
                return sensor.evaluate_tick(context)

        first = tick(None)
        (request,) = first.run_requests
        run = instance.create_run_for_job(definitions.resolve_job_def("ward_audit"), status=dg.DagsterRunStatus.STARTED,
                                          tags={**request.tags, "dagster/run_key": request.run_key})
        waiting = tick(first.cursor)
        assert not waiting.run_requests and waiting.skip_message == (
            f"waiting for run {run.run_id} to finish before looking again")
        instance.report_run_canceled(run)
        assert [r.tags for r in tick(waiting.cursor).run_requests] == [request.tags]  # cancelled: asked again


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
