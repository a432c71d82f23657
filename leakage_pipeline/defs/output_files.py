"""Where each asset writes under the output directory.

The writers themselves live in :mod:`leakage_pipeline.atomic_files` (shared with ``training/``);
they are re-exported here for the Dagster layer's modules that import them from this one.
"""

from __future__ import annotations

from pathlib import Path

from leakage_pipeline.atomic_files import write_json, write_parquet, write_text

__all__ = ["OutputFiles", "write_json", "write_parquet", "write_text"]


class OutputFiles:
    """The on-disk layout of one audit's outputs.

    The leak-free split is audited like any split, so its files (split assignments, pairs, report)
    are laid out the same way under :attr:`leak_free`.
    """

    def __init__(self, output_dir: str | Path):
        self.root = Path(output_dir)

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.parquet"

    @property
    def split_assignments(self) -> Path:
        return self.root / "split_assignments.parquet"

    @property
    def split_integrity(self) -> Path:
        return self.root / "split_integrity.json"

    def image_hashes(self, split: str) -> Path:
        return self.root / "image_hashes" / f"split={split}.parquet"

    def hash_progress(self, split: str) -> Path:
        """Chunks of a hashing run still in progress; a resumed run reuses them."""
        return self.root / "image_hashes" / f"_in_progress_split={split}"

    @property
    def stale_cached_hashes(self) -> Path:
        """What the last verifying run (``verify_cache``) found: cached hashes that were stale."""
        return self.root / "image_hashes" / "stale_cached_hashes.json"

    @property
    def near_duplicate_pairs(self) -> Path:
        return self.root / "near_duplicate_pairs.parquet"

    @property
    def same_subject_pairs(self) -> Path:
        """Every verified same-subject candidate pair, with its inliers and decision."""
        return self.root / "same_subject_pairs.parquet"

    @property
    def same_subject_dir(self) -> Path:
        """The same-subject stage's embedding model and its per-image feature caches."""
        return self.root / "same_subject"

    @property
    def same_subject_summary(self) -> Path:
        return self.same_subject_dir / "summary.json"

    @property
    def identities(self) -> Path:
        """Each patient id with its identity (ids tied by duplicate images or a shared case id)."""
        return self.root / "identities.parquet"

    @property
    def leak_free(self) -> OutputFiles:
        return OutputFiles(self.root / "leak_free_split")

    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report_json(self) -> Path:
        return self.report_dir / "leakage_audit.json"

    @property
    def report_markdown(self) -> Path:
        return self.report_dir / "report.md"

    @property
    def flagged_test_images(self) -> Path:
        return self.report_dir / "flagged_test_images.json"

    @property
    def montage(self) -> Path:
        return self.report_dir / "leakage_pairs_montage.png"

    @property
    def training_dir(self) -> Path:
        return self.root / "training"

    def training_images(self, split: str, size: int, channels: int) -> Path:
        """The image store of one split; each image shape has its own, so changing it rebuilds nothing else."""
        return self.training_dir / "image_store" / f"{size}px_{channels}ch" / f"split={split}"

    def model_dir(self, name: str) -> Path:
        return self.training_dir / name

    @property
    def evaluation_dir(self) -> Path:
        return self.training_dir / "evaluation"
