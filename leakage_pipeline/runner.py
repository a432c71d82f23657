"""Runs the pipeline's assets in-process, as the CLI and the tests do (no webserver needed)."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from leakage_pipeline.defs.assets import AUDIT_ASSETS
from leakage_pipeline.defs.automation import audit_run_tags
from leakage_pipeline.defs.checks import AUDIT_CHECKS, no_patient_spans_splits
from leakage_pipeline.defs.output_files import OutputFiles
from leakage_pipeline.defs.settings import AuditSettings, TrainingSettings, pipeline_resources
from leakage_pipeline.defs.training_assets import TRAINING_ASSETS
from leakage_pipeline.output_lock import output_lock


class AuditFailed(RuntimeError):
    """The audit (or the training after it) could not run; the message is the underlying error's."""


@dataclass(frozen=True)
class AuditOutcome:
    files: OutputFiles
    training_blocked: bool  # the blocking split check failed: the report is written, training may not run
    result: dg.ExecuteInProcessResult


def _root_message(event: dg.DagsterEvent) -> str:
    error = event.step_failure_data.error
    # Dagster wraps the asset's own exception; the user needs the innermost message.
    while error.cause is not None and error.cls_name == "DagsterExecutionStepExecutionError":
        error = error.cause
    return error.message.strip()


def run_audit(
    settings: AuditSettings, instance: dg.DagsterInstance | None = None, log_level: str = "INFO",
    training: TrainingSettings | None = None,
) -> AuditOutcome:
    """Materialize every audit asset and check, and the training assets when ``training`` is given.

    Raises :class:`AuditFailed` if an asset failed. A failed blocking split check is not a
    failure of the audit: the report is written and training is skipped (``training_blocked``).
    Holds the output directory's lock throughout, or raises ``OutputLocked`` naming its holder.
    """
    with output_lock(settings.output_dir, settings.lock_wait_seconds):
        result = dg.materialize(
            [*AUDIT_ASSETS, *AUDIT_CHECKS, *(TRAINING_ASSETS if training is not None else [])],
            resources=pipeline_resources(settings, training or TrainingSettings()),
            tags=audit_run_tags(),
            instance=instance,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        )
    blocking_step = no_patient_spans_splits.node_def.name
    failures = [e for e in result.all_events if e.is_step_failure]
    asset_failures = [e for e in failures if not e.step_key.endswith(blocking_step)]
    if asset_failures:
        first = asset_failures[0]
        raise AuditFailed(f"step {first.step_key} failed: {_root_message(first)}")
    return AuditOutcome(files=OutputFiles(settings.output_dir), training_blocked=bool(failures), result=result)
