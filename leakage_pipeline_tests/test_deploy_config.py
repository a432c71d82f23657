"""deploy/'s files, checked by what runs here (no Docker daemon, no cluster, no Postgres: those are
`make test-deploy`): they parse, Dagster's own schemas accept them, and they agree with each other."""

import json
import re
import shutil
from pathlib import Path

import dagster as dg
import jsonschema
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config
from dagster._core.workspace.config_schema import ensure_workspace_config
from dagster._serdes.config_class import ConfigurableClassData
from dagster_gcp.gcs.compute_log_manager import GCSComputeLogManager
from dagster_k8s import K8sRunLauncher, k8s_job_executor

from leakage_pipeline.definitions import defs
from leakage_pipeline.defs.automation import DATASET_RUN_TAG, GPU_RUN_TAG
from leakage_pipeline.defs.dataset import Dataset
from leakage_pipeline.defs.step_executor import STEP_EXECUTOR_ENV

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
INSTANCE_ENV = {
    "DAGSTER_POSTGRES_HOST": "127.0.0.1", "DAGSTER_POSTGRES_PORT": "5432", "DAGSTER_POSTGRES_USER": "dagster",
    "DAGSTER_POSTGRES_PASSWORD": "not-a-secret", "DAGSTER_POSTGRES_DB": "dagster",
    "DAGSTER_COMPUTE_LOGS_BUCKET": "logs", "DAGSTER_CODE_SERVER_HOST": "127.0.0.1", "DAGSTER_CODE_SERVER_PORT": "4000",
}


def load(name: str):
    return yaml.safe_load((DEPLOY / name).read_text())


@pytest.fixture
def instance_env(monkeypatch):
    for key, value in INSTANCE_ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture
def instance_config(instance_env, tmp_path) -> dict:
    """deploy/dagster.yaml validated by Dagster's instance schema, as a DAGSTER_HOME would load it."""
    shutil.copy(DEPLOY / "dagster.yaml", tmp_path / "dagster.yaml")
    config, _ = dagster_instance_config(str(tmp_path))
    return config


def build(section: dict):
    """The instance part a dagster.yaml section names, built as the instance builds it (env vars resolved)."""
    return ConfigurableClassData(section["module"], section["class"], yaml.safe_dump(section.get("config", {}))).rehydrate(
        object)


def helm_values() -> dict:
    return load("helm/values.yaml")


@pytest.mark.parametrize("name", ["dagster.yaml", "workspace.yaml", "docker-compose.yml", "helm/values.yaml",
                                  "datasets/example.yaml"])
def test_every_yaml_parses_to_a_mapping(name):
    assert isinstance(load(name), dict)


def test_the_compose_dataset_is_a_valid_dataset():
    dataset = Dataset.model_validate(load("datasets/example.yaml"))
    assert dataset.audit_settings().output_dir.startswith("gs://")


def test_the_instance_config_builds_its_coordinator_and_log_manager(instance_config):
    # Storage needs a live Postgres to construct (it creates its tables): `make test-deploy` does that.
    assert instance_config["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert build(instance_config["run_coordinator"]).get_run_queue_config() is not None
    limits = {limit["key"]: limit["limit"] for limit in instance_config["concurrency"]["runs"]["tag_concurrency_limits"]}
    assert limits == {GPU_RUN_TAG: 2, DATASET_RUN_TAG: 1}
    # Each dataset's steps are in its own pool, counted per run: its runs queue instead of colliding.
    assert instance_config["concurrency"]["pools"] == {"granularity": "run", "default_limit": 1}
    assert {op.pool for job in ("demo_audit", "demo_training") for op in defs().resolve_job_def(job).graph.iterate_op_defs()} == {
        "leakage_pipeline/demo"}
    assert defs().resolve_job_def("demo_training").tags[GPU_RUN_TAG]  # the limit applies to training runs
    assert {defs().resolve_job_def(job).tags[DATASET_RUN_TAG] for job in ("demo_audit", "demo_training")} == {"demo"}
    # The log manager checks its bucket when built (`make test-deploy` builds it against the emulator).
    logs = instance_config["compute_logs"]
    assert (logs["module"], logs["class"]) == (GCSComputeLogManager.__module__, GCSComputeLogManager.__name__)
    result = process_config(GCSComputeLogManager.config_type(), logs["config"])
    assert result.success, result.errors
    assert instance_config["run_retries"]["retry_on_asset_or_op_failure"] is False


def test_a_missing_secret_is_refused_before_connecting(instance_config, monkeypatch):
    monkeypatch.delenv("DAGSTER_POSTGRES_PASSWORD")
    storage = {"module": "dagster_postgres", "class": "DagsterPostgresStorage",
               "config": instance_config["storage"]["postgres"]}
    with pytest.raises(dg.DagsterInvalidConfigError, match="DAGSTER_POSTGRES_PASSWORD"):
        build(storage)


def test_no_secret_is_written_in_the_repository():
    instance = (DEPLOY / "dagster.yaml").read_text()
    assert "password: {env: DAGSTER_POSTGRES_PASSWORD}" in instance
    values = helm_values()
    assert values["generatePostgresqlPasswordSecret"] is False and "postgresqlPassword" not in values["postgresql"]
    compose = load("docker-compose.yml")
    assert compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${DAGSTER_POSTGRES_PASSWORD:?")


def test_the_workspace_points_at_the_grpc_code_server(instance_env):
    workspace = ensure_workspace_config(load("workspace.yaml"), str(DEPLOY / "workspace.yaml"))
    (target,) = workspace["load_from"]
    assert target["grpc_server"]["location_name"] == "leakage_pipeline"


def test_helm_values_repeat_the_instance_choices(instance_config):
    daemon = helm_values()["dagsterDaemon"]
    assert daemon["runCoordinator"]["type"] == instance_config["run_coordinator"]["class"]
    concurrency, run_queue = helm_values()["concurrency"], instance_config["concurrency"]
    assert concurrency["runs"]["maxConcurrentRuns"] == run_queue["runs"]["max_concurrent_runs"]
    assert concurrency["runs"]["tagConcurrencyLimits"] == run_queue["runs"]["tag_concurrency_limits"]
    assert (concurrency["pools"]["granularity"], concurrency["pools"]["defaultLimit"]) == (
        run_queue["pools"]["granularity"], run_queue["pools"]["default_limit"])
    retries = instance_config["run_retries"]
    assert (daemon["runRetries"]["maxRetries"], daemon["runRetries"]["retryOnAssetOrOpFailure"]) == (
        retries["max_retries"], retries["retry_on_asset_or_op_failure"])
    logs = helm_values()["computeLogManager"]
    assert logs["type"] == instance_config["compute_logs"]["class"]
    assert logs["config"]["gcsComputeLogManager"]["prefix"] == instance_config["compute_logs"]["config"]["prefix"]
    assert helm_values()["postgresql"]["postgresqlScheme"] == instance_config["storage"]["postgres"]["postgres_db"][
        "scheme"]


def test_the_k8s_run_launcher_accepts_the_helm_values():
    """The chart renders runLauncher.config.k8sRunLauncher into K8sRunLauncher's config; its schema accepts it."""
    launcher = helm_values()["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    values = launcher["config"]["k8sRunLauncher"]
    rendered = {
        "instance_config_map": "leakage-dagster-instance", "load_incluster_config": values["loadInclusterConfig"],
        "env_secrets": values["envSecrets"],
        "run_k8s_config": {"container_config": values["runK8sConfig"]["containerConfig"]},
    }
    result = process_config(K8sRunLauncher.config_type(), rendered)
    assert result.success, result.errors


def test_every_entry_point_starts_the_same_code_location():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    command = yaml.safe_load(re.search(r"^CMD (\[.*?\])$", dockerfile, re.M | re.S).group(1).replace("\\\n", ""))
    (deployment,) = helm_values()["dagster-user-deployments"]["deployments"]
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[-len(deployment["codeServerArgs"]):] == deployment["codeServerArgs"]
    assert "USER dagster" in dockerfile and "ARG TORCH_VARIANT=cpu" in dockerfile


def test_docker_compose_file_follows_the_compose_specification():
    """`docker compose config` needs a Docker client, which no Debian package of this release ships in a version
    that reads today's compose files; the Compose Specification's own JSON schema (deploy/compose-spec.json, from
    compose-spec/compose-spec) is what it validates against."""
    schema = json.loads((DEPLOY / "compose-spec.json").read_text())
    compose = load("docker-compose.yml")
    jsonschema.validate(compose, schema)
    misspelt = {**compose, "services": {**compose["services"], "webserver": {**compose["services"]["webserver"], "imagee": "x"}}}
    with pytest.raises(jsonschema.ValidationError, match="imagee"):
        jsonschema.validate(misspelt, schema)


def test_under_the_helm_values_each_step_is_a_kubernetes_job(monkeypatch):
    """The chart's code server sets LEAKAGE_STEP_EXECUTOR=k8s: every job then runs a Kubernetes Job per step,
    and the executor's schema accepts the run config deploy/README.md documents for sizing step pods."""
    (deployment,) = helm_values()["dagster-user-deployments"]["deployments"]
    monkeypatch.setenv(STEP_EXECUTOR_ENV, {e["name"]: e["value"] for e in deployment["env"]}[STEP_EXECUTOR_ENV])
    definitions = defs()
    for job in ("demo_audit", "demo_training"):
        assert definitions.resolve_job_def(job).executor_def is k8s_job_executor
    documented = yaml.safe_load(re.search(r"```yaml\n(execution:.*?)```", (DEPLOY / "README.md").read_text(),
                                          re.S).group(1))
    result = process_config(k8s_job_executor.config_schema.config_type, documented["execution"]["config"])
    assert result.success, result.errors
