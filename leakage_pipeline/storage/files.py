"""Reads and writes that survive a kill, for every output of the audit and of training.

A local file is written under a temporary name unique to this process and call (pid and a
random token), then renamed over the target in one step, so a reader sees the old file or the
new one, never half of one, and two writers never share a temporary file. A GCS object is
written from a local temporary file in one upload, which GCS makes visible all at once.
Plain Python, no Dagster, so ``audit/`` and ``training/`` use it as well as the Dagster layer.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import tempfile
from collections.abc import Callable
from pathlib import Path

import polars as pl
from upath import UPath

from leakage_pipeline.storage.locations import is_local, location

Location = str | os.PathLike | UPath


class OutputUnusable(ValueError):
    """The output directory is a file, or cannot be made or written; the message names it."""


def check_writable_folder(path: Location) -> None:
    """A local ``path`` is (or is made) a folder this process can write in; :class:`OutputUnusable` if not.
    A ``gs://`` prefix is the bucket's to judge (see :func:`leakage_pipeline.audit.image_source.check_gcs_reachable`)."""
    target = location(path)
    if not is_local(target):
        return
    folder = Path(target.path)
    if folder.exists() and not folder.is_dir():
        raise OutputUnusable(f"output directory {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise OutputUnusable(f"output directory {folder} cannot be written: {error.strerror or error}") from error


def unique_partial_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that no other process or call will use."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial{path.suffix}")


def replace_atomically(target: Location, write: Callable[[Path], object]) -> UPath:
    """Call ``write(temporary_local_path)``, then put the result at ``target`` in one step."""
    target = location(target)
    if is_local(target):
        path = Path(target.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = unique_partial_name(path)
        try:
            write(partial)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return target
    with tempfile.TemporaryDirectory(prefix="leakage-upload-") as scratch:
        partial = Path(scratch) / target.name
        write(partial)
        target.fs.put_file(str(partial), target.path)
    return target


def write_parquet(frame: pl.DataFrame, path: Location) -> UPath:
    return replace_atomically(path, frame.write_parquet)


def write_bytes(data: bytes, path: Location) -> UPath:
    return replace_atomically(path, lambda p: p.write_bytes(data))


def write_text(text: str, path: Location) -> UPath:
    return replace_atomically(path, lambda p: p.write_text(text))


def write_json(payload, path: Location) -> UPath:
    return write_text(json.dumps(payload, indent=2, default=str), path)


def read_parquet(path: Location, columns: list[str] | None = None) -> pl.DataFrame:
    path = location(path)
    if is_local(path):
        return pl.read_parquet(path.path, columns=columns)
    return pl.read_parquet(io.BytesIO(path.read_bytes()), columns=columns)


def read_json(path: Location):
    return json.loads(location(path).read_text())


def remove_tree(path: Location) -> None:
    """Delete a folder (or prefix) and everything under it; nothing happens if it is not there."""
    path = location(path)
    if path.exists():
        path.fs.rm(path.path, recursive=True)


def upload_tree(local: Path, target: Location) -> None:
    """Make ``target`` (a folder or prefix) hold exactly the files of the local folder ``local``."""
    target = location(target)
    if is_local(target) and Path(target.path) == Path(local):
        return
    remove_tree(target)
    target.fs.put(f"{local}/", target.path, recursive=True)


def download_tree(source: Location, local: Path) -> None:
    """Copy the folder or prefix ``source`` to the local folder ``local`` when ``local`` does not exist yet."""
    source = location(source)
    if Path(local).exists() or not source.exists():
        return
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    source.fs.get(f"{source.path}/", str(local), recursive=True)
