"""What an audit and its training run on and where they write, as Dagster resources.

Split names are fixed when definitions load (they are the hash asset's static partitions),
so they come from ``LEAKAGE_SPLITS``; everything else is per run.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from leakage_pipeline.audit.manifest import ColumnMapping, LocationRules
from leakage_pipeline.audit.perceptual_hash import HASH_MODE_EXACT
from leakage_pipeline.audit.report import ReportSettings
from leakage_pipeline.audit.splitting import POLICY_KEEP, SplitPlan
from leakage_pipeline.output_lock import output_lock
from leakage_pipeline.training.models import SMALL_CNN
from leakage_pipeline.training.trainer import TrainSettings

SPLIT_NAMES: tuple[str, ...] = tuple(
    name.strip() for name in os.environ.get("LEAKAGE_SPLITS", "train,val,test").split(",") if name.strip()
)
DEFAULT_DEMO_DIR = Path(".demo")


class AuditSettings(dg.ConfigurableResource):
    """Inputs and knobs of one leakage audit.

    Every run that uses these settings holds the output directory's lock (see
    :mod:`leakage_pipeline.output_lock`) from the moment Dagster initialises the resource until the
    run's steps are done, so each writing step, the training assets included, writes under it. The
    definitions use the in-process executor, so that is one lock for the whole run; under a
    multi-process executor each step process would take it in turn, waiting up to
    ``lock_wait_seconds`` for the step before it. Sensors and schedules read only and take no lock.
    """

    manifest_path: str
    output_dir: str
    image_root: str | None = None  # relative image URIs live here; default: the manifest's folder
    columns: str = ""  # "image_uri=path,patient_id=pid,..." when the manifest's names differ
    split_policy: str = POLICY_KEEP
    split_fractions: list[float] = [0.7, 0.15, 0.15]
    seed: int = 0
    max_radius: int = 8
    radii: list[int] = [0, 2, 5, 8]
    hash_workers: int = 2
    hash_mode: str = HASH_MODE_EXACT  # or "fast": JPEGs decoded at reduced scale, hashes near the exact ones
    montage_per_reason: int = 6  # montage examples of each leak reason
    allow_outside_root: bool = False  # image URIs may name files outside the image root
    resolve_symlinks: bool = False  # a symlinked image and its target are one image
    verify_cache: bool = False  # re-hash every image and report cached hashes that were stale
    lock_wait_seconds: float = 30.0  # how long a run waits for another run on the same output directory
    same_subject: bool = True  # the same-subject stage (it also skips itself where it cannot calibrate)

    @contextmanager
    def yield_for_execution(self, context: dg.InitResourceContext) -> Iterator["AuditSettings"]:
        if context.run is None:  # a sensor or schedule evaluation: it writes nothing
            yield self
            return
        with output_lock(self.output_dir, self.lock_wait_seconds):
            yield self

    def column_mapping(self) -> ColumnMapping:
        return ColumnMapping.parse(self.columns)

    def resolved_image_root(self) -> str:
        # abspath, not resolve(): symlinks are followed only when resolve_symlinks asks for it
        return self.image_root or os.path.dirname(os.path.abspath(self.manifest_path))

    def location_rules(self) -> LocationRules:
        return LocationRules(image_root=self.resolved_image_root(), allow_outside_root=self.allow_outside_root,
                             resolve_symlinks=self.resolve_symlinks)

    def split_plan(self) -> SplitPlan:
        return SplitPlan(names=SPLIT_NAMES, fractions=tuple(self.split_fractions), seed=self.seed)

    def report_settings(self) -> ReportSettings:
        return ReportSettings(radii=tuple(r for r in self.radii if r <= self.max_radius))


class TrainingSettings(dg.ConfigurableResource):
    """How the leak-free and the leaky model are trained and evaluated (the same for both)."""

    image_size: int = 64
    channels: int = 3  # 1 for grayscale
    architecture: str = SMALL_CNN  # or "resnet18"
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    patience: int = 6
    seed: int = 0
    device: str = "auto"
    initial_weights: str | None = None  # a state dict file; nothing is downloaded
    bootstrap_resamples: int = 1000
    decode_workers: int = 2

    def train_settings(self) -> TrainSettings:
        return TrainSettings(
            architecture=self.architecture, epochs=self.epochs, batch_size=self.batch_size,
            learning_rate=self.learning_rate, patience=self.patience, seed=self.seed, device=self.device,
            initial_weights=self.initial_weights,
        )


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes")


def settings_from_env() -> AuditSettings:
    """Settings for ``dagster dev`` and deployments; defaults point at the embedded demo."""
    env = os.environ.get
    return AuditSettings(
        manifest_path=env("LEAKAGE_MANIFEST", str(DEFAULT_DEMO_DIR / "data" / "manifest.csv")),
        output_dir=env("LEAKAGE_OUTPUT_DIR", str(DEFAULT_DEMO_DIR / "out")),
        image_root=env("LEAKAGE_IMAGE_ROOT") or None,
        columns=env("LEAKAGE_COLUMNS", ""),
        split_policy=env("LEAKAGE_SPLIT_POLICY", POLICY_KEEP),
        max_radius=int(env("LEAKAGE_MAX_RADIUS", "8")),
        hash_mode=env("LEAKAGE_HASH_MODE", HASH_MODE_EXACT),
        allow_outside_root=_env_flag("LEAKAGE_ALLOW_OUTSIDE_ROOT"),
        resolve_symlinks=_env_flag("LEAKAGE_RESOLVE_SYMLINKS"),
        same_subject=not _env_flag("LEAKAGE_NO_SAME_SUBJECT"),
    )


# TrainingSettings field -> (environment variable, its parser)
_TRAINING_ENVIRONMENT = {
    "image_size": ("LEAKAGE_IMAGE_SIZE", int),
    "channels": ("LEAKAGE_CHANNELS", int),
    "architecture": ("LEAKAGE_ARCHITECTURE", str),
    "epochs": ("LEAKAGE_EPOCHS", int),
    "device": ("LEAKAGE_DEVICE", str),
    "initial_weights": ("LEAKAGE_INITIAL_WEIGHTS", str),
}


def training_settings_from_env() -> TrainingSettings:
    """Training settings for ``dagster dev`` and deployments: each variable that is set (and not
    empty) overrides the field's default."""
    return TrainingSettings(**{field: parse(os.environ[name]) for field, (name, parse) in _TRAINING_ENVIRONMENT.items()
                               if os.environ.get(name)})


def pipeline_resources(audit: AuditSettings, training: TrainingSettings) -> dict:
    """The resources every asset of the pipeline may ask for, under the names they use."""
    return {"audit": audit, "training": training, "pipes_subprocess_client": dg.PipesSubprocessClient()}
