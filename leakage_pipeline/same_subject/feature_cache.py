"""Per-image features kept between runs, keyed like the hash cache, so only new or changed images are computed.

A cached row carries the image's cache key (:data:`leakage_pipeline.audit.image_hashing.CACHE_KEY`:
location, size, version, hash mode) and a ``tag`` naming what produced it (the embedding model, the
keypoint settings); a row is reused when the image is unchanged, by the hash cache's own rule
(:func:`~leakage_pipeline.audit.image_hashing.reusable_rows`), and its tag is the current one.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from leakage_pipeline.audit.image_hashing import CACHE_KEY, reusable_rows
from leakage_pipeline.storage.files import read_parquet, write_parquet

TAG = "tag"
KEY_COLUMNS = [*CACHE_KEY, "status"]  # the hash row's key and status travel with each cached row


def read_cache(path: Path) -> pl.DataFrame | None:
    return read_parquet(path) if path.exists() else None


def split_by_cache(images: pl.DataFrame, previous: pl.DataFrame | None, tag: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(cached rows still valid for ``images``, the rows of ``images`` that must be computed).

    ``images``: hash rows (at least :data:`KEY_COLUMNS`) of the images wanted now.
    """
    if previous is None or previous.is_empty():
        return previous.clear() if previous is not None else pl.DataFrame(), images
    reused = reusable_rows(images.select(KEY_COLUMNS), previous.filter(pl.col(TAG) == tag))
    return reused, images.join(reused.select("location"), on="location", how="anti", maintain_order="left")


def store(reused: pl.DataFrame, computed: pl.DataFrame, path: Path) -> pl.DataFrame:
    """The cache of the current images (reused and newly computed rows); images no longer listed are dropped."""
    # No row reused: the previous cache may have another layout (a column added since), so it is not joined.
    parts = [part for part in (reused, computed) if part.width and (part.height or part is computed)]
    frame = pl.concat(parts, how="vertical_relaxed") if parts else pl.DataFrame()
    write_parquet(frame, path)
    return frame
