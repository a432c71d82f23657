"""Writes that survive a kill: every output file of the audit and of training goes through here.

A file is written under a temporary name unique to this process and call (pid and a random
token), then renamed over the target in one step, so a reader sees the old file or the new one,
never half of one, and two writers never share a temporary file. Plain Python, no Dagster, so
``audit/`` and ``training/`` use it as well as the Dagster layer.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import polars as pl


def unique_partial_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that no other process or call will use."""
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial{path.suffix}")


def replace_atomically(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(temporary_path)``, then move the result onto ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = unique_partial_name(path)
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_parquet(frame: pl.DataFrame, path: Path) -> Path:
    return replace_atomically(path, frame.write_parquet)


def write_text(text: str, path: Path) -> Path:
    return replace_atomically(path, lambda p: p.write_text(text))


def write_json(payload, path: Path) -> Path:
    return write_text(json.dumps(payload, indent=2, default=str), path)
