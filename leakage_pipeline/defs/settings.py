"""What an audit and its training run on and where they write, as Dagster resources.

Each dataset (see :mod:`leakage_pipeline.defs.dataset`) has one of each, editable per run in the
launchpad; values a deployment supplies can be ``dg.EnvVar`` s.
"""

import os
import posixpath
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields

import dagster as dg
from dagster_gcp import GCSResource
from pydantic import ConfigDict, Field, field_validator

from leakage_pipeline.audit.image_source import check_gcs_reachable
from leakage_pipeline.audit.manifest import ColumnMapping, LocationRules
from leakage_pipeline.audit.perceptual_hash import HASH_BITS, HASH_MODE_EXACT, HASH_MODES
from leakage_pipeline.audit.report import ReportSettings
from leakage_pipeline.audit.splitting import POLICY_KEEP, SPLIT_POLICIES, SplitPlan
from leakage_pipeline.storage.files import OutputUnusable, check_writable_folder
from leakage_pipeline.storage.locations import check_location, is_gcs, location, use_gcs_client
from leakage_pipeline.storage.output_files import OutputFiles
from leakage_pipeline.storage.output_lock import output_lock
from leakage_pipeline.training.settings import ARCHITECTURES, ClassifierSettings

_CLASSIFIER_DEFAULTS = ClassifierSettings()
_REPORT_DEFAULTS = ReportSettings()
# A misspelt key (``max_radus: 4``) must fail where the settings are made, not leave the default in force.
_STRICT = ConfigDict(extra="forbid")
_DEVICE = r"auto|cpu|mps|cuda(:\d+)?"


def one_of(field: str, value: str, allowed: tuple[str, ...]) -> str:
    """``value`` when it is one of ``allowed``; else a ValueError naming the field and the allowed values.
    A ``dg.EnvVar`` passes: its value is checked when a run starts and Dagster makes the resource with it."""
    if not isinstance(value, dg.EnvVar) and value not in allowed:
        raise ValueError(f"{field}={value!r}: expected one of {', '.join(allowed)}")
    return value


class AuditSettings(dg.ConfigurableResource):
    """Inputs and knobs of one leakage audit.

    Every step that uses these settings holds the output directory's lock (see
    :mod:`leakage_pipeline.storage.output_lock`) from the moment Dagster initialises the resource for it until
    it is done, so each writing step, the training assets included, writes under it. The lock is
    taken with the run's id, so the steps of one run share it even when each runs in its own process
    or pod, while another run waits up to ``lock_wait_seconds`` and is then refused. Sensors and
    schedules read only and take no lock.
    """

    model_config = _STRICT

    manifest_path: str
    output_dir: str
    image_root: str | None = None  # relative image URIs live here; default: the manifest's folder
    columns: str = ""  # "image_uri=path,patient_id=pid,..." when the manifest's names differ
    split_policy: str = POLICY_KEEP
    split_fractions: list[float] = Field(default=[0.7, 0.15, 0.15], min_length=2)  # each split's share, summing to 1
    seed: int = Field(default=0, ge=0)
    max_radius: int = Field(default=8, ge=0, le=HASH_BITS)
    radii: list[int] = list(_REPORT_DEFAULTS.radii)  # the threshold table's radii, each 0 to 64
    hash_workers: int = Field(default=2, ge=1)
    hash_mode: str = HASH_MODE_EXACT  # or "fast": JPEGs decoded at reduced scale, hashes near the exact ones
    montage_per_reason: int = Field(default=6, ge=0)  # montage examples of each leak reason
    allow_outside_root: bool = False  # image URIs may name files outside the image root
    resolve_symlinks: bool = False  # a symlinked image and its target are one image
    verify_cache: bool = False  # re-hash every image and report cached hashes that were stale
    # Under a gs:// output root, training works on local copies of its image stores and models here
    # (default: the system's temp folder) and puts the results under the root.
    scratch_dir: str | None = None
    lock_wait_seconds: float = Field(default=30.0, ge=0)  # how long a run waits for another run on the same output directory
    same_subject: bool = True  # the same-subject stage (it also skips itself where it cannot calibrate)

    @field_validator("split_policy", mode="before")  # before: an EnvVar is still one here
    @classmethod
    def _known_policy(cls, policy: str) -> str:
        return one_of("split_policy", policy, SPLIT_POLICIES)

    @field_validator("hash_mode", mode="before")  # before: an EnvVar is still one here
    @classmethod
    def _known_hash_mode(cls, mode: str) -> str:
        return one_of("hash_mode", mode, HASH_MODES)

    @field_validator("split_fractions")
    @classmethod
    def _fractions_sum_to_one(cls, fractions: list[float]) -> list[float]:
        if min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
            raise ValueError(f"split_fractions={fractions}: each at least 0, summing to 1")
        return fractions

    @field_validator("radii")
    @classmethod
    def _radii_in_range(cls, radii: list[int]) -> list[int]:
        if not radii or not all(0 <= radius <= HASH_BITS for radius in radii):
            raise ValueError(f"radii={radii}: at least one, each from 0 to {HASH_BITS}")
        return radii

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator["AuditSettings"]:
        if context.run is None:  # a sensor or schedule evaluation: it writes nothing
            yield self
            return
        self.check_storage()
        with output_lock(self.output_dir, self.lock_wait_seconds, run_id=context.run.run_id):
            yield self

    def check_storage(self) -> None:
        """Before any work: every location is a local path or gs:// URI, and each bucket answers within
        seconds (:class:`StorageUnreachable` naming the endpoint otherwise); a local output directory can be
        written, and no file the audit writes there is its manifest (:class:`OutputUnusable` otherwise)."""
        locations = [check_location(uri) for uri in (self.manifest_path, self.output_dir, self.image_root) if uri]
        check_gcs_reachable(locations)
        check_writable_folder(self.output_dir)
        if OutputFiles(self.output_dir).writes_over(location(self.manifest_path)):
            raise OutputUnusable(f"the manifest {self.manifest_path} is where the audit writes its own files under "
                                 f"{self.output_dir}; keep it outside, or choose another output directory")

    def column_mapping(self) -> ColumnMapping:
        return ColumnMapping.parse(self.columns)

    def resolved_image_root(self) -> str:
        if self.image_root:
            return self.image_root
        if is_gcs(self.manifest_path):
            return posixpath.dirname(self.manifest_path)
        # abspath, not resolve(): symlinks are followed only when resolve_symlinks asks for it
        return os.path.dirname(os.path.abspath(self.manifest_path))

    def location_rules(self) -> LocationRules:
        return LocationRules(image_root=self.resolved_image_root(), allow_outside_root=self.allow_outside_root,
                             resolve_symlinks=self.resolve_symlinks)

    def split_plan(self, split_names: tuple[str, ...]) -> SplitPlan:
        return SplitPlan(names=split_names, fractions=tuple(self.split_fractions), seed=self.seed)

    def report_settings(self) -> ReportSettings:
        return ReportSettings(radii=tuple(r for r in self.radii if r <= self.max_radius))


class TrainingSettings(dg.ConfigurableResource):
    """How the leak-free and the leaky model are trained and evaluated (the same for both), as a Dagster
    resource: the image shape, decoding and evaluation, and every :class:`ClassifierSettings` field under its
    name and with its default, handed to the trainer by :meth:`classifier_settings`."""

    model_config = _STRICT

    image_size: int = Field(default=64, ge=8, le=1024)
    channels: int = Field(default=3, ge=1, le=3)  # 1 for grayscale, 3 for RGB
    bootstrap_resamples: int = Field(default=1000, ge=1)
    decode_workers: int = Field(default=2, ge=1)
    architecture: str = _CLASSIFIER_DEFAULTS.architecture  # small_cnn or resnet18
    epochs: int = Field(default=_CLASSIFIER_DEFAULTS.epochs, ge=1)
    batch_size: int = Field(default=_CLASSIFIER_DEFAULTS.batch_size, ge=1)
    learning_rate: float = Field(default=_CLASSIFIER_DEFAULTS.learning_rate, gt=0)
    weight_decay: float = Field(default=_CLASSIFIER_DEFAULTS.weight_decay, ge=0)
    patience: int = Field(default=_CLASSIFIER_DEFAULTS.patience, ge=1)
    seed: int = Field(default=_CLASSIFIER_DEFAULTS.seed, ge=0)
    device: str = _CLASSIFIER_DEFAULTS.device  # auto (CUDA when present), cpu, mps, cuda or cuda:N
    initial_weights: str | None = _CLASSIFIER_DEFAULTS.initial_weights  # a state dict file; nothing is downloaded

    @field_validator("channels")
    @classmethod
    def _grayscale_or_rgb(cls, channels: int) -> int:
        if channels not in (1, 3):
            raise ValueError(f"channels={channels}: expected 1 (grayscale) or 3 (RGB)")
        return channels

    @field_validator("architecture", mode="before")  # before: an EnvVar is still one here
    @classmethod
    def _known_architecture(cls, architecture: str) -> str:
        return one_of("architecture", architecture, ARCHITECTURES)

    @field_validator("device", mode="before")  # before: an EnvVar is still one here
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not isinstance(device, dg.EnvVar) and not re.fullmatch(_DEVICE, device):
            raise ValueError(f"device={device!r}: expected auto, cpu, mps, cuda or cuda:N")
        return device

    def classifier_settings(self) -> ClassifierSettings:
        return ClassifierSettings(**{field.name: getattr(self, field.name) for field in fields(ClassifierSettings)})


class GcsStorage(GCSResource):
    """dagster-gcp's GCS resource, as the one way this code location reaches GCS: images, manifests,
    outputs and the output lock all go through the client it makes (see
    :mod:`leakage_pipeline.storage.locations`). ``project`` may be a ``dg.EnvVar``."""

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        use_gcs_client(self.get_client)

    def get_object_to_set_on_execution_context(self) -> "GcsStorage":
        # GCSResource would make its client here, asking for credentials even in a run on local files.
        return self
