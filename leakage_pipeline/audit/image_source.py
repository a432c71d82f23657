"""Where an image lives and how to read it: local paths (absolute or under an image root)
and ``gs://bucket/object`` URIs on Google Cloud Storage.

A *version* identifies one content of an object without reading it: the modification time in
nanoseconds for a local file, the object generation for GCS. Together with the size it is the
cache key that lets a re-run skip unchanged images.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

GCS_SCHEME = "gs://"


class ImageMissing(FileNotFoundError):
    """The manifest names an image that is not there."""


@dataclass(frozen=True)
class ObjectStat:
    size: int
    version: int


def resolve_uri(uri: str, image_root: str | None) -> str:
    """The canonical location of a manifest URI: ``gs://...`` as given, else an absolute path.

    A relative path is taken under ``image_root`` (which may itself be a ``gs://`` prefix).
    """
    if uri.startswith(GCS_SCHEME):
        return uri
    if os.path.isabs(uri) or not image_root:
        return os.path.normpath(os.path.abspath(uri))
    if image_root.startswith(GCS_SCHEME):
        return image_root.rstrip("/") + "/" + uri.lstrip("/")
    return os.path.normpath(os.path.join(os.path.abspath(image_root), uri))


def is_gcs(location: str) -> bool:
    return location.startswith(GCS_SCHEME)


def _split_gcs(location: str) -> tuple[str, str]:
    bucket, _, name = location[len(GCS_SCHEME):].partition("/")
    return bucket, name


@functools.cache
def _gcs_client():
    # Imported lazily: only manifests with gs:// URIs need the client. It honours
    # STORAGE_EMULATOR_HOST, which is how the tests reach a local emulator.
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="leakage-pipeline", credentials=AnonymousCredentials())
    return storage.Client()


def stat(location: str) -> ObjectStat:
    """Size and version of the object, or :class:`ImageMissing`."""
    if is_gcs(location):
        bucket, name = _split_gcs(location)
        blob = _gcs_client().bucket(bucket).get_blob(name)
        if blob is None:
            raise ImageMissing(f"{location} does not exist")
        return ObjectStat(size=int(blob.size), version=int(blob.generation))
    try:
        info = os.stat(location)
    except FileNotFoundError as error:
        raise ImageMissing(f"{location} does not exist") from error
    return ObjectStat(size=info.st_size, version=info.st_mtime_ns)


def read_bytes(location: str) -> bytes:
    if is_gcs(location):
        from google.api_core.exceptions import NotFound

        bucket, name = _split_gcs(location)
        try:
            return _gcs_client().bucket(bucket).blob(name).download_as_bytes()
        except NotFound as error:
            raise ImageMissing(f"{location} does not exist") from error
    try:
        return Path(location).read_bytes()
    except FileNotFoundError as error:
        raise ImageMissing(f"{location} does not exist") from error
