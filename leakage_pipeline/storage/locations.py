"""Every place the pipeline reads or writes is a location: a local path (the default) or
``gs://bucket/prefix``. Each becomes a :class:`upath.UPath`, one pathlib-like API over fsspec
(gcsfs for GCS), so the code that writes a report does not care where it goes.

GCS is reached through one ``google.cloud.storage.Client`` per process: the one Dagster's
``dagster_gcp.GCSResource`` makes (see :func:`use_gcs_client`), or, outside Dagster, a default
client. gcsfs gets that client's project and credentials; both honour ``STORAGE_EMULATOR_HOST``.
Any other scheme, or a ``gs:/`` that lost a slash on the way, is refused before any work.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from upath import UPath

GCS_SCHEME = "gs://"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_client = None  # the google-cloud-storage client of this process, once one is needed
_make_client: Callable[[], Any] | None = None  # how to make it, when Dagster's GCSResource says


class UnsupportedLocation(ValueError):
    """A location that is neither a local path nor ``gs://bucket/...``; the message names it."""


def use_gcs_client(make_client: Callable[[], Any] | None) -> None:
    """Route this process's GCS reads and writes through the client ``make_client()`` returns
    (``GCSResource.get_client``), made when a gs:// location is first used: a run on local files
    never needs GCS credentials. ``None`` forgets the client: the next use makes a default one."""
    global _client, _make_client
    _client, _make_client = None, make_client


def gcs_client():
    """The process's GCS client: the one given to :func:`use_gcs_client`, else a default one."""
    global _client
    if _client is None and _make_client is not None:
        _client = _make_client()
    if _client is None:
        # Imported lazily: only gs:// locations need the client.
        from google.cloud import storage

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            _client = storage.Client(project="leakage-pipeline", credentials=AnonymousCredentials())
        else:
            _client = storage.Client()
    return _client


def is_gcs(location: str | os.PathLike) -> bool:
    return str(location).startswith(GCS_SCHEME)


def check_location(uri: str) -> str:
    """``uri`` if it is a local path or a ``gs://bucket/...`` URI, else :class:`UnsupportedLocation`."""
    if is_gcs(uri):
        if not uri[len(GCS_SCHEME):].split("/", 1)[0]:
            raise UnsupportedLocation(f"{uri!r} names no bucket; write gs://bucket/prefix")
        return uri
    if uri.startswith("gs:/"):
        raise UnsupportedLocation(f"{uri!r} is not a gs:// URI (a slash was lost on the way?); "
                                  "write gs://bucket/prefix")
    if _SCHEME.match(uri) and not os.path.splitdrive(uri)[0]:
        raise UnsupportedLocation(f"{uri!r}: only local paths and gs://bucket/prefix are supported")
    return uri


def location(uri: str | os.PathLike) -> UPath:
    """The :class:`UPath` of a local path or a ``gs://`` URI (checked by :func:`check_location`)."""
    if isinstance(uri, UPath):
        return uri
    text = check_location(os.fspath(uri))
    if is_gcs(text):
        client = gcs_client()
        # gcsfs has no way to take a client, so it gets the client's project and credentials.
        return UPath(text, project=client.project, token=client._credentials)
    return UPath(text)


def is_local(path: UPath) -> bool:
    return path.protocol in ("", "file", "local")
