"""Runs the pipeline's assets in-process, as the CLI and the tests do (no webserver needed)."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from leakage_pipeline.defs.assets import AUDIT_ASSETS
from leakage_pipeline.defs.automation import audit_run_tags
from leakage_pipeline.defs.checks import AUDIT_CHECKS, leak_free_split_is_clean
from leakage_pipeline.defs.output_files import OutputFiles
from leakage_pipeline.defs.same_subject_assets import SAME_SUBJECT_ASSETS
from leakage_pipeline.defs.settings import AuditSettings, TrainingSettings, pipeline_resources
from leakage_pipeline.defs.training_assets import TRAINING_ASSETS
from leakage_pipeline.output_lock import output_lock


class AuditFailed(RuntimeError):
    """The audit (or the training after it) could not run; the message is the underlying error's."""


@dataclass(frozen=True)
class AuditOutcome:
    files: OutputFiles
    training_blocked: bool  # the leak-free split still leaks (its blocking check failed): training did not run
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

    Raises :class:`AuditFailed` if an asset failed. Leakage found is not a failure: it is in the
    report and in failed ERROR checks. A failed blocking check on the leak-free split skips training
    (``training_blocked``). Holds the output directory's lock throughout, or raises ``OutputLocked``
    naming its holder.
    """
    with output_lock(settings.output_dir, settings.lock_wait_seconds):
        result = dg.materialize(
            [*AUDIT_ASSETS, *SAME_SUBJECT_ASSETS, *AUDIT_CHECKS, *(TRAINING_ASSETS if training is not None else [])],
            resources=pipeline_resources(settings, training or TrainingSettings()),
            tags=audit_run_tags(),
            instance=instance,
            raise_on_error=False,
            run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        )
    blocked = any(not e.passed for e in result.get_asset_check_evaluations()
                  if e.asset_check_key == leak_free_split_is_clean.check_key)
    failures = [e for e in result.all_events if e.is_step_failure]
    # A failed blocking check fails its own step, by design; every other failed step is a failed audit.
    blocking_step = leak_free_split_is_clean.node_def.name
    asset_failures = [e for e in failures if not (blocked and e.step_key == blocking_step)]
    if asset_failures:
        first = asset_failures[0]
        raise AuditFailed(f"step {first.step_key} failed: {_root_message(first)}")
    return AuditOutcome(files=OutputFiles(settings.output_dir), training_blocked=blocked, result=result)
