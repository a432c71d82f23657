"""Where an image lives and how to read it: local paths (absolute or under an image root)
and ``gs://bucket/object`` URIs on Google Cloud Storage.

A *version* identifies one content of an object without reading it, so a re-run can skip
unchanged images: for a local file its modification time, change time and inode (an in-place
rewrite that keeps the size and puts the mtime back still moves the ctime, and a file replaced
by a rename has a new inode), for GCS the object generation. With the size it is the cache key.
"""

from __future__ import annotations

import os
import posixpath
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from leakage_pipeline.storage.locations import GCS_SCHEME, gcs_client, is_gcs
from leakage_pipeline.storage.locations import location as storage_location

GCS_DEFAULT_ENDPOINT = "https://storage.googleapis.com"
# Concurrent GCS downloads where threads read and then work on each image (same-subject decoding, image
# stores): a read mostly waits on the network, so more reads than CPU workers are in flight (the CPU
# work after each read stays limited to the workers); within the client's 10 connections per host.
GCS_READ_THREADS = 8
# Hashing fetches GCS images in batches on gcsfs's event loop, the next batch while one is hashed:
# a batch bounds the bytes held; requests in flight at once; one object's bound, gcsfs's retries included.
GCS_READ_BATCH = 64
GCS_READS_IN_FLIGHT = 32
GCS_READ_SECONDS = 120.0
# The preflight's whole budget per bucket, retries included: long enough for a slow first
# connection, short enough that a wrong endpoint fails before any work instead of minutes later.
GCS_PREFLIGHT_SECONDS = 5.0


class ImageMissing(FileNotFoundError):
    """The manifest names an image that is not there."""


class StorageUnreachable(RuntimeError):
    """An object store the manifest needs cannot be reached or read; the message names the endpoint."""


@dataclass(frozen=True)
class ObjectStat:
    size: int
    version: str


def _normalize_gcs(uri: str) -> str:
    """``gs://b//a/./c/../d`` -> ``gs://b/a/d``; ``..`` stops at the bucket."""
    bucket, name = _split_gcs(uri)
    name = posixpath.normpath("/" + name).lstrip("/")
    return f"{GCS_SCHEME}{bucket}/{name}" if name else f"{GCS_SCHEME}{bucket}"


def resolve_uri(uri: str, image_root: str | None, resolve_symlinks: bool = False) -> str:
    """The canonical location of a manifest URI: a normalised ``gs://`` URI or an absolute path.

    A relative path is taken under ``image_root`` (which may itself be a ``gs://`` prefix). Local
    paths lose ``.``, ``..`` and repeated separators, and with ``resolve_symlinks`` also symlinks,
    so one file has one location however the manifest spells it.
    """
    if is_gcs(uri):
        return _normalize_gcs(uri)
    if image_root and is_gcs(image_root) and not os.path.isabs(uri):
        return _normalize_gcs(image_root.rstrip("/") + "/" + uri)
    path = os.path.join(os.path.abspath(image_root or "."), uri)  # an absolute uri ignores the root
    return os.path.realpath(path) if resolve_symlinks else os.path.normpath(path)


def is_within(location: str, root: str) -> bool:
    """Whether canonical ``location`` lies under canonical ``root`` (both from :func:`resolve_uri`)."""
    if is_gcs(location) != is_gcs(root):
        return False
    if is_gcs(root):
        return location == root or location.startswith(root.rstrip("/") + "/")
    return os.path.commonpath([location, root]) == root


def _split_gcs(location: str) -> tuple[str, str]:
    bucket, _, name = location[len(GCS_SCHEME):].partition("/")
    return bucket, name


def stat(location: str) -> ObjectStat:
    """Size and version of the object, or :class:`ImageMissing`."""
    if is_gcs(location):
        bucket, name = _split_gcs(location)
        blob = gcs_client().bucket(bucket).get_blob(name)
        if blob is None:
            raise ImageMissing(f"{location} does not exist")
        return ObjectStat(size=int(blob.size), version=str(blob.generation))
    try:
        info = os.stat(location)
    except FileNotFoundError as error:
        raise ImageMissing(f"{location} does not exist") from error
    return ObjectStat(size=info.st_size, version=f"{info.st_mtime_ns}:{info.st_ctime_ns}:{info.st_ino}")


def _listed_gcs_stats(locations: list[str]) -> dict[str, ObjectStat]:
    """Size and generation of each GCS object that exists, from one listing per bucket under the
    locations' common prefix: no object is downloaded, and a million images cost a few thousand
    list pages rather than a million requests."""
    by_bucket: dict[str, list[str]] = {}
    for location in locations:
        bucket, name = _split_gcs(location)
        by_bucket.setdefault(bucket, []).append(name)
    found = {}
    for bucket, names in by_bucket.items():
        wanted = set(names)
        prefix = os.path.commonprefix(names).rpartition("/")[0]
        for blob in gcs_client().list_blobs(bucket, prefix=f"{prefix}/" if prefix else None):
            if blob.name in wanted:
                found[f"{GCS_SCHEME}{bucket}/{blob.name}"] = ObjectStat(size=int(blob.size), version=str(blob.generation))
    return found


def stat_many(locations: list[str]) -> dict[str, ObjectStat | None]:
    """:func:`stat` of every location (None where missing or unreadable); GCS objects from a listing."""
    remote = _listed_gcs_stats([location for location in locations if is_gcs(location)])
    stats: dict[str, ObjectStat | None] = {}
    for location in locations:
        if is_gcs(location):
            stats[location] = remote.get(location)
            continue
        try:
            stats[location] = stat(location)
        except (OSError, ValueError):
            stats[location] = None
    return stats


@contextmanager
def reading_pool(locations: list[str], workers: int) -> Iterator[tuple[ThreadPoolExecutor, threading.Semaphore]]:
    """Threads to read ``locations`` and work on each, and the semaphore each holds for its CPU work.

    ``workers`` threads, or :data:`GCS_READ_THREADS` when any location is on GCS, so the network's
    waits overlap; the semaphore keeps the CPU work (and its memory) to ``workers`` at a time.
    """
    gcs = any(is_gcs(location) for location in locations)
    with ThreadPoolExecutor(max_workers=max(1, workers, GCS_READ_THREADS if gcs else 0)) as pool:
        yield pool, threading.BoundedSemaphore(max(1, workers))


def read_bytes(location: str, generation: str | None = None) -> bytes:
    """The object's bytes; with ``generation`` (a GCS object's, as listed), exactly that generation:
    one request, and the bytes are those of the version the cache key records."""
    if is_gcs(location):
        from google.api_core.exceptions import NotFound

        bucket, name = _split_gcs(location)
        try:
            blob = gcs_client().bucket(bucket).blob(name, generation=int(generation) if generation else None)
            return blob.download_as_bytes()
        except NotFound as error:
            gone = f" at generation {generation}" if generation else ""
            raise ImageMissing(f"{location} does not exist{gone}") from error
    try:
        return Path(location).read_bytes()
    except FileNotFoundError as error:
        raise ImageMissing(f"{location} does not exist") from error


def read_batch(locations: list[str], generations: list[str]) -> dict[str, bytes | ImageMissing]:
    """The bytes of GCS objects at the given generations (from a listing), fetched concurrently: at most
    :data:`GCS_READS_IN_FLIGHT` requests at once on gcsfs's event loop, one request per object.

    A missing object, or one no longer at that generation, is its :class:`ImageMissing`; any other
    failure, after gcsfs's retries or :data:`GCS_READ_SECONDS`, raises :class:`StorageUnreachable`
    naming the object and the endpoint: an image the network failed to deliver is not an unreadable image.
    """
    if not locations:
        return {}
    import asyncio

    from fsspec.asyn import sync

    fs = storage_location(locations[0]).fs

    async def fetch(gate: asyncio.Semaphore, location: str, generation: str) -> bytes | ImageMissing:
        async with gate:
            try:
                return await asyncio.wait_for(fs._cat_file(location, generation=generation), GCS_READ_SECONDS)
            except FileNotFoundError:
                return ImageMissing(f"{location} does not exist at generation {generation}")
            except Exception as error:
                raise StorageUnreachable(
                    f"cannot read {location} at {_gcs_endpoint()} within {GCS_READ_SECONDS:.0f} s, retries included "
                    f"({type(error).__name__}: {str(error)[:300]})") from error

    async def fetch_all() -> list[bytes | ImageMissing]:
        gate = asyncio.Semaphore(GCS_READS_IN_FLIGHT)
        return await asyncio.gather(*(fetch(gate, *item) for item in zip(locations, generations, strict=True)))

    return dict(zip(locations, sync(fs.loop, fetch_all), strict=True))


def _gcs_endpoint() -> str:
    return os.environ.get("STORAGE_EMULATOR_HOST") or GCS_DEFAULT_ENDPOINT


def check_gcs_reachable(locations: Iterable[str]) -> None:
    """Before any work: each bucket among ``locations`` answers, and lets us read, within seconds.

    One object's metadata is read per bucket (the permission reading images needs anyway); a
    missing object is fine here, it becomes that image's ``missing`` status. Connection errors are
    retried, but only within :data:`GCS_PREFLIGHT_SECONDS`. Raises :class:`StorageUnreachable`.
    """
    first_object: dict[str, str] = {}
    for location in locations:
        if is_gcs(location):
            bucket, name = _split_gcs(location)
            first_object.setdefault(bucket, name)
    if not first_object:
        return
    from google.api_core.retry import Retry  # lazily, as for the client: only gs:// manifests need it
    from google.cloud.storage.retry import DEFAULT_RETRY

    retry: Retry = DEFAULT_RETRY.with_timeout(GCS_PREFLIGHT_SECONDS)
    for bucket, name in first_object.items():
        handle = gcs_client().bucket(bucket)
        try:
            found = handle.get_blob(name, timeout=GCS_PREFLIGHT_SECONDS, retry=retry) if name else None
            # A missing object is fine; a missing bucket means every object is missing.
            bucket_exists = found is not None or handle.exists(timeout=GCS_PREFLIGHT_SECONDS, retry=retry)
        except Exception as error:  # connection, timeout, credentials, permission: all mean "cannot read"
            raise StorageUnreachable(
                f"cannot read gs://{bucket} at {_gcs_endpoint()} within {GCS_PREFLIGHT_SECONDS:.0f} s "
                f"({type(error).__name__}: {str(error)[:300]}); check the endpoint, network and credentials"
            ) from error
        if not bucket_exists:
            raise StorageUnreachable(f"bucket gs://{bucket} does not exist at {_gcs_endpoint()}")
