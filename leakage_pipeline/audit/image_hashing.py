"""Hash every image of a split: sha256 of the bytes, pHash, dHash, size, and a status.

A bad image never stops the run: it becomes a row with a status and a message. Results are
cached by content identity (location, size, version, hash mode; see :mod:`image_source` for the
version), so a re-run hashes only new or changed images, and partial results can be
checkpointed so a killed run resumes. A verifying run re-hashes everything and reports every
cached hash that no longer matched its image (which the cache key should make impossible).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import polars as pl
from PIL import UnidentifiedImageError

from leakage_pipeline.audit import image_source
from leakage_pipeline.audit.perceptual_hash import HASH_MODE_EXACT, HASH_MODES, perceptual_hashes, prepare
from leakage_pipeline.audit.pixel_limit import MAX_PIXELS, ImageTooLarge, open_image
from leakage_pipeline.progress import ProgressReporter, start_progress

STATUS_OK = "ok"
STATUS_MISSING = "missing"
STATUS_UNREADABLE = "unreadable"
STATUS_NOT_AN_IMAGE = "not_an_image"
STATUS_TOO_LARGE = "too_large"
STATUSES = (STATUS_OK, STATUS_MISSING, STATUS_UNREADABLE, STATUS_NOT_AN_IMAGE, STATUS_TOO_LARGE)

HASH_SCHEMA = {
    "location": pl.String,
    "size_bytes": pl.Int64,
    "version": pl.String,
    "hash_mode": pl.String,
    "status": pl.String,
    "message": pl.String,
    "sha256": pl.String,
    "phash": pl.UInt64,
    "dhash": pl.UInt64,
    "detail": pl.Float32,
    "width": pl.Int32,
    "height": pl.Int32,
}
# An image is unchanged while these are; the same-subject feature caches use the same key.
CACHE_KEY = ["location", "size_bytes", "version", "hash_mode"]
STALE_SCHEMA = {"location": pl.String, "cached_status": pl.String, "status": pl.String,
                "cached_sha256": pl.String, "sha256": pl.String}


@dataclass(frozen=True)
class HashLimits:
    """Images beyond these are recorded as too large instead of being read or decoded."""

    max_bytes: int = 256 * 1024 * 1024
    max_pixels: int = MAX_PIXELS  # checked from the header, before decoding


@dataclass(frozen=True)
class HashRun:
    hashes: pl.DataFrame
    hashed: int
    reused: int
    # Verifying runs only: cached rows whose image hashed differently now (STALE_SCHEMA).
    stale: pl.DataFrame


def _decode_and_hash(data: bytes, limits: HashLimits, mode: str) -> dict:
    """Fields of one readable image, or a status and message saying why it is not."""
    try:
        with open_image(data, limits.max_pixels) as image:
            width, height = image.size
            prepare(image, mode)
            image.load()
            phash, dhash, detail = perceptual_hashes(image)
    except UnidentifiedImageError:
        return {"status": STATUS_NOT_AN_IMAGE, "message": "not a format Pillow can decode"}
    except ImageTooLarge as error:
        return {"status": STATUS_TOO_LARGE, "message": str(error)}
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        return {"status": STATUS_UNREADABLE, "message": f"{type(error).__name__}: {error}"}
    return {"status": STATUS_OK, "message": None, "phash": phash, "dhash": dhash, "detail": detail,
            "width": width, "height": height}


def hash_image(location: str, limits: HashLimits = HashLimits(), mode: str = HASH_MODE_EXACT,
               listed: image_source.ObjectStat | None = None,
               fetched: bytes | image_source.ImageMissing | None = None) -> dict:
    """One row of :data:`HASH_SCHEMA` for the image at ``location``, hashed in ``mode``.

    ``listed``: its size and version from a listing (:func:`image_source.stat_many`); ``fetched``: its
    bytes at that version, read ahead (:func:`image_source.read_batch`), else it is read here (a GCS
    object at the listed generation). If the object changed since the listing, it is looked at afresh.
    """
    row: dict = {"location": location, "hash_mode": mode}
    try:
        info = listed or image_source.stat(location)
        row.update(size_bytes=info.size, version=info.version)
        if info.size > limits.max_bytes:
            return row | {"status": STATUS_TOO_LARGE, "message": f"{info.size} bytes exceeds {limits.max_bytes}"}
        data = fetched if fetched is not None else image_source.read_bytes(
            location, info.version if listed and image_source.is_gcs(location) else None)
        if isinstance(data, image_source.ImageMissing):
            raise data
    except image_source.ImageMissing as error:
        if listed is not None:  # rewritten or deleted since the listing
            return hash_image(location, limits, mode)
        return row | {"status": STATUS_MISSING, "message": str(error)}
    except (OSError, ValueError) as error:  # ValueError: a path the OS refuses, e.g. with a NUL byte
        return row | {"status": STATUS_UNREADABLE, "message": f"{type(error).__name__}: {error}"}
    row["sha256"] = hashlib.sha256(data).hexdigest()
    return row | _decode_and_hash(data, limits, mode)


def _frame(rows: list[dict]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=HASH_SCHEMA)


def empty_hashes() -> pl.DataFrame:
    return _frame([])


def _current_identity(stats: dict[str, image_source.ObjectStat | None], mode: str) -> pl.DataFrame:
    return pl.DataFrame(
        [{"location": location, "size_bytes": info.size if info else None, "version": info.version if info else None}
         for location, info in stats.items()],
        schema={"location": pl.String, "size_bytes": pl.Int64, "version": pl.String},
    ).with_columns(hash_mode=pl.lit(mode))


def reusable_rows(current: pl.DataFrame, previous: pl.DataFrame) -> pl.DataFrame:
    """Previous results whose image is unchanged. A missing image is always looked at again."""
    previous = previous.filter(pl.col("status") != STATUS_MISSING).unique(CACHE_KEY, keep="last")
    return previous.join(current.drop_nulls(CACHE_KEY).select(CACHE_KEY), on=CACHE_KEY, how="semi")


def stale_rows(cached: pl.DataFrame, fresh: pl.DataFrame) -> pl.DataFrame:
    """Rows of ``cached`` (cache hits) whose fresh hashing gave another sha256 or status."""
    return (
        cached.select("location", cached_status="status", cached_sha256="sha256")
        .join(fresh.select("location", "status", "sha256"), on="location")
        .filter(pl.col("cached_sha256").ne_missing(pl.col("sha256")) | (pl.col("cached_status") != pl.col("status")))
        .select(STALE_SCHEMA.keys())
    )


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _fetched_ahead(locations: list[str], stats: dict[str, image_source.ObjectStat | None], limits: HashLimits,
                   reader: ThreadPoolExecutor) -> Iterator[tuple[list[str], dict]]:
    """``locations`` in batches, each with the bytes of its listed GCS objects (within the size limit),
    the next batch fetched by ``reader`` while the caller hashes this one. Local files are read when hashed."""
    def fetch(batch: list[str]) -> dict:
        wanted = [location for location in batch if image_source.is_gcs(location) and stats[location] is not None
                  and stats[location].size <= limits.max_bytes]
        return image_source.read_batch(wanted, [stats[location].version for location in wanted])

    batches = list(_chunks(locations, image_source.GCS_READ_BATCH))
    ahead = reader.submit(fetch, batches[0]) if batches else None
    for index, batch in enumerate(batches):
        fetched = ahead.result()
        if index + 1 < len(batches):
            ahead = reader.submit(fetch, batches[index + 1])
        yield batch, fetched


def hash_images(
    locations: list[str],
    previous: pl.DataFrame | None = None,
    *,
    limits: HashLimits = HashLimits(),
    workers: int = 2,
    chunk_size: int = 512,
    checkpoint: Callable[[pl.DataFrame], None] | None = None,
    mode: str = HASH_MODE_EXACT,
    verify: bool = False,
    progress: ProgressReporter | None = None,
) -> HashRun:
    """Hash ``locations`` in ``mode``, reusing rows of ``previous`` whose image is unchanged and
    whose hashes were made in the same mode.

    With ``verify`` nothing is reused: every image is hashed again, and the rows that would have
    been reused but no longer match their image come back as ``stale``.

    ``checkpoint`` receives each finished chunk of new rows, so a caller can persist
    progress; feeding those rows back as ``previous`` resumes a killed run. ``progress`` hears
    how many of the images to hash are done.
    Sizes and versions come from one listing (GCS) or ``stat`` each (local). ``workers`` threads
    hash (Pillow, numba and hashlib release the GIL); GCS objects are fetched a batch ahead.
    """
    if mode not in HASH_MODES:
        raise ValueError(f"unknown hash mode {mode!r}; use one of {HASH_MODES}")
    unique_locations = list(dict.fromkeys(locations))
    stats = image_source.stat_many(unique_locations)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, ThreadPoolExecutor(max_workers=1) as reader:
        cached = (
            reusable_rows(_current_identity(stats, mode), previous)
            if previous is not None and previous.height
            else empty_hashes()
        )
        reused = empty_hashes() if verify else cached
        done = set(reused["location"].to_list())
        todo = [location for location in unique_locations if location not in done]
        new_parts = []
        hashing = start_progress(progress, len(todo), "images")
        for chunk in _chunks(todo, chunk_size):
            rows = []
            for batch, fetched in _fetched_ahead(chunk, stats, limits, reader):
                for row in pool.map(lambda loc: hash_image(loc, limits, mode, stats[loc], fetched.get(loc)), batch):
                    rows.append(row)
                    hashing.advance()
            part = _frame(rows)
            if checkpoint is not None:
                checkpoint(part)
            new_parts.append(part)
        hashing.finish()
    hashes = pl.concat([reused.select(HASH_SCHEMA.keys()), *new_parts])
    order = pl.DataFrame({"location": unique_locations}, schema={"location": pl.String}).with_row_index("_order")
    hashes = hashes.join(order, on="location").sort("_order").drop("_order")
    stale = stale_rows(cached, hashes) if verify else pl.DataFrame(schema=STALE_SCHEMA)
    return HashRun(hashes=hashes, hashed=len(todo), reused=reused.height, stale=stale)
