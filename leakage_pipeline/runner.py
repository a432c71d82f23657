"""Runs the pipeline's assets in-process, as the CLI and the tests do (no webserver needed)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import dagster as dg

from leakage_pipeline.audit.image_source import StorageUnreachable
from leakage_pipeline.defs.assets import build_audit_assets
from leakage_pipeline.defs.automation import partition_range_tags
from leakage_pipeline.defs.checks import build_audit_checks, leak_free_split_is_clean
from leakage_pipeline.defs.dataset import DEFAULT_SPLITS, Dataset
from leakage_pipeline.defs.dataset_defs import dataset_resources, shared_resources
from leakage_pipeline.defs.dataset_step import asset_key
from leakage_pipeline.defs.settings import AuditSettings, TrainingSettings
from leakage_pipeline.progress import parse_progress
from leakage_pipeline.storage.files import OutputUnusable
from leakage_pipeline.storage.locations import UnsupportedLocation
from leakage_pipeline.storage.output_files import OutputFiles
from leakage_pipeline.storage.output_lock import output_lock

# The dataset name of a run started from the CLI or a script: the prefix of its asset keys.
SCRIPT_DATASET = "audit"
IN_PROCESS_JOB = "in_process_run"
PROGRESS_LOGGER = "progress"


class AuditFailed(RuntimeError):
    """The audit (or the training after it) could not run; the message is the underlying error's."""


@dataclass(frozen=True)
class AuditOutcome:
    dataset: Dataset
    files: OutputFiles
    training_blocked: bool  # the leak-free split still leaks (its ERROR check failed): training did not run
    results: tuple[dg.ExecuteInProcessResult, ...]  # the audit's run, then the training's if it ran

    def materializations(self, asset: str) -> list[dg.AssetMaterialization]:
        key = asset_key(self.dataset, asset)
        return [event.step_materialization_data.materialization for result in self.results
                for event in result.get_asset_materialization_events() if event.asset_key == key]

    def check_evaluations(self) -> list[dg.AssetCheckEvaluation]:
        return [evaluation for result in self.results for evaluation in result.get_asset_check_evaluations()]


def _root_message(event: dg.DagsterEvent) -> str:
    error = event.step_failure_data.error
    # Dagster wraps the asset's own exception; the user needs the innermost message.
    while error.cause is not None and error.cls_name == "DagsterExecutionStepExecutionError":
        error = error.cause
    return error.message.strip()


class _ShowProgress(logging.Handler):
    """Hands each progress line of the run log to ``show``, whatever the console's log level."""

    def __init__(self, show: Callable[[str], None]):
        super().__init__(logging.INFO)
        self._show = show

    def emit(self, record: logging.LogRecord) -> None:
        # The record's own message carries Dagster's prefix (job, run id, step); the line as the
        # step (or the training subprocess, through Pipes) wrote it is in Dagster's metadata.
        message = record.dagster_meta["orig_message"]
        if parse_progress(message) is not None:
            self._show(message)


def _progress_logger(show: Callable[[str], None]) -> dg.LoggerDefinition:
    @dg.logger
    def progress_logger(_init_context: dg.InitLoggerContext) -> logging.Logger:
        logger = logging.Logger("leakage_pipeline.progress", logging.INFO)
        logger.addHandler(_ShowProgress(show))
        return logger

    return progress_logger


def _run_in_process(
    assets: list, checks: list, resources: dict, dataset: Dataset, instance: dg.DagsterInstance, log_level: str,
    progress: Callable[[str], None] | None,
) -> dg.ExecuteInProcessResult:
    """dg.materialize, with the progress logger it does not let a caller add."""
    loggers = {"console": dg.colored_console_logger}
    logger_config = {"console": {"config": {"log_level": log_level}}}
    if progress is not None:
        loggers[PROGRESS_LOGGER] = _progress_logger(progress)
        logger_config[PROGRESS_LOGGER] = {}
    definitions = dg.Definitions(assets=assets, asset_checks=checks, jobs=[dg.define_asset_job(IN_PROCESS_JOB)],
                                 resources=resources, loggers=loggers)
    result = definitions.resolve_job_def(IN_PROCESS_JOB).execute_in_process(
        run_config={"loggers": logger_config}, instance=instance, raise_on_error=False,
        tags=partition_range_tags(list(dataset.splits)),
    )
    failures = [event for event in result.all_events if event.is_step_failure]
    if failures:
        step = failures[0].step_key.removeprefix(f"{dataset.name}__")  # the asset's own name
        raise AuditFailed(f"step {step} failed: {_root_message(failures[0])}")
    return result


def run_audit(
    settings: AuditSettings, instance: dg.DagsterInstance | None = None, log_level: str = "INFO",
    training: TrainingSettings | None = None, splits: tuple[str, ...] = DEFAULT_SPLITS,
    progress: Callable[[str], None] | None = None,
) -> AuditOutcome:
    """Materialize every audit asset and check, then, when ``training`` is given and the leak-free
    split is clean, the training assets.

    Raises :class:`AuditFailed` if an asset failed. Leakage found is not a failure: it is in the
    report and in failed ERROR checks. Holds the output root's lock throughout, or raises
    ``OutputLocked`` naming its holder. ``progress`` receives each progress line of the run log.
    """
    from leakage_pipeline.defs.training_assets import build_training_assets

    dataset = Dataset(name=SCRIPT_DATASET, splits=splits)
    resources = {**shared_resources(), **dataset_resources(dataset, settings, training or TrainingSettings())}
    instance = instance or dg.DagsterInstance.ephemeral()
    try:
        settings.check_storage()
    except (StorageUnreachable, UnsupportedLocation, OutputUnusable) as error:
        raise AuditFailed(str(error)) from error
    with output_lock(settings.output_dir, settings.lock_wait_seconds):
        results = [_run_in_process(build_audit_assets(dataset), build_audit_checks(dataset), resources, dataset,
                                   instance, log_level, progress)]
        blocked = any(not evaluation.passed for evaluation in results[0].get_asset_check_evaluations()
                      if evaluation.check_name == leak_free_split_is_clean.__name__)
        if training is not None and not blocked:
            results.append(_run_in_process(build_training_assets(dataset), [], resources, dataset, instance,
                                           log_level, progress))
    return AuditOutcome(dataset=dataset, files=OutputFiles(settings.output_dir), training_blocked=blocked,
                        results=tuple(results))
