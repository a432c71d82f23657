"""Asset checks. Findings about the data are ERROR or WARN checks on the report, never a failed run:
an audit that finds leakage did its job. The check on the leak-free split's audit is what the
training assets read before they start, so the models never train on a split that still leaks."""

import dagster as dg

from leakage_pipeline.audit.image_hashing import STATUS_OK
from leakage_pipeline.audit.report import VERDICT_CANNOT_VOUCH, VERDICT_NOTHING_TO_AUDIT
from leakage_pipeline.defs.dataset import Dataset
from leakage_pipeline.defs.dataset_step import Step, dataset_check
from leakage_pipeline.storage.files import read_json
from leakage_pipeline.storage.output_files import OutputFiles


def _report(files: OutputFiles) -> dict:
    return read_json(files.report_json)


def no_patient_spans_splits(step: Step) -> dg.AssetCheckResult:
    """Fails when any patient has images in more than one split of the audited split."""
    spanning = _report(step.files)["split_integrity"]["patients_spanning_splits"]
    return dg.AssetCheckResult(
        passed=spanning["count"] == 0, severity=dg.AssetCheckSeverity.ERROR,
        description=f"{spanning['count']} patient(s) have images in more than one split",
        metadata={"patients_spanning_splits": spanning["count"], "examples": dg.MetadataValue.json(spanning["examples"])},
    )


def no_test_image_leaked(step: Step) -> dg.AssetCheckResult:
    """Fails when any test image shows a patient or image that is also in an earlier split."""
    verdict = _report(step.files)["verdict"]
    return dg.AssetCheckResult(
        passed=verdict["leaked_test_images"] == 0, severity=dg.AssetCheckSeverity.ERROR,
        description=verdict["text"],
        metadata={"leaked_test_images": verdict["leaked_test_images"],
                  "per_reason": dg.MetadataValue.json(verdict["per_reason"])},
    )


def test_split_read(step: Step) -> dg.AssetCheckResult:
    """Fails when the test split is missing or too little of it could be read for the audit to vouch for it."""
    verdict = _report(step.files)["verdict"]
    return dg.AssetCheckResult(
        passed=verdict["status"] not in (VERDICT_CANNOT_VOUCH, VERDICT_NOTHING_TO_AUDIT),
        severity=dg.AssetCheckSeverity.ERROR,
        description=f"{verdict['test_images_read']} of {verdict['test_images']} {verdict['test_split']} images read",
        metadata={"coverage": verdict["coverage"]},
    )


def patient_ids_given(step: Step) -> dg.AssetCheckResult:
    """Warns when the manifest has no patient ids: only image-level leakage can be checked."""
    given = _report(step.files)["patient_ids_given"]
    return dg.AssetCheckResult(
        passed=given, severity=dg.AssetCheckSeverity.WARN,
        description="patient ids given" if given else
        "no patient ids: each image stands in for its patient, so the verdict is a lower bound",
    )


def every_image_readable(step: Step) -> dg.AssetCheckResult:
    """Warns about images that were missing or could not be decoded (they are not audited)."""
    per_status = _report(step.files)["counts"]["per_status"]
    bad = {status: count for status, count in per_status.items() if status != STATUS_OK}
    return dg.AssetCheckResult(
        passed=not bad,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{sum(bad.values())} image(s) not hashed: {bad}" if bad else "every image was hashed",
        metadata={"per_status": dg.MetadataValue.json(per_status)},
    )


def leak_free_split_problems(files: OutputFiles) -> tuple[int, int]:
    """(flagged images, patients in more than one split) of the leak-free split's audit."""
    report = _report(files.leak_free)
    return report["flagged"]["count"], report["split_integrity"]["patients_spanning_splits"]["count"]


def leak_free_split_is_clean(step: Step) -> dg.AssetCheckResult:
    """Fails when the leak-free split still has a flagged image or a patient in two splits; the
    models then refuse to train on it."""
    flagged, spanning = leak_free_split_problems(step.files)
    return dg.AssetCheckResult(
        passed=flagged == 0 and spanning == 0, severity=dg.AssetCheckSeverity.ERROR,
        description=f"{flagged} flagged image(s), {spanning} patient(s) in more than one split",
        metadata={"flagged_images": flagged, "patients_spanning_splits": spanning},
    )


def build_audit_checks(dataset: Dataset) -> list[dg.AssetChecksDefinition]:
    on_report = [no_patient_spans_splits, no_test_image_leaked, test_split_read, patient_ids_given,
                 every_image_readable]
    return [*(dataset_check(dataset, body, asset="leakage_report") for body in on_report),
            dataset_check(dataset, leak_free_split_is_clean, asset="leak_free_audit")]
