"""What changed since the last look: one fingerprint per split of the manifest's images.

A split's fingerprint covers its images' locations and, for each, the size and version the hash
cache keys on (see :mod:`leakage_pipeline.audit.image_source`): a new, removed, moved or
rewritten image changes its split's fingerprint, and nothing else does. Reads no image.
"""

from __future__ import annotations

import hashlib

import polars as pl

from leakage_pipeline.audit import image_source


def split_fingerprints(assigned: pl.DataFrame) -> dict[str, str]:
    """sha256 per split over its (location, size, version) rows; ``assigned`` has location and split."""
    stats = image_source.stat_many(assigned["location"].to_list())
    fingerprints = {}
    for split in sorted(assigned["split"].unique().to_list()):
        digest = hashlib.sha256()
        for location in sorted(assigned.filter(pl.col("split") == split)["location"].to_list()):
            info = stats[location]
            digest.update(f"{location}\t{info.size if info else '-'}\t{info.version if info else '-'}\n".encode())
        fingerprints[split] = digest.hexdigest()
    return fingerprints


def changed_splits(previous: dict[str, str], current: dict[str, str], split_order: list[str]) -> list[str]:
    """Splits whose fingerprint is new or differs, in ``split_order``."""
    return [split for split in split_order if split in current and previous.get(split) != current[split]]
