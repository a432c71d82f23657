"""Where each asset writes under the output root: a local folder or a ``gs://`` prefix.

Paths are :class:`upath.UPath` s; read and write them with :mod:`leakage_pipeline.storage.files`.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from upath import UPath

from leakage_pipeline.storage.files import Location
from leakage_pipeline.storage.locations import is_local, location

PREDICTIONS_FILE = "test_predictions.parquet"  # a model's predictions on its test split, in its folder


class OutputFiles:
    """The on-disk layout of one audit's outputs.

    The leak-free split is audited like any split, so its files (split assignments, pairs, report)
    are laid out the same way under :attr:`leak_free`.
    """

    def __init__(self, output_dir: Location, scratch_dir: str | None = None):
        root = location(output_dir)
        self.root = root.absolute() if is_local(root) else root  # a report names where it is
        # Training reads its image stores memory-mapped and writes models from another process, so
        # under a remote root it works on a local copy here and puts the results under the root.
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        self.scratch = Path(scratch_dir or Path(tempfile.gettempdir()) / "leakage-pipeline") / digest

    def local_copy(self, path: UPath) -> Path:
        """Where ``path`` (under the root) is on local disk: itself under a local root, else its place
        under :attr:`scratch`."""
        if is_local(self.root):
            return Path(path.path)
        return self.scratch / path.relative_to(self.root).as_posix()

    def writes_over(self, path: UPath) -> bool:
        """Whether ``path`` is one of the files, or lies in one of the folders, this layout writes."""
        if is_local(self.root) != is_local(path):
            return False
        path = path.absolute() if is_local(path) else path
        owned = {written.relative_to(self.root).parts[0] for written in (
            self.manifest, self.split_assignments, self.split_integrity, self.image_hashes("-"),
            self.split_step_summary("-", "-"), self.near_duplicate_pairs, self.same_subject_pairs, self.same_subject_dir,
            self.identities, self.leak_free.root, self.report_dir, self.training_dir)}
        return any(path == self.root / name or self.root / name in path.parents for name in owned)

    @property
    def manifest(self) -> UPath:
        return self.root / "manifest.parquet"

    @property
    def split_assignments(self) -> UPath:
        return self.root / "split_assignments.parquet"

    @property
    def split_integrity(self) -> UPath:
        return self.root / "split_integrity.json"

    def image_hashes(self, split: str) -> UPath:
        return self.root / "image_hashes" / f"split={split}.parquet"

    def hash_progress(self, split: str) -> UPath:
        """Chunks of a hashing run still in progress; a resumed run reuses them."""
        return self.root / "image_hashes" / f"_in_progress_split={split}"

    def split_step_summary(self, asset: str, split: str) -> UPath:
        """What the last run's step of ``asset`` for ``split`` did, for the step that finishes the asset."""
        return self.root / "_split_steps" / asset / f"split={split}.json"

    @property
    def stale_cached_hashes(self) -> UPath:
        """What the last verifying run (``verify_cache``) found: cached hashes that were stale."""
        return self.root / "image_hashes" / "stale_cached_hashes.json"

    @property
    def near_duplicate_pairs(self) -> UPath:
        return self.root / "near_duplicate_pairs.parquet"

    @property
    def same_subject_pairs(self) -> UPath:
        """Every verified same-subject candidate pair, with its inliers and decision."""
        return self.root / "same_subject_pairs.parquet"

    @property
    def same_subject_dir(self) -> UPath:
        """The same-subject stage's embedding model and its per-image feature caches."""
        return self.root / "same_subject"

    @property
    def same_subject_summary(self) -> UPath:
        return self.same_subject_dir / "summary.json"

    @property
    def identities(self) -> UPath:
        """Each patient id with its identity (ids tied by duplicate images or a shared case id)."""
        return self.root / "identities.parquet"

    @property
    def leak_free(self) -> OutputFiles:
        return OutputFiles(self.root / "leak_free_split")

    @property
    def report_dir(self) -> UPath:
        return self.root / "report"

    @property
    def report_json(self) -> UPath:
        return self.report_dir / "leakage_audit.json"

    @property
    def report_markdown(self) -> UPath:
        return self.report_dir / "report.md"

    @property
    def flagged_test_images(self) -> UPath:
        return self.report_dir / "flagged_test_images.json"

    @property
    def montage(self) -> UPath:
        return self.report_dir / "leakage_pairs_montage.png"

    @property
    def training_dir(self) -> UPath:
        return self.root / "training"

    def training_images(self, split: str, size: int, channels: int) -> UPath:
        """The image store of one split; each image shape has its own, so changing it rebuilds nothing else."""
        return self.training_dir / "image_store" / f"{size}px_{channels}ch" / f"split={split}"

    def model_split_table(self, name: str) -> UPath:
        """The split the model ``name`` was trained on."""
        return self.model_dir(name) / "split.parquet"

    def model_predictions(self, name: str) -> UPath:
        return self.model_dir(name) / PREDICTIONS_FILE

    def model_dir(self, name: str) -> UPath:
        return self.training_dir / name

    @property
    def evaluation_dir(self) -> UPath:
        return self.training_dir / "evaluation"

    @property
    def evaluation_json(self) -> UPath:
        return self.evaluation_dir / "evaluation.json"

    @property
    def evaluation_markdown(self) -> UPath:
        return self.evaluation_dir / "evaluation.md"

    def confusion_image(self, row: str) -> UPath:
        return self.evaluation_dir / f"confusion_{row}.png"
