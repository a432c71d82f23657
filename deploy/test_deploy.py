"""The real deployment test (`make test-deploy`): the stack of deploy/ as separate processes on 127.0.0.1.

PostgreSQL (run as an unprivileged user), gcp-storage-emulator, `dagster code-server start`,
`dagster-webserver` and `dagster-daemon`, with deploy/dagster.yaml and deploy/workspace.yaml as
they are. The pipeline is driven only through the webserver's GraphQL API; Postgres is read with
SQL and the bucket with the storage client. Every process is stopped by its PID, whatever fails.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import psycopg2
import pytest
import requests
from google.cloud import storage

from leakage_pipeline.defs.step_executor import STEP_EXECUTOR_ENV
from leakage_pipeline.demo.synthetic_dataset import DemoSpec, build_demo_dataset
from leakage_pipeline_tests.conftest import free_port, write_image

# What the test knows about the pipeline, in one place: the deployment's own dataset, all in the bucket.
LOCATION = "leakage_pipeline"
REPOSITORY = "__repository__"
DATASET = "deploytest"
AUDIT_JOB = f"{DATASET}_audit"
HASH_ASSET = [DATASET, "image_hashes"]
SENSOR = f"{DATASET}_new_data"
SCHEDULE = f"{DATASET}_nightly_audit"
SPLITS = ("train", "val", "test")
LEAKED_TEST_IMAGES_CHECK = "no_test_image_leaked"
BUCKET = "scans"
LOGS_BUCKET = "dagster-logs"
MANIFEST_OBJECT = "data/manifest.csv"
OUTPUT_PREFIX = f"audits/{DATASET}"
REPORT_OBJECT = f"{OUTPUT_PREFIX}/report/leakage_audit.json"
NEW_IMAGES = 4


def write_dataset_yaml(folder: Path) -> dict[str, str]:
    """The deployment's dataset (manifest, images and outputs in the bucket) and the settings that load it."""
    folder.mkdir()
    (folder / f"{DATASET}.yaml").write_text(
        f"name: {DATASET}\nsplits: [{', '.join(SPLITS)}]\nnew_data_interval_seconds: 5\n"
        f"audit:\n  manifest_path: gs://{BUCKET}/{MANIFEST_OBJECT}\n  output_dir: gs://{BUCKET}/{OUTPUT_PREFIX}\n")
    return {"LEAKAGE_DATASETS_DIR": str(folder), "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}


def audit_run_tags() -> dict[str, str]:
    """One audit run over every split partition, as the schedule and sensor request it."""
    return {"dagster/asset_partition_range_start": SPLITS[0], "dagster/asset_partition_range_end": SPLITS[-1]}


DEPLOY = Path(__file__).resolve().parent
REPO = DEPLOY.parent
BIN = Path(sys.executable).parent
POSTGRES_USER = "nobody"  # postgres refuses to run as root
DEMO = DemoSpec(patients=40, images_per_patient=(2, 4), seed=5, scale=0.4)


def wait_for(what: str, probe, timeout: float, interval: float = 0.5):
    """Call ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            result = probe()
            if result:
                return result
        except Exception as error:  # a server still starting refuses connections
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_error!r})")


@dataclass
class Processes:
    """Started processes, each the leader of its own process group, stopped by PID in reverse order."""

    log_dir: Path
    started: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, command: list[str], env: dict[str, str], **options) -> subprocess.Popen:
        log = (self.log_dir / f"{name}.log").open("ab")
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                   start_new_session=True, **options)
        self.started[name] = process
        return process

    def kill(self, name: str) -> None:
        """SIGKILL the process and every process under it, as its container going down would (run
        workers leave the process group, so they are found by parent PID)."""
        process = self.started.pop(name)
        tree = descendants(process.pid)
        os.killpg(process.pid, signal.SIGKILL)
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        process.wait(timeout=10)

    def stop_all(self) -> None:
        for process in reversed(list(self.started.values())):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=10)
        self.started.clear()

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.log_dir / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid``, from the parent PIDs in /proc."""
    parents = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        parents[int(Path(stat).parent.name)] = int(fields[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def is_running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie waiting for its parent to reap it is not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def postgres_bin(program: str) -> str:
    """Debian keeps the server programs under /usr/lib/postgresql/VERSION/bin, off the PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"), key=lambda p: int(Path(p).parts[4]))
    assert found, f"PostgreSQL's {program} is not installed: `make test-deploy` installs Debian's postgresql"
    return found[-1]


@dataclass
class Stack:
    processes: Processes
    env: dict[str, str]
    graphql_url: str
    bucket: storage.Bucket
    manifest: Path  # the local copy of the bucket's manifest
    postgres_dsn: str
    code_server_command: list[str]

    def gql(self, query: str, **variables) -> dict:
        response = requests.post(self.graphql_url, json={"query": query, "variables": variables}, timeout=60)
        assert response.ok, f"GraphQL answered {response.status_code}: {response.text[:2000]}"
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]

    def sql(self, statement: str, *params) -> list[tuple]:
        connection = psycopg2.connect(self.postgres_dsn)
        try:
            with connection.cursor() as cursor:
                cursor.execute(statement, params)
                return cursor.fetchall()
        finally:
            connection.close()

    def start_code_server(self) -> None:
        self.processes.start("code-server", self.code_server_command, self.env)
        wait_for("the code location to load", self.location_loaded, 120)

    def location_loaded(self) -> bool:
        assert self.processes.started["code-server"].poll() is None, (
            "the code server exited:\n" + self.processes.log_tail("code-server"))
        entries = self.gql(LOCATION_STATUS)["workspaceOrError"]["locationEntries"]
        entry = next(e for e in entries if e["name"] == LOCATION)
        if entry["locationOrLoadError"] and entry["locationOrLoadError"]["__typename"] == "PythonError":
            self.gql(RELOAD_LOCATION, name=LOCATION)  # the webserver saw the server down: ask it to look again
            return False
        return entry["loadStatus"] == "LOADED" and entry["locationOrLoadError"]["__typename"] == "RepositoryLocation"


LOCATION_STATUS = """
query { workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename } } } } }"""
RELOAD_LOCATION = """
mutation($name: String!) { reloadRepositoryLocation(repositoryLocationName: $name) { __typename } }"""
LAUNCH_RUN = """
mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message }
  ... on RunConfigValidationInvalid { errors { message } } } }"""
RUN = """
query($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { runId status tags { key value } } } }"""
RUNS_TAGGED = """
query($key: String!, $value: String!) { runsOrError(filter: {tags: [{key: $key, value: $value}]}) {
  ... on Runs { results { runId status } } } }"""
RUN_EVENTS = """
query($runId: ID!, $cursor: String) { logsForRun(runId: $runId, afterCursor: $cursor) {
  __typename ... on EventConnection { cursor hasMore events {
    __typename ... on MessageEvent { message }
    ... on MaterializationEvent { assetKey { path } partition metadataEntries {
      label ... on IntMetadataEntry { intValue } ... on TextMetadataEntry { text } } } } } } }"""
START_SENSOR = """
mutation($selector: SensorSelector!) { startSensor(sensorSelector: $selector) {
  __typename ... on Sensor { sensorState { status } } ... on Error { message } } }"""
LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }"""
BACKFILL = """
query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename ... on PartitionBackfill { status } } }"""
SCHEDULE_DRY_RUN = """
mutation($selector: ScheduleSelector!, $timestamp: Float) { scheduleDryRun(selectorData: $selector, timestamp: $timestamp) {
  __typename ... on DryRunInstigationTick { timestamp evaluationResult {
    runRequests { runKey tags { key value } } skipReason error { message } } } ... on Error { message } } }"""
SCHEDULE_TICKS = """
query($selector: ScheduleSelector!) { scheduleOrError(scheduleSelector: $selector) {
  __typename ... on Schedule { cronSchedule executionTimezone futureTicks(limit: 1) { results { timestamp } } }
  ... on Error { message } } }"""

FINISHED = {"SUCCESS", "FAILURE", "CANCELED"}


def tags(pairs: dict[str, str]) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in pairs.items()]


def launch_audit(stack: Stack) -> str:
    params = {"selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "jobName": AUDIT_JOB},
              "runConfigData": {}, "executionMetadata": {"tags": tags(audit_run_tags())}}
    launched = stack.gql(LAUNCH_RUN, params=params)["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def run_status(stack: Stack, run_id: str) -> str:
    return stack.gql(RUN, runId=run_id)["runOrError"]["status"]


def wait_for_run(stack: Stack, run_id: str, timeout: float = 150) -> str:
    status = wait_for(f"run {run_id} to finish", lambda: (s := run_status(stack, run_id)) in FINISHED and s, timeout)
    return status


def run_events(stack: Stack, run_id: str) -> list[dict]:
    events, cursor = [], None
    while True:
        page = stack.gql(RUN_EVENTS, runId=run_id, cursor=cursor)["logsForRun"]
        events += page["events"]
        cursor = page["cursor"]
        if not page["hasMore"]:
            return events


def hashed_and_reused(stack: Stack, run_id: str) -> dict[str, tuple[int, int]]:
    """Each hash partition the run materialized: how many images it hashed and how many it reused."""
    partitions = {}
    for event in run_events(stack, run_id):
        if event["__typename"] == "MaterializationEvent" and event["assetKey"]["path"] == HASH_ASSET:
            metadata = {entry["label"]: entry.get("intValue") for entry in event["metadataEntries"]}
            partitions[event["partition"]] = (metadata["hashed"], metadata["reused"])
    return partitions


def wait_for_sensor_runs(stack: Stack, count: int) -> list[dict]:
    """The sensor's runs, newest first, once there are ``count``."""
    return wait_for(f"the sensor's run number {count}", lambda: (runs := stack.gql(
        RUNS_TAGGED, key="dagster/sensor_name", value=SENSOR)["runsOrError"]["results"]) and len(runs) >= count
        and runs, 120)


def assert_succeeded(stack: Stack, run_id: str, timeout: float = 150) -> None:
    status = wait_for_run(stack, run_id, timeout)
    assert status == "SUCCESS", (f"run {run_id} ended {status}:\n"
                                 + "\n".join(e.get("message") or "" for e in run_events(stack, run_id)[-15:])
                                 + "\n--- code server ---\n" + stack.processes.log_tail("code-server"))


def upload(bucket: storage.Bucket, root: Path, paths: list[Path]) -> None:
    """Files under ``root`` into the manifest's folder of the bucket, at the same relative paths."""
    for path in paths:
        bucket.blob(f"{Path(MANIFEST_OBJECT).parent}/{path.relative_to(root).as_posix()}").upload_from_filename(
            str(path))


def report(stack: Stack) -> bytes:
    return stack.bucket.blob(REPORT_OBJECT).download_as_bytes()


def add_test_images(stack: Stack, dataset_root: Path) -> int:
    """A new test patient's images: uploaded to the bucket and appended to the manifest."""
    paths = [write_image(dataset_root / "images" / f"new_patient_{i}.png", 9000 + i) for i in range(NEW_IMAGES)]
    manifest = pl.read_csv(stack.manifest, infer_schema=False)
    added = pl.DataFrame([{"image_uri": p.relative_to(dataset_root).as_posix(), "patient_id": "new_patient",
                           "label": manifest["label"][0], "split": SPLITS[-1]} for p in paths])
    pl.concat([manifest, added], how="diagonal").write_csv(stack.manifest)
    upload(stack.bucket, dataset_root, [*paths, stack.manifest])
    return len(paths)


def start_postgres(processes: Processes, work: Path) -> str:
    """initdb into a fresh directory owned by an unprivileged user, loopback only, password required."""
    data = Path(tempfile.mkdtemp(prefix="leakage-deploy-pg-"))  # under /tmp: the server's user must reach it
    password = "deploy-test-" + os.urandom(6).hex()
    password_file = data / "password"
    password_file.write_text(password)
    shutil.chown(data, POSTGRES_USER)
    shutil.chown(password_file, POSTGRES_USER)
    cluster = data / "cluster"
    as_user = ["runuser", "-u", POSTGRES_USER, "--"]
    subprocess.run([*as_user, postgres_bin("initdb"), "-D", str(cluster), "-U", "dagster", f"--pwfile={password_file}",
                    "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", "--no-sync"],
                   check=True, capture_output=True, cwd=data)
    port = free_port()
    processes.start("postgres", [*as_user, postgres_bin("postgres"), "-D", str(cluster), "-p", str(port),
                                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data}",
                                 "-c", "fsync=off"], dict(os.environ))
    dsn = f"host=127.0.0.1 port={port} user=dagster password={password} dbname=postgres"
    connection = wait_for("PostgreSQL to accept connections", lambda: psycopg2.connect(dsn, connect_timeout=2), 60)
    connection.autocommit = True
    with connection.cursor() as cursor:
        cursor.execute("CREATE DATABASE dagster")
    connection.close()
    (work / "postgres-data-dir").write_text(str(data))  # removed at teardown
    return f"host=127.0.0.1 port={port} user=dagster password={password} dbname=dagster"


@pytest.fixture
def stack(tmp_path) -> Iterator[Stack]:
    processes = Processes(tmp_path)
    try:
        yield _start_stack(processes, tmp_path)
    finally:
        processes.stop_all()
        data_dir = tmp_path / "postgres-data-dir"
        if data_dir.exists():
            shutil.rmtree(data_dir.read_text(), ignore_errors=True)
        for name in ("code-server", "webserver", "daemon"):
            print(f"--- {name} (last lines) ---\n{processes.log_tail(name, 15)}")


def _start_stack(processes: Processes, work: Path) -> Stack:
    started = time.monotonic()
    dsn = start_postgres(processes, work)
    postgres = dict(item.split("=", 1) for item in dsn.split())

    gcs_port = free_port()
    # Enforcing generation preconditions as GCS does: the steps of a run share the output lock through them.
    processes.start("gcs-emulator", [sys.executable, "-m", "leakage_pipeline_tests.gcs_emulator", "--port",
                                     str(gcs_port), "--default-bucket", BUCKET], dict(os.environ))
    emulator = f"http://127.0.0.1:{gcs_port}"
    wait_for("the GCS emulator", lambda: requests.get(emulator, timeout=2), 30)
    os.environ["STORAGE_EMULATOR_HOST"] = emulator  # this process's own client, for uploads and checks
    client = storage.Client()
    client.create_bucket(LOGS_BUCKET)

    dataset_root = work / "dataset"
    manifest = build_demo_dataset(dataset_root, DEMO)
    upload(client.bucket(BUCKET), dataset_root, [*sorted((dataset_root / "images").iterdir()), manifest])

    dagster_home = work / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").symlink_to(DEPLOY / "dagster.yaml")
    code_server_port, webserver_port = free_port(), free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "DAGSTER_POSTGRES_HOST": postgres["host"], "DAGSTER_POSTGRES_PORT": postgres["port"],
        "DAGSTER_POSTGRES_USER": postgres["user"], "DAGSTER_POSTGRES_PASSWORD": postgres["password"],
        "DAGSTER_POSTGRES_DB": postgres["dbname"],
        "DAGSTER_COMPUTE_LOGS_BUCKET": LOGS_BUCKET,
        "DAGSTER_CODE_SERVER_HOST": "127.0.0.1", "DAGSTER_CODE_SERVER_PORT": str(code_server_port),
        "STORAGE_EMULATOR_HOST": emulator,
        # A process per step, as the Helm values' k8s_job_executor runs a pod per step.
        STEP_EXECUTOR_ENV: "multiprocess",
        **write_dataset_yaml(work / "datasets"),
    }
    workspace = str(DEPLOY / "workspace.yaml")
    stack = Stack(
        processes=processes, env=env, graphql_url=f"http://127.0.0.1:{webserver_port}/graphql",
        bucket=client.bucket(BUCKET), manifest=manifest, postgres_dsn=dsn,
        # The image's entry point (deploy/Dockerfile), on a loopback port.
        code_server_command=[str(BIN / "dagster"), "code-server", "start", "-h", "127.0.0.1",
                             "-p", str(code_server_port), "-m", "leakage_pipeline.definitions",
                             "--location-name", LOCATION],
    )
    processes.start("webserver", [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(webserver_port),
                                  "-w", workspace], env)
    processes.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", workspace], env)
    wait_for("the webserver", lambda: requests.get(f"http://127.0.0.1:{webserver_port}/server_info", timeout=2).ok, 90)
    stack.start_code_server()
    print(f"stack up in {time.monotonic() - started:.0f} s")
    return stack


def test_the_deployed_stack(stack: Stack):
    step_started = time.monotonic()

    def step(name: str) -> None:
        nonlocal step_started
        print(f"{name}: {time.monotonic() - step_started:.1f} s")
        step_started = time.monotonic()

    # 1. The audit job, launched through GraphQL, queued and launched by the daemon.
    first = launch_audit(stack)
    assert_succeeded(stack, first)
    per_split = dict(pl.read_csv(stack.manifest, infer_schema=False).group_by("split").len().iter_rows())
    assert hashed_and_reused(stack, first) == {split: (per_split[split], 0) for split in SPLITS}
    assert json.loads(report(stack))["verdict"]["leaked_test_images"] > 0  # the demo's planted leaks
    outputs = {blob.name for blob in stack.bucket.list_blobs(prefix=OUTPUT_PREFIX + "/")}
    assert {f"{OUTPUT_PREFIX}/manifest.parquet", f"{OUTPUT_PREFIX}/near_duplicate_pairs.parquet"} <= outputs
    # In Postgres: the run, its events, the check results, and the step logs in the bucket.
    assert stack.sql("SELECT status FROM runs WHERE run_id = %s", first) == [("SUCCESS",)]
    event_types = {row[0] for row in stack.sql("SELECT DISTINCT dagster_event_type FROM event_logs WHERE run_id = %s",
                                               first)}
    assert {"STEP_SUCCESS", "ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION"} <= event_types
    checks = dict(stack.sql("SELECT check_name, execution_status FROM asset_check_executions WHERE run_id = %s",
                            first))
    assert checks[LEAKED_TEST_IMAGES_CHECK] == "FAILED"  # a finding, in a successful run
    assert list(stack.bucket.client.list_blobs(LOGS_BUCKET, prefix="dagster-compute-logs/")), "no step logs in GCS"
    step("audit run")

    # 2. The daemon's sensor: its first tick records every split (one run, nothing to hash); after new
    # test images, its next tick starts a run of the test partition alone that hashes only them.
    selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": SENSOR}
    started = stack.gql(START_SENSOR, selector=selector)["startSensor"]
    assert started["__typename"] == "Sensor" and started["sensorState"]["status"] == "RUNNING", started
    first_tick = wait_for_sensor_runs(stack, 1)[0]["runId"]
    assert_succeeded(stack, first_tick)
    assert hashed_and_reused(stack, first_tick) == {split: (0, per_split[split]) for split in SPLITS}
    added = add_test_images(stack, stack.manifest.parent)
    new_data = wait_for_sensor_runs(stack, 2)[0]["runId"]
    assert_succeeded(stack, new_data)
    assert hashed_and_reused(stack, new_data) == {SPLITS[-1]: (added, per_split[SPLITS[-1]])}
    step("sensor runs")

    # 3. A backfill of one partition, run by the daemon: it hashes nothing new and touches only that split.
    params = {"assetSelection": [{"path": HASH_ASSET}], "partitionNames": [SPLITS[0]], "fromFailure": False}
    backfill = stack.gql(LAUNCH_BACKFILL, params=params)["launchPartitionBackfill"]
    assert backfill["__typename"] == "LaunchBackfillSuccess", backfill
    status = wait_for("the backfill", lambda: (s := stack.gql(BACKFILL, id=backfill["backfillId"])[
        "partitionBackfillOrError"]["status"]) not in ("REQUESTED",) and s, 150)
    assert status == "COMPLETED_SUCCESS", status
    backfill_runs = stack.gql(RUNS_TAGGED, key="dagster/backfill", value=backfill["backfillId"])["runsOrError"]["results"]
    assert [run["status"] for run in backfill_runs] == ["SUCCESS"]
    assert hashed_and_reused(stack, backfill_runs[0]["runId"]) == {SPLITS[0]: (0, per_split[SPLITS[0]])}
    step("backfill")

    # 4. The nightly schedule's next tick, evaluated by the code server: one audit over every split.
    schedule_selector = {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "scheduleName": SCHEDULE}
    schedule = stack.gql(SCHEDULE_TICKS, selector=schedule_selector)["scheduleOrError"]
    assert schedule["__typename"] == "Schedule", schedule
    next_tick = schedule["futureTicks"]["results"][0]["timestamp"]
    assert datetime.fromtimestamp(next_tick, UTC).strftime("%H:%M") == "02:00"
    assert next_tick - time.time() <= timedelta(days=1).total_seconds()
    tick = stack.gql(SCHEDULE_DRY_RUN, selector=schedule_selector, timestamp=next_tick)["scheduleDryRun"]
    assert tick["__typename"] == "DryRunInstigationTick", tick
    requests_made = tick["evaluationResult"]["runRequests"]
    assert len(requests_made) == 1 and not tick["evaluationResult"]["error"]
    assert {t["key"]: t["value"] for t in requests_made[0]["tags"]}.items() >= audit_run_tags().items()
    step("schedule tick")

    # 5. The code server dies while a run's worker is starting: the run is marked failed, the daemon
    # retries it on the restarted server, and the retry succeeds with the same report.
    report_before = report(stack)
    doomed = launch_audit(stack)
    worker_started = wait_for("the run worker to start", lambda: next(
        (e["message"] for e in run_events(stack, doomed) if (e.get("message") or "").startswith("Started process")),
        None), 90, interval=0.1)
    worker_pid = int(worker_started.split("pid: ")[1].rstrip(")."))
    assert run_status(stack, doomed) == "STARTING"  # still loading the code: killed mid-start
    assert worker_pid in descendants(stack.processes.started["code-server"].pid)
    stack.processes.kill("code-server")
    wait_for("the run worker to die", lambda: not is_running(worker_pid), 10, interval=0.1)
    stack.start_code_server()
    assert wait_for_run(stack, doomed, 120) == "FAILURE"
    try:
        retries = wait_for("the automatic retry", lambda: stack.gql(
            RUNS_TAGGED, key="dagster/parent_run_id", value=doomed)["runsOrError"]["results"], 120)
    except AssertionError as error:  # say how the run ended: the daemon retries only some failures
        events = [f"{e['__typename']}: {e.get('message') or ''}" for e in run_events(stack, doomed)]
        raise AssertionError(f"{error}; the failed run's last events: {events[-4:]}") from None
    assert_succeeded(stack, retries[0]["runId"])
    assert all(hashed == 0 for hashed, _ in hashed_and_reused(stack, retries[0]["runId"]).values())
    assert json.loads(report(stack))["verdict"] == json.loads(report_before)["verdict"]  # nothing lost
    step("killed code server, retry")
