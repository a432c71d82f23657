"""Asset checks. Findings about the data are ERROR or WARN checks on the report, never a failed run:
an audit that finds leakage did its job. The one blocking check sits on the leak-free split's audit,
so the models never train on a split that still leaks."""

import json

import dagster as dg

from leakage_pipeline.audit.image_hashing import STATUS_OK
from leakage_pipeline.audit.report import VERDICT_CANNOT_VOUCH, VERDICT_NOTHING_TO_AUDIT
from leakage_pipeline.defs.assets import leak_free_audit, leakage_report
from leakage_pipeline.defs.output_files import OutputFiles
from leakage_pipeline.defs.settings import AuditSettings


def _report(files: OutputFiles) -> dict:
    return json.loads(files.report_json.read_text())


@dg.asset_check(asset=leakage_report)
def no_patient_spans_splits(audit: AuditSettings) -> dg.AssetCheckResult:
    """Fails when any patient has images in more than one split of the audited split."""
    spanning = _report(OutputFiles(audit.output_dir))["split_integrity"]["patients_spanning_splits"]
    return dg.AssetCheckResult(
        passed=spanning["count"] == 0, severity=dg.AssetCheckSeverity.ERROR,
        description=f"{spanning['count']} patient(s) have images in more than one split",
        metadata={"patients_spanning_splits": spanning["count"], "examples": dg.MetadataValue.json(spanning["examples"])},
    )


@dg.asset_check(asset=leakage_report)
def no_test_image_leaked(audit: AuditSettings) -> dg.AssetCheckResult:
    """Fails when any test image shows a patient or image that is also in an earlier split."""
    verdict = _report(OutputFiles(audit.output_dir))["verdict"]
    return dg.AssetCheckResult(
        passed=verdict["leaked_test_images"] == 0, severity=dg.AssetCheckSeverity.ERROR,
        description=verdict["text"],
        metadata={"leaked_test_images": verdict["leaked_test_images"],
                  "per_reason": dg.MetadataValue.json(verdict["per_reason"])},
    )


@dg.asset_check(asset=leakage_report)
def test_split_read(audit: AuditSettings) -> dg.AssetCheckResult:
    """Fails when the test split is missing or too little of it could be read for the audit to vouch for it."""
    verdict = _report(OutputFiles(audit.output_dir))["verdict"]
    return dg.AssetCheckResult(
        passed=verdict["status"] not in (VERDICT_CANNOT_VOUCH, VERDICT_NOTHING_TO_AUDIT),
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{verdict['test_images_read']} of {verdict['test_images']} {verdict['test_split']} images read",
        metadata={"coverage": verdict["coverage"]},
    )


@dg.asset_check(asset=leakage_report)
def patient_ids_given(audit: AuditSettings) -> dg.AssetCheckResult:
    """Warns when the manifest has no patient ids: only image-level leakage can be checked."""
    given = _report(OutputFiles(audit.output_dir))["patient_ids_given"]
    return dg.AssetCheckResult(
        passed=given, severity=dg.AssetCheckSeverity.WARN,
        description="patient ids given" if given else
        "no patient ids: each image stands in for its patient, so the verdict is a lower bound",
    )


@dg.asset_check(asset=leakage_report)
def every_image_readable(audit: AuditSettings) -> dg.AssetCheckResult:
    """Warns about images that were missing or could not be decoded (they are not audited)."""
    per_status = _report(OutputFiles(audit.output_dir))["counts"]["per_status"]
    bad = {status: count for status, count in per_status.items() if status != STATUS_OK}
    return dg.AssetCheckResult(
        passed=not bad,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{sum(bad.values())} image(s) not hashed: {bad}" if bad else "every image was hashed",
        metadata={"per_status": dg.MetadataValue.json(per_status)},
    )


@dg.asset_check(asset=leak_free_audit, blocking=True)
def leak_free_split_is_clean(audit: AuditSettings) -> dg.AssetCheckResult:
    """Blocks training unless the leak-free split has no flagged image and no patient in two splits."""
    report = _report(OutputFiles(audit.output_dir).leak_free)
    flagged = report["flagged"]["count"]
    spanning = report["split_integrity"]["patients_spanning_splits"]["count"]
    return dg.AssetCheckResult(
        passed=flagged == 0 and spanning == 0,
        description=f"{flagged} flagged image(s), {spanning} patient(s) in more than one split",
        metadata={"flagged_images": flagged, "patients_spanning_splits": spanning},
    )


AUDIT_CHECKS = [no_patient_spans_splits, no_test_image_leaked, test_split_read, patient_ids_given,
                every_image_readable, leak_free_split_is_clean]
