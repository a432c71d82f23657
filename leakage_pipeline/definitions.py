"""Everything Dagster loads: ``dagster dev`` and deployments point here (see pyproject.toml)."""

import dagster as dg

from leakage_pipeline.defs.assets import AUDIT_ASSETS
from leakage_pipeline.defs.automation import (
    audit_job,
    manifest_changed,
    nightly_audit,
    training_job,
    weekly_cache_verification,
)
from leakage_pipeline.defs.checks import AUDIT_CHECKS
from leakage_pipeline.defs.same_subject_assets import SAME_SUBJECT_ASSETS
from leakage_pipeline.defs.settings import pipeline_resources, settings_from_env, training_settings_from_env
from leakage_pipeline.defs.training_assets import TRAINING_ASSETS

defs = dg.Definitions(
    assets=[*AUDIT_ASSETS, *SAME_SUBJECT_ASSETS, *TRAINING_ASSETS],
    asset_checks=AUDIT_CHECKS,
    jobs=[audit_job, training_job],
    schedules=[nightly_audit, weekly_cache_verification],
    sensors=[manifest_changed],
    resources=pipeline_resources(settings_from_env(), training_settings_from_env()),
    # One process per run holds the output directory's lock for the whole run (see AuditSettings).
    executor=dg.in_process_executor,
)
