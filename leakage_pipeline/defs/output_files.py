"""Where each asset writes under the output directory, and writes that survive a kill."""

from __future__ import annotations

import json
import os
from pathlib import Path

import polars as pl


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
    def near_duplicate_pairs(self) -> Path:
        return self.root / "near_duplicate_pairs.parquet"

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


def _replace_atomically(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    write(partial)
    os.replace(partial, path)
    return path


def write_parquet(frame: pl.DataFrame, path: Path) -> Path:
    return _replace_atomically(path, frame.write_parquet)


def write_text(text: str, path: Path) -> Path:
    return _replace_atomically(path, lambda p: p.write_text(text))


def write_json(payload, path: Path) -> Path:
    return write_text(json.dumps(payload, indent=2, default=str), path)
