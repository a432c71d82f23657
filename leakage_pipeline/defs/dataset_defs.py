"""Everything one dataset is in Dagster: its assets, checks, jobs, schedules and sensor."""

from __future__ import annotations

import os

import dagster as dg

from leakage_pipeline.defs.assets import build_audit_assets
from leakage_pipeline.defs.automation import build_jobs, build_new_data_sensor, build_schedules
from leakage_pipeline.defs.checks import build_audit_checks
from leakage_pipeline.defs.dataset import Dataset
from leakage_pipeline.defs.dataset_step import AUDIT, GCS, PIPES_CLIENT, PIPES_K8S_CLIENT, TRAINING, TRAINING_POD
from leakage_pipeline.defs.settings import AuditSettings, GcsStorage, TrainingSettings
from leakage_pipeline.defs.training_pod import pipes_k8s_client

PROJECT_VARIABLE = "GOOGLE_CLOUD_PROJECT"


def build_dataset_defs(
    dataset: Dataset, audit: AuditSettings | None = None, training: TrainingSettings | None = None,
) -> dg.Definitions:
    """The dataset's definitions, with its resources from its YAML unless ``audit`` / ``training`` are given."""
    from leakage_pipeline.defs.label_issue_assets import build_label_issue_assets
    from leakage_pipeline.defs.training_assets import build_training_assets

    audit_assets = build_audit_assets(dataset)
    training_assets = build_training_assets(dataset)
    if dataset.training_settings().label_issues:
        training_assets += build_label_issue_assets(dataset)
    audit_job, training_job = build_jobs(dataset, audit_assets, training_assets)
    return dg.Definitions(
        assets=[*audit_assets, *training_assets],
        asset_checks=build_audit_checks(dataset),
        jobs=[audit_job, training_job],
        schedules=build_schedules(dataset, audit_job),
        sensors=[build_new_data_sensor(dataset, audit_job)],
        resources=dataset_resources(dataset, audit or dataset.audit_settings(),
                                    training or dataset.training_settings()),
    )


def dataset_resources(dataset: Dataset, audit: AuditSettings, training: TrainingSettings) -> dict:
    resources = {dataset.resource_key(AUDIT): audit, dataset.resource_key(TRAINING): training}
    if dataset.training_pod is not None:
        resources[dataset.resource_key(TRAINING_POD)] = dataset.training_pod_settings()
    return resources


def shared_resources(training_pods: bool = False) -> dict:
    """Resources every dataset shares: GCS and Dagster Pipes (and, when a dataset trains in
    Kubernetes pods, dagster-k8s's Pipes client). The GCS project is the deployment's
    ``GOOGLE_CLOUD_PROJECT`` when it sets one (read at run time), else the credentials' own."""
    project = dg.EnvVar(PROJECT_VARIABLE) if os.environ.get(PROJECT_VARIABLE) else None
    resources = {GCS: GcsStorage(project=project), PIPES_CLIENT: dg.PipesSubprocessClient()}
    if training_pods:
        resources[PIPES_K8S_CLIENT] = pipes_k8s_client()
    return resources
