"""The code location as a dg project: `dg check defs` and `dg list defs` pass, every dataset YAML
(the packaged demo and a deployment's folder) loads side by side, and what `dg scaffold defs`
writes is loaded. Runs dg on a copy of the project, so scaffolding never touches the checkout."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DG = Path(sys.executable).with_name("dg")


@pytest.fixture
def project(tmp_path):
    copy = tmp_path / "project"
    copy.mkdir()
    shutil.copy(ROOT / "pyproject.toml", copy)
    shutil.copytree(ROOT / "leakage_pipeline", copy / "leakage_pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    (datasets / "chest.yaml").write_text(
        "name: chest\nsplits: [train, test]\naudit:\n  manifest_path: {env: CHEST_MANIFEST}\n"
        "  output_dir: gs://team/audits/chest\n")
    env = {**os.environ, "PYTHONPATH": str(copy), "VIRTUAL_ENV": str(Path(sys.executable).parents[1]),
           "LEAKAGE_DATASETS_DIR": str(datasets), "DAGSTER_HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    return copy, env


def _dg(project, *args) -> str:
    copy, env = project
    done = subprocess.run([str(DG), *args], cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_dg_checks_lists_and_loads_scaffolded_defs_beside_every_dataset(project):
    _dg(project, "scaffold", "defs", "dagster.asset", "scaffolded_probe.py")
    assert (project[0] / "leakage_pipeline" / "defs" / "scaffolded_probe.py").exists()
    _dg(project, "check", "defs")
    listed = json.loads(_dg(project, "list", "defs", "--json"))
    assets = {asset["asset_key"] for asset in listed["assets"]}
    assert {"demo/manifest", "demo/leakage_report", "chest/image_hashes", "chest/leakage_report",
            "scaffolded_probe"} <= assets
    assert {"demo_audit", "chest_audit", "chest_training"} <= {job["name"] for job in listed["jobs"]}
    assert {"demo_new_data", "chest_new_data"} <= {sensor["name"] for sensor in listed["sensors"]}
