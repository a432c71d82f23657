"""One audited dataset, described by a small YAML file: its name, splits and settings.

Each dataset becomes its own assets, checks, jobs, schedules and sensor, keyed by its name
(see :mod:`leakage_pipeline.defs.dataset_defs`), so one deployment audits several datasets side
by side. The YAML files in ``defs/datasets/`` are loaded, and those in the folder that
``LEAKAGE_DATASETS_DIR`` names, where a deployment keeps its own. A setting's value may be
``{env: NAME}``: Dagster reads the environment variable ``NAME`` when a run starts (a
``dg.EnvVar``, shown as such in the UI), or ``{env: NAME, default: value}``, which takes the
default when the variable is not set where the definitions load::

    name: chest_xray
    splits: [train, val, test]      # earliest to latest; the last one is the test split
    audit:
      manifest_path: {env: CXR_MANIFEST}        # a local path or gs://bucket/path
      output_dir: gs://team-bucket/leakage/chest_xray
    training:
      image_size: 128
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import dagster as dg
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from leakage_pipeline.defs.settings import AuditSettings, TrainingSettings
from leakage_pipeline.defs.training_pod import TrainingPod

DATASETS_DIR = Path(__file__).parent / "datasets"
DATASETS_DIR_VARIABLE = "LEAKAGE_DATASETS_DIR"
DEFAULT_SPLITS = ("train", "val", "test")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")  # a Dagster name and an asset key prefix
_SPLIT = re.compile(r"^[A-Za-z0-9_-]+$")  # a partition key that reads well in a URL and a file name


class DatasetError(ValueError):
    """A dataset description is invalid; the message names the file and the field."""


class Dataset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    splits: tuple[str, ...] = DEFAULT_SPLITS
    audit: dict[str, Any] = {}
    training: dict[str, Any] = {}
    training_pod: dict[str, Any] | None = None  # train in a Kubernetes pod (see defs/training_pod.py)
    owners: tuple[str, ...] = ()  # e-mail addresses or "team:NAME", shown on every asset of the dataset
    tags: dict[str, str] = {}  # asset tags (Dagster's key and value rules), on every asset of the dataset
    nightly_audit_cron: str = "0 2 * * *"  # UTC
    new_data_interval_seconds: int = Field(default=60, ge=1)  # how often the sensor looks for new or changed images

    @field_validator("name")
    @classmethod
    def _valid_name(cls, name: str) -> str:
        if not _NAME.match(name):
            raise ValueError(f"{name!r} must be lower case letters, digits and _, starting with a letter")
        return name

    @field_validator("splits")
    @classmethod
    def _valid_splits(cls, splits: tuple[str, ...]) -> tuple[str, ...]:
        if len(splits) < 2:
            raise ValueError(f"{list(splits)}: an audit needs at least two splits (earliest first, test last)")
        if len(set(splits)) != len(splits):
            raise ValueError(f"{list(splits)} names a split twice")
        bad = [s for s in splits if not _SPLIT.match(s)]
        if bad:
            raise ValueError(f"split names {bad} may hold only letters, digits, _ and -")
        return splits

    @field_validator("owners", "tags")
    @classmethod
    def _accepted_by_dagster(cls, value, info: ValidationInfo):
        try:  # Dagster's own rules for an asset's owners and tags, checked here, where the file is named
            dg.AssetSpec(key="dataset", **{info.field_name: list(value) if info.field_name == "owners" else value})
        except dg.DagsterInvalidDefinitionError as error:
            raise ValueError(str(error).replace(" for asset 'AssetKey(['dataset'])'", "")) from None
        return value

    @property
    def test_split(self) -> str:
        return self.splits[-1]

    @property
    def pool(self) -> str:
        """The concurrency pool of every step of the dataset: with the instance's pools at run granularity
        and a limit of 1 (deploy/dagster.yaml), its runs (audit, training, backfill) queue one after another
        instead of meeting at the output lock."""
        return f"leakage_pipeline/{self.name}"

    def resource_key(self, kind: str) -> str:
        """The key of this dataset's ``audit`` or ``training`` resource."""
        return f"{self.name}_{kind}"

    def audit_settings(self) -> AuditSettings:
        return _settings(AuditSettings, "audit", self.audit)

    def training_settings(self) -> TrainingSettings:
        return _settings(TrainingSettings, "training", self.training)

    def training_pod_settings(self) -> TrainingPod | None:
        return None if self.training_pod is None else _settings(TrainingPod, "training_pod", self.training_pod)


def _settings(model: type[dg.ConfigurableResource], section: str, values: dict[str, Any]):
    """``model`` made from one section of the YAML; a ValueError naming each wrong key of the section,
    with the keys it allows when the key is unknown."""
    try:
        return model(**_with_environment(values))
    except ValidationError as error:
        raise ValueError(describe_problems(error, model, section)) from None


def describe_problems(error: ValidationError, model: type[BaseModel] | None = None, section: str | None = None) -> str:
    """Each wrong key as ``section.key: what is wrong (got value)``; an unknown key with the keys allowed."""
    problems = []
    for problem in error.errors():
        key = ".".join(str(part) for part in (*([section] if section else []), *problem["loc"]))
        if problem["type"] == "extra_forbidden" and model is not None:
            problems.append(f"{key}: unknown key; {section or 'the top level'} allows {', '.join(model.model_fields)}")
        else:
            problems.append(f"{key}: {problem['msg'].removeprefix('Value error, ')} (got {problem['input']!r})")
    return "; ".join(problems)


def _with_environment(values: dict[str, Any]) -> dict[str, Any]:
    """``{env: NAME}`` -> ``dg.EnvVar(NAME)``; ``{env: NAME, default: v}`` -> the variable's value or ``v``."""
    resolved = {}
    for field, value in values.items():
        if isinstance(value, dict) and "env" in value:
            if "default" in value:
                value = os.environ.get(value["env"], value["default"])
            else:
                value = dg.EnvVar(value["env"])
        resolved[field] = value
    return resolved


def load_dataset(path: Path) -> Dataset:
    """The dataset described by the YAML file ``path``, validated with its settings."""
    try:
        dataset = Dataset.model_validate(yaml.safe_load(path.read_text()) or {})
    except ValidationError as error:
        raise DatasetError(f"dataset file {path}: {describe_problems(error, Dataset)}") from error
    except (yaml.YAMLError, TypeError) as error:
        raise DatasetError(f"dataset file {path}: {error}") from error
    try:
        dataset.audit_settings()
        dataset.training_settings()
        dataset.training_pod_settings()
    except (ValueError, TypeError) as error:
        raise DatasetError(f"dataset file {path}: {error}") from error
    return dataset


def dataset_files() -> list[Path]:
    """The packaged dataset YAMLs and those of the deployment's ``LEAKAGE_DATASETS_DIR``."""
    folders = [DATASETS_DIR]
    if os.environ.get(DATASETS_DIR_VARIABLE):
        folders.append(Path(os.environ[DATASETS_DIR_VARIABLE]))
    return sorted(path for folder in folders for path in folder.glob("*.y*ml"))


def load_datasets() -> list[Dataset]:
    datasets = [load_dataset(path) for path in dataset_files()]
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise DatasetError(f"two dataset files share a name: {sorted(n for n in names if names.count(n) > 1)}")
    return datasets
