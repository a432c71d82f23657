"""Split integrity from the manifest alone (no image is read).

Finds patients or case ids that span splits, a case id filed under two patient ids, and one
image file listed on several rows (under different spellings of its path), and counts images per split x label (x vendor).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class IntegrityFindings:
    patients_spanning_splits: pl.DataFrame
    case_ids_spanning_splits: pl.DataFrame
    case_ids_under_several_patients: pl.DataFrame
    duplicate_locations: pl.DataFrame
    counts: pl.DataFrame

    @property
    def leaky(self) -> bool:
        """True when a patient's images are in more than one split: training must not run."""
        return self.patients_spanning_splits.height > 0

    def tables(self) -> dict[str, pl.DataFrame]:
        return {
            "patients_spanning_splits": self.patients_spanning_splits,
            "case_ids_spanning_splits": self.case_ids_spanning_splits,
            "case_ids_under_several_patients": self.case_ids_under_several_patients,
            "duplicate_locations": self.duplicate_locations,
            "counts": self.counts,
        }


def _spanning(frame: pl.DataFrame, key: str, over: str) -> pl.DataFrame:
    """Values of ``key`` seen with more than one distinct ``over``, with those values and image counts."""
    return (
        frame.drop_nulls(key)
        .group_by(key)
        .agg(pl.col(over).unique().sort().alias(f"{over}s"), pl.len().alias("images"))
        .filter(pl.col(f"{over}s").list.len() > 1)
        .sort("images", key, descending=[True, False])
    )


def _duplicate_locations(frame: pl.DataFrame) -> pl.DataFrame:
    """One file listed on several rows (e.g. ``a.png`` and ``./a.png``), in one split or several."""
    return (
        frame.group_by("location")
        .agg(pl.col("split").unique().sort().alias("splits"), pl.col("row").sort().alias("rows"))
        .filter(pl.col("rows").list.len() > 1)
        .sort("location")
    )


def check_split_integrity(assignments: pl.DataFrame) -> IntegrityFindings:
    """``assignments`` has one row per image with patient_id, split, label, case_id, vendor, location."""
    group = ["split", "label"] + (["vendor"] if assignments["vendor"].is_not_null().any() else [])
    return IntegrityFindings(
        patients_spanning_splits=_spanning(assignments, "patient_id", "split"),
        case_ids_spanning_splits=_spanning(assignments, "case_id", "split"),
        case_ids_under_several_patients=_spanning(assignments, "case_id", "patient_id"),
        duplicate_locations=_duplicate_locations(assignments),
        counts=assignments.group_by(group).len("images").sort(group),
    )
