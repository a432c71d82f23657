"""One writer per output directory: an OS file lock held for the whole run.

Two audits writing one output directory would mix their files (one run's manifest beside the
other's hashes), so every run takes an exclusive ``flock`` on ``DIR/.leakage-pipeline.lock``
before it writes and keeps it until it ends. A second run waits up to its ``wait_seconds``, then
refuses with :class:`OutputLocked`, naming the holder (pid, host, start time, command) that the
holder wrote into the lock file. The kernel drops the lock when the holder's process ends, even
on ``kill -9``, so a crash never leaves a stale lock and there is nothing to take over.

On GCS (a ``gs://`` output root) the lock is the object ``PREFIX/.leakage-pipeline.lock``, created
only if absent (generation precondition 0), holding the same holder record and a lease. The holder
renews the lease every third of :data:`GCS_LEASE_SECONDS`; a lock whose lease has run out belongs
to a run that died, and the next run deletes it (only at the generation it read) and takes over.

Nested acquisitions in one process (the CLI holds the lock around an in-process Dagster run whose
resource takes it again) share the first one. An output directory on a network file system
without working ``flock`` (some NFS setups) is not protected.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from leakage_pipeline.storage.locations import gcs_client, is_gcs

LOCK_FILE = ".leakage-pipeline.lock"
GCS_LEASE_SECONDS = 60.0
_POLL_SECONDS = 0.2
_held: set[str] = set()  # lock paths this process holds
_held_guard = threading.Lock()


class OutputLocked(RuntimeError):
    """Another run holds the output directory; the message names it."""


def _holder_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now(UTC).isoformat(timespec="seconds"), "command": " ".join(sys.argv)[:300]}


def _describe(holder: dict) -> str:
    if not holder:
        return "a run that has not yet written its name"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command')}")


def _holder(path: Path) -> str:
    try:
        return _describe(json.loads(path.read_text() or "{}"))
    except (OSError, ValueError):
        return _describe({})


def _refusal(output_dir: str, holder: str, wait_seconds: float) -> OutputLocked:
    return OutputLocked(f"output directory {output_dir} is in use by another run ({holder}); "
                        f"waited {wait_seconds:g} s. Wait for it to finish or use another output directory")


@contextmanager
def output_lock(output_dir: str | Path, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the exclusive lock of ``output_dir`` (created if needed) for the ``with`` block."""
    output_dir = str(output_dir)
    key = output_dir.rstrip("/") if is_gcs(output_dir) else os.path.realpath(Path(output_dir) / LOCK_FILE)
    with _held_guard:
        nested = key in _held
    if nested:  # the outermost holder releases it
        yield
        return
    lock = _gcs_lock if is_gcs(output_dir) else _file_lock
    with lock(output_dir, wait_seconds):
        with _held_guard:
            _held.add(key)
        try:
            yield
        finally:
            with _held_guard:
                _held.discard(key)


@contextmanager
def _file_lock(output_dir: str, wait_seconds: float) -> Iterator[None]:
    path = Path(output_dir) / LOCK_FILE

    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(descriptor)
                raise _refusal(output_dir, _holder(path), wait_seconds) from None
            time.sleep(_POLL_SECONDS)
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(_holder_record()).encode(), 0)
    try:
        yield
    finally:
        os.ftruncate(descriptor, 0)
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


@contextmanager
def _gcs_lock(output_dir: str, wait_seconds: float) -> Iterator[None]:
    from google.api_core.exceptions import NotFound, PreconditionFailed

    bucket_name, _, prefix = output_dir[len("gs://"):].partition("/")
    bucket = gcs_client().bucket(bucket_name)
    name = f"{prefix.rstrip('/')}/{LOCK_FILE}".lstrip("/")
    record = _holder_record()

    def write(if_generation_match: int) -> int:
        blob = bucket.blob(name)
        blob.upload_from_string(json.dumps({**record, "lease_until": time.time() + GCS_LEASE_SECONDS}),
                                if_generation_match=if_generation_match)
        return blob.generation

    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            generation = write(if_generation_match=0)
            break
        except PreconditionFailed:
            current = bucket.get_blob(name)
            if current is None:
                continue  # released between our write and our read
            try:
                holder = json.loads(current.download_as_text() or "{}")
            except (NotFound, ValueError):
                holder = {}
            if holder.get("lease_until", 0) < time.time():  # its holder stopped renewing: it died
                try:
                    current.delete(if_generation_match=current.generation)
                except (NotFound, PreconditionFailed):
                    pass  # another run took over first
                continue
            if time.monotonic() >= deadline:
                raise _refusal(output_dir, _describe(holder), wait_seconds) from None
            time.sleep(_POLL_SECONDS)

    stop = threading.Event()

    def renew() -> None:
        nonlocal generation
        while not stop.wait(GCS_LEASE_SECONDS / 3):
            try:
                generation = write(if_generation_match=generation)
            except Exception:  # a missed renewal is retried; the lease outlasts two of them
                continue

    renewer = threading.Thread(target=renew, name="output-lock-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        try:
            bucket.blob(name).delete(if_generation_match=generation)
        except (NotFound, PreconditionFailed):
            pass
