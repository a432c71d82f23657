"""Everything Dagster loads: ``dagster dev`` and deployments point here (see pyproject.toml)."""

import dagster as dg

from leakage_pipeline.defs.assets import AUDIT_ASSETS
from leakage_pipeline.defs.automation import audit_job, manifest_changed, nightly_audit
from leakage_pipeline.defs.checks import AUDIT_CHECKS
from leakage_pipeline.defs.settings import settings_from_env

defs = dg.Definitions(
    assets=AUDIT_ASSETS,
    asset_checks=AUDIT_CHECKS,
    jobs=[audit_job],
    schedules=[nightly_audit],
    sensors=[manifest_changed],
    resources={"audit": settings_from_env()},
)
