"""The jobs and what starts them: a nightly audit, a weekly audit that verifies the hash cache,
and a sensor on manifest changes."""

import hashlib
from pathlib import Path

import dagster as dg

from leakage_pipeline.defs.assets import AUDIT_ASSETS
from leakage_pipeline.defs.settings import SPLIT_NAMES, AuditSettings
from leakage_pipeline.defs.training_assets import TRAINING_ASSETS

audit_job = dg.define_asset_job(
    "leakage_audit",
    selection=dg.AssetSelection.assets(*AUDIT_ASSETS),
    description="Manifest to leakage report; hashes every split in one run.",
)

# Every training run carries this tag; a deployment's run queue limits how many such runs hold a GPU at
# once (deploy/dagster.yaml, deploy/helm/values.yaml).
GPU_RUN_TAG = "leakage-pipeline/gpu"

training_job = dg.define_asset_job(
    "leakage_training",
    selection=dg.AssetSelection.assets(*TRAINING_ASSETS),
    description="Image stores, the leak-free and the leaky model, and their evaluation (after an audit).",
    tags={GPU_RUN_TAG: "true"},
)


def audit_run_tags() -> dict[str, str]:
    """One run over every split partition of the hash asset (with the unpartitioned assets beside it)."""
    return {
        "dagster/asset_partition_range_start": SPLIT_NAMES[0],
        "dagster/asset_partition_range_end": SPLIT_NAMES[-1],
    }


@dg.schedule(job=audit_job, cron_schedule="0 2 * * *", execution_timezone="UTC")
def nightly_audit(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
    """Every night at 02:00 UTC; unchanged images are reused, so a quiet night costs little."""
    return dg.RunRequest(run_key=None, tags=audit_run_tags())


@dg.schedule(job=audit_job, cron_schedule="0 3 * * 0", execution_timezone="UTC")
def weekly_cache_verification(context: dg.ScheduleEvaluationContext, audit: AuditSettings) -> dg.RunRequest:
    """Sundays at 03:00 UTC: the audit with ``verify_cache``, re-hashing every image, so a cached
    hash the cache key failed to invalidate is found and reported within a week."""
    verifying = {**audit.model_dump(), "verify_cache": True}
    return dg.RunRequest(run_key=None, tags=audit_run_tags(),
                         run_config={"resources": {"audit": {"config": verifying}}})


def manifest_fingerprint(path: Path) -> str | None:
    """sha256 of the manifest file, or None while it does not exist."""
    if not path.exists():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dg.sensor(job=audit_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def manifest_changed(context: dg.SensorEvaluationContext, audit: AuditSettings) -> dg.SensorResult:
    """Starts the audit when the manifest's content changes; the cursor holds its last sha256."""
    fingerprint = manifest_fingerprint(Path(audit.manifest_path))
    if fingerprint is None:
        return dg.SensorResult(skip_reason=f"manifest {audit.manifest_path} does not exist")
    if fingerprint == context.cursor:
        return dg.SensorResult(skip_reason="manifest unchanged since the last audit")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(run_key=fingerprint, tags=audit_run_tags())],
        cursor=fingerprint,
    )
