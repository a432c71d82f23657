"""Asset checks. The blocking one sits on the report, so the audit always writes its findings
while anything that trains on the data (downstream of the report) never runs on a leaky split."""

import json

import dagster as dg

from leakage_pipeline.audit.image_hashing import STATUS_OK
from leakage_pipeline.defs.assets import leakage_report
from leakage_pipeline.defs.output_files import OutputFiles
from leakage_pipeline.defs.settings import AuditSettings


def _report(audit: AuditSettings) -> dict:
    return json.loads(OutputFiles(audit.output_dir).report_json.read_text())


@dg.asset_check(asset=leakage_report, blocking=True)
def no_patient_spans_splits(audit: AuditSettings) -> dg.AssetCheckResult:
    """Fails when any patient has images in more than one split: training must not use this split."""
    spanning = _report(audit)["split_integrity"]["patients_spanning_splits"]
    return dg.AssetCheckResult(
        passed=spanning["count"] == 0,
        description=f"{spanning['count']} patient(s) have images in more than one split",
        metadata={
            "patients_spanning_splits": spanning["count"],
            "examples": dg.MetadataValue.json(spanning["examples"]),
        },
    )


@dg.asset_check(asset=leakage_report)
def every_image_readable(audit: AuditSettings) -> dg.AssetCheckResult:
    """Warns about images that were missing or could not be decoded (they were left out of matching)."""
    per_status = _report(audit)["counts"]["per_status"]
    bad = {status: count for status, count in per_status.items() if status != STATUS_OK}
    return dg.AssetCheckResult(
        passed=not bad,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{sum(bad.values())} image(s) not hashed: {bad}" if bad else "every image was hashed",
        metadata={"per_status": dg.MetadataValue.json(per_status)},
    )


AUDIT_CHECKS = [no_patient_spans_splits, every_image_readable]
