"""A dataset's jobs and what starts them: a nightly audit, a weekly audit that verifies the hash
cache, and a sensor that audits again when images or the manifest change, for the changed split
partitions only."""

import hashlib
import json

import dagster as dg
import polars as pl

from leakage_pipeline.audit.data_fingerprint import changed_splits, split_fingerprints
from leakage_pipeline.audit.manifest import ManifestError, add_locations, load_manifest
from leakage_pipeline.audit.splitting import POLICY_KEEP
from leakage_pipeline.defs.assets import VERIFY_CACHE_TAG
from leakage_pipeline.defs.dataset import Dataset
from leakage_pipeline.defs.dataset_step import AUDIT, GCS
from leakage_pipeline.storage.locations import UnsupportedLocation

ANY_SPLIT = "*"  # the fingerprint's key when the pipeline, not the manifest, assigns splits


def partition_range_tags(splits: list[str]) -> dict[str, str]:
    """One run over the hash partitions from the first to the last of ``splits`` (in dataset order)."""
    return {"dagster/asset_partition_range_start": splits[0], "dagster/asset_partition_range_end": splits[-1]}


# Every training run carries this tag; a deployment's run queue limits how many such runs hold a GPU at
# once (deploy/dagster.yaml, deploy/helm/values.yaml).
GPU_RUN_TAG = "leakage-pipeline/gpu"
# Every run of a dataset's jobs (launched, scheduled, sensed, backfilled) carries its name here; the run
# queue holds one per value (deploy/dagster.yaml). The dataset's pool does the same for runs launched from
# an asset's page, but only once the pool's limit exists: in the queue's first pass over a new pool, two
# runs queued together would both start and meet at the output lock.
DATASET_RUN_TAG = "leakage-pipeline/dataset"


def build_jobs(dataset: Dataset, audit_assets: list, training_assets: list) -> list:
    return [
        dg.define_asset_job(f"{dataset.name}_audit", selection=dg.AssetSelection.assets(*audit_assets),
                            description=f"{dataset.name}: manifest to leakage report and leak-free split.",
                            tags={DATASET_RUN_TAG: dataset.name}),
        dg.define_asset_job(f"{dataset.name}_training", selection=dg.AssetSelection.assets(*training_assets),
                            description=f"{dataset.name}: image stores, the leak-free and the leaky model, and "
                                        "their evaluation (after an audit).",
                            tags={GPU_RUN_TAG: "true", DATASET_RUN_TAG: dataset.name}),
    ]


def build_schedules(dataset: Dataset, audit_job) -> list[dg.ScheduleDefinition]:
    every_split = partition_range_tags(list(dataset.splits))

    @dg.schedule(name=f"{dataset.name}_nightly_audit", job=audit_job, cron_schedule=dataset.nightly_audit_cron,
                 execution_timezone="UTC")
    def nightly_audit(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        """Every night; unchanged images are reused, so a quiet night costs little."""
        return dg.RunRequest(run_key=None, tags=every_split)

    @dg.schedule(name=f"{dataset.name}_weekly_cache_verification", job=audit_job, cron_schedule="0 3 * * 0",
                 execution_timezone="UTC")
    def weekly_cache_verification(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        """Sundays at 03:00 UTC: the audit with ``verify_cache``, re-hashing every image, so a cached
        hash the cache key failed to invalidate is found and reported within a week."""
        return dg.RunRequest(run_key=None, tags={**every_split, VERIFY_CACHE_TAG: "true"})

    return [nightly_audit, weekly_cache_verification]


_RUN_KEY_TAG = "dagster/run_key"


def _cursor_state(cursor: str | None) -> dict:
    """The sensor's cursor: ``audited`` (each split's fingerprint as a successful audit covered it),
    ``pending`` (the requested run's key and the fingerprints it will cover) and ``requests`` (how many
    runs it has requested, which keeps run keys distinct when the same data is requested again)."""
    state = json.loads(cursor or "{}")
    if "audited" not in state:  # a cursor written before the sensor waited for its runs: fingerprints alone
        state = {"audited": state}
    return {"pending": None, "requests": 0, **state}


def _settle_pending(context: dg.SensorEvaluationContext, state: dict) -> str | None:
    """Move the pending run's fingerprints to ``audited`` once it succeeded, drop them once it failed or was
    cancelled (so the change is requested again); while it has not finished, say so."""
    pending = state["pending"]
    if pending is None:
        return None
    runs = context.instance.get_runs(filters=dg.RunsFilter(tags={_RUN_KEY_TAG: pending["run_key"]}), limit=1)
    # The daemon creates a tick's runs before it stores the tick's cursor, so no run means none was made.
    if runs and not runs[0].is_finished:
        return f"waiting for run {runs[0].run_id} to finish before looking again"
    if runs and runs[0].status == dg.DagsterRunStatus.SUCCESS:
        state["audited"] = pending["fingerprints"]
    else:
        context.log.info(f"run {runs[0].run_id if runs else pending['run_key']} did not succeed "
                         f"({runs[0].status.value if runs else 'never made'}): its change is requested again")
    state["pending"] = None
    return None


def build_new_data_sensor(dataset: Dataset, audit_job) -> dg.SensorDefinition:
    audit_key = dataset.resource_key(AUDIT)
    splits = list(dataset.splits)

    @dg.sensor(name=f"{dataset.name}_new_data", job=audit_job, minimum_interval_seconds=dataset.new_data_interval_seconds,
               default_status=dg.DefaultSensorStatus.STOPPED, required_resource_keys={audit_key, GCS})
    def new_data(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        """Audits again when the manifest or its images change, hashing only the split partitions
        whose images changed. The cursor holds each split's fingerprint (locations, sizes and
        versions from a listing: no image is read) as the last successful audit covered it: a run
        that failed or was cancelled leaves its change to be requested again."""
        state = _cursor_state(context.cursor)
        waiting = _settle_pending(context, state)
        if waiting:
            return dg.SensorResult(skip_reason=waiting, cursor=json.dumps(state, sort_keys=True))
        # On context.resources: a daemon passes no keyword arguments for required_resource_keys.
        audit = getattr(context.resources, audit_key)
        try:
            frame = add_locations(load_manifest(audit.manifest_path, audit.column_mapping(), splits),
                                  audit.location_rules(), audit.manifest_path)
        except (ManifestError, UnsupportedLocation) as error:
            return dg.SensorResult(skip_reason=f"manifest not auditable yet: {error}", cursor=json.dumps(state, sort_keys=True))
        if audit.split_policy == POLICY_KEEP:
            current = split_fingerprints(frame.select("location", "split"))
            changed = changed_splits(state["audited"], current, splits)
        else:  # the pipeline assigns splits, so a new patient may land in any of them
            current = split_fingerprints(frame.select("location", split=pl.lit(ANY_SPLIT)))
            changed = splits if changed_splits(state["audited"], current, [ANY_SPLIT]) else []
        if not changed:
            return dg.SensorResult(skip_reason="no image or manifest row changed since the last audit",
                                   cursor=json.dumps(state, sort_keys=True))
        # A contiguous range of partitions in one run: hashing reuses every unchanged image, so a
        # split inside the range that did not change costs a listing, not a re-hash.
        state["requests"] += 1
        run_key = f"{state['requests']}-{hashlib.sha256(json.dumps(current, sort_keys=True).encode()).hexdigest()[:16]}"
        state["pending"] = {"run_key": run_key, "fingerprints": current}
        request = (dg.RunRequest(run_key=run_key, partition_key=changed[0]) if len(changed) == 1 else
                   dg.RunRequest(run_key=run_key, tags=partition_range_tags(changed)))
        context.log.info(f"changed split(s): {', '.join(changed)}")
        return dg.SensorResult(run_requests=[request], cursor=json.dumps(state, sort_keys=True))

    return new_data
