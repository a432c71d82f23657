"""A dataset's jobs and what starts them: a nightly audit, a weekly audit that verifies the hash
cache, and a sensor that audits again when images or the manifest change, for the changed split
partitions only."""

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


def build_jobs(dataset: Dataset, audit_assets: list, training_assets: list) -> list:
    return [
        dg.define_asset_job(f"{dataset.name}_audit", selection=dg.AssetSelection.assets(*audit_assets),
                            description=f"{dataset.name}: manifest to leakage report and leak-free split."),
        dg.define_asset_job(f"{dataset.name}_training", selection=dg.AssetSelection.assets(*training_assets),
                            description=f"{dataset.name}: image stores, the leak-free and the leaky model, and "
                                        "their evaluation (after an audit).", tags={GPU_RUN_TAG: "true"}),
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


def build_new_data_sensor(dataset: Dataset, audit_job) -> dg.SensorDefinition:
    audit_key = dataset.resource_key(AUDIT)
    splits = list(dataset.splits)

    @dg.sensor(name=f"{dataset.name}_new_data", job=audit_job, minimum_interval_seconds=dataset.new_data_interval_seconds,
               default_status=dg.DefaultSensorStatus.STOPPED, required_resource_keys={audit_key, GCS})
    def new_data(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        """Audits again when the manifest or its images change, hashing only the split partitions
        whose images changed. The cursor holds each split's fingerprint (locations, sizes and
        versions from a listing: no image is read)."""
        # On context.resources: a daemon passes no keyword arguments for required_resource_keys.
        audit = getattr(context.resources, audit_key)
        try:
            frame = add_locations(load_manifest(audit.manifest_path, audit.column_mapping(), splits),
                                  audit.location_rules(), audit.manifest_path)
        except (ManifestError, UnsupportedLocation) as error:
            return dg.SensorResult(skip_reason=f"manifest not auditable yet: {error}")
        if audit.split_policy == POLICY_KEEP:
            current = split_fingerprints(frame.select("location", "split"))
            changed = changed_splits(json.loads(context.cursor or "{}"), current, splits)
        else:  # the pipeline assigns splits, so a new patient may land in any of them
            current = split_fingerprints(frame.select("location", split=pl.lit(ANY_SPLIT)))
            changed = splits if changed_splits(json.loads(context.cursor or "{}"), current, [ANY_SPLIT]) else []
        if not changed:
            return dg.SensorResult(skip_reason="no image or manifest row changed since the last audit")
        # A contiguous range of partitions in one run: hashing reuses every unchanged image, so a
        # split inside the range that did not change costs a listing, not a re-hash.
        run_key = json.dumps(current, sort_keys=True)
        request = (dg.RunRequest(run_key=run_key, partition_key=changed[0]) if len(changed) == 1 else
                   dg.RunRequest(run_key=run_key, tags=partition_range_tags(changed)))
        context.log.info(f"changed split(s): {', '.join(changed)}")
        return dg.SensorResult(run_requests=[request], cursor=json.dumps(current, sort_keys=True))

    return new_data
