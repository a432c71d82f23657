"""Where each asset writes under the output root: a local folder or a ``gs://`` prefix.

Paths are :class:`upath.UPath` s; read and write them with :mod:`leakage_pipeline.storage.files`.
"""

from __future__ import annotations

from upath import UPath

from leakage_pipeline.storage.files import Location
from leakage_pipeline.storage.locations import is_local, location
from leakage_pipeline.training.training_job import PREDICTIONS_FILE


class OutputFiles:
    """The on-disk layout of one audit's outputs.

    The leak-free split is audited like any split, so its files (split assignments, pairs, report)
    are laid out the same way under :attr:`leak_free`.
    """

    def __init__(self, output_dir: Location):
        root = location(output_dir)
        self.root = root.absolute() if is_local(root) else root  # a report names where it is

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

    @property
    def stale_cached_hashes(self) -> UPath:
        """What the last verifying run (``verify_cache``) found: cached hashes that were stale."""
        return self.root / "image_hashes" / "stale_cached_hashes.json"

    @property
    def near_duplicate_pairs(self) -> UPath:
        return self.root / "near_duplicate_pairs.parquet"

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
