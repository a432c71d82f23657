"""What an audit and its training run on and where they write, as Dagster resources.

Each dataset (see :mod:`leakage_pipeline.defs.dataset`) has one of each, editable per run in the
launchpad; values a deployment supplies can be ``dg.EnvVar`` s.
"""

import os
import posixpath
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields

import dagster as dg
from dagster_gcp import GCSResource

from leakage_pipeline.audit.image_source import check_gcs_reachable
from leakage_pipeline.audit.manifest import ColumnMapping, LocationRules
from leakage_pipeline.audit.perceptual_hash import HASH_MODE_EXACT
from leakage_pipeline.audit.report import ReportSettings
from leakage_pipeline.audit.splitting import POLICY_KEEP, SplitPlan
from leakage_pipeline.storage.locations import check_location, is_gcs, use_gcs_client
from leakage_pipeline.storage.output_lock import output_lock
from leakage_pipeline.training.settings import ClassifierSettings

_CLASSIFIER_DEFAULTS = ClassifierSettings()
_REPORT_DEFAULTS = ReportSettings()


class AuditSettings(dg.ConfigurableResource):
    """Inputs and knobs of one leakage audit.

    Every step that uses these settings holds the output directory's lock (see
    :mod:`leakage_pipeline.storage.output_lock`) from the moment Dagster initialises the resource for it until
    it is done, so each writing step, the training assets included, writes under it. The lock is
    taken with the run's id, so the steps of one run share it even when each runs in its own process
    or pod, while another run waits up to ``lock_wait_seconds`` and is then refused. Sensors and
    schedules read only and take no lock.
    """

    manifest_path: str
    output_dir: str
    image_root: str | None = None  # relative image URIs live here; default: the manifest's folder
    columns: str = ""  # "image_uri=path,patient_id=pid,..." when the manifest's names differ
    split_policy: str = POLICY_KEEP
    split_fractions: list[float] = [0.7, 0.15, 0.15]
    seed: int = 0
    max_radius: int = 8
    radii: list[int] = list(_REPORT_DEFAULTS.radii)  # the threshold table's radii
    hash_workers: int = 2
    hash_mode: str = HASH_MODE_EXACT  # or "fast": JPEGs decoded at reduced scale, hashes near the exact ones
    montage_per_reason: int = 6  # montage examples of each leak reason
    allow_outside_root: bool = False  # image URIs may name files outside the image root
    resolve_symlinks: bool = False  # a symlinked image and its target are one image
    verify_cache: bool = False  # re-hash every image and report cached hashes that were stale
    # Under a gs:// output root, training works on local copies of its image stores and models here
    # (default: the system's temp folder) and puts the results under the root.
    scratch_dir: str | None = None
    lock_wait_seconds: float = 30.0  # how long a run waits for another run on the same output directory
    same_subject: bool = True  # the same-subject stage (it also skips itself where it cannot calibrate)

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
        seconds (:class:`StorageUnreachable` naming the endpoint otherwise)."""
        locations = [check_location(uri) for uri in (self.manifest_path, self.output_dir, self.image_root) if uri]
        check_gcs_reachable(locations)

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

    image_size: int = 64
    channels: int = 3  # 1 for grayscale
    bootstrap_resamples: int = 1000
    decode_workers: int = 2
    architecture: str = _CLASSIFIER_DEFAULTS.architecture  # small_cnn or resnet18
    epochs: int = _CLASSIFIER_DEFAULTS.epochs
    batch_size: int = _CLASSIFIER_DEFAULTS.batch_size
    learning_rate: float = _CLASSIFIER_DEFAULTS.learning_rate
    weight_decay: float = _CLASSIFIER_DEFAULTS.weight_decay
    patience: int = _CLASSIFIER_DEFAULTS.patience
    seed: int = _CLASSIFIER_DEFAULTS.seed
    device: str = _CLASSIFIER_DEFAULTS.device  # auto: CUDA when present
    initial_weights: str | None = _CLASSIFIER_DEFAULTS.initial_weights  # a state dict file; nothing is downloaded

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
