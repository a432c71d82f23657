"""One writer per output directory: a lock held for the whole run, shared by the run's steps.

Two audits writing one output directory would mix their files (one run's manifest beside the
other's hashes), so every run takes the directory's lock before it writes and keeps it until it
ends. Under Dagster a run's steps run in separate processes or pods, several at once, and each
takes the lock: holders that pass the same ``run_id`` share it, while any other run (and every
holder with ``run_id=None``, as the CLI is) waits up to its ``wait_seconds``, then refuses with
:class:`OutputLocked`, naming a holder (pid, host, start time, run, command).

Locally the lock is a ``flock`` on ``DIR/.leakage-pipeline.lock``. Taking and releasing it happen
under a short ``flock`` on ``DIR/.leakage-pipeline.lock.guard``, so the record and the holders
change together: a holder that gets the lock exclusively is the first, writes its record (with its
run id) and turns its lock into a shared one; a holder of the run the record names joins with a
shared lock; the last holder to leave empties the record. The kernel drops the locks of a process
that ends, even on ``kill -9``, so a crash never leaves a stale lock and there is nothing to take
over.

On GCS (a ``gs://`` output root) the lock is the object ``PREFIX/.leakage-pipeline.lock`` holding
the run id and a record with a lease per holder (a :class:`GcsLease`), each renewed every third of
:data:`GCS_LEASE_SECONDS`. Every change is a read-modify-write at the generation read (precondition
0 creates it), repeated when another holder wrote in between. A holder joins when no lease is live
or the run id is its own, and the last one to leave deletes the object; a lock whose leases have all
run out belongs to a run that died, and the next run takes over.

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
import uuid
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
    run = f", run {holder['run_id']}" if holder.get("run_id") else ""
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}{run}: "
            f"{holder.get('command')}")


def _refusal(output_dir: str, holder: str, wait_seconds: float) -> OutputLocked:
    return OutputLocked(f"output directory {output_dir} is in use by another run ({holder}); "
                        f"waited {wait_seconds:g} s. Wait for it to finish or use another output directory")


@contextmanager
def output_lock(output_dir: str | Path, wait_seconds: float = 0.0, run_id: str | None = None) -> Iterator[None]:
    """Hold the lock of ``output_dir`` (created if needed) for the ``with`` block, shared with the
    holders of the same ``run_id``; ``None`` shares it with nobody."""
    output_dir = str(output_dir)
    key = output_dir.rstrip("/") if is_gcs(output_dir) else os.path.realpath(Path(output_dir) / LOCK_FILE)
    with _held_guard:
        nested = key in _held
    if nested:  # the outermost holder releases it
        yield
        return
    lock = _gcs_lock if is_gcs(output_dir) else _file_lock
    with lock(output_dir, wait_seconds, run_id):
        with _held_guard:
            _held.add(key)
        try:
            yield
        finally:
            with _held_guard:
                _held.discard(key)


@contextmanager
def _file_lock(output_dir: str, wait_seconds: float, run_id: str | None) -> Iterator[None]:
    path = Path(output_dir) / LOCK_FILE

    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_seconds
    while (holder := _try_file_lock(descriptor, path, run_id)) is not None:
        if time.monotonic() >= deadline:
            os.close(descriptor)
            raise _refusal(output_dir, _describe(holder), wait_seconds)
        time.sleep(_POLL_SECONDS)
    try:
        yield
    finally:
        with _guard(path):
            fcntl.flock(descriptor, fcntl.LOCK_UN)
            if _flocked(descriptor, fcntl.LOCK_EX):  # it was the last holder
                os.ftruncate(descriptor, 0)
            os.close(descriptor)


def _try_file_lock(descriptor: int, path: Path, run_id: str | None) -> dict | None:
    """One try, under the guard: None once held, else the record of the run holding it."""
    with _guard(path):
        if _flocked(descriptor, fcntl.LOCK_EX):  # nobody holds it: the first holder
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, json.dumps({**_holder_record(), "run_id": run_id}).encode(), 0)
            fcntl.flock(descriptor, fcntl.LOCK_SH)  # converting drops it first: safe, acquirers wait for the guard
            return None
        try:
            holder = json.loads(path.read_text() or "{}")
        except (OSError, ValueError):
            holder = {}
        if run_id is not None and holder.get("run_id") == run_id and _flocked(descriptor, fcntl.LOCK_SH):
            return None
        return holder


@contextmanager
def _guard(path: Path) -> Iterator[None]:
    """Serialises taking and releasing the lock at ``path``, so its record and holders change together."""
    descriptor = os.open(f"{path}.guard", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def _flocked(descriptor: int, operation: int) -> bool:
    try:
        fcntl.flock(descriptor, operation | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


class GcsLease:
    """One holder's lease in the GCS lock object ``PREFIX/.leakage-pipeline.lock``: acquire, renew, release.

    Every change is a read-modify-write at the generation read, repeated when another holder wrote in between.
    """

    def __init__(self, output_dir: str, run_id: str | None):
        bucket_name, _, prefix = output_dir[len("gs://"):].partition("/")
        self.output_dir, self.run_id = output_dir, run_id
        self._bucket = gcs_client().bucket(bucket_name)
        self._name = f"{prefix.rstrip('/')}/{LOCK_FILE}".lstrip("/")
        self._member, self._record = uuid.uuid4().hex, _holder_record()  # this holder's key in the lock, and its record

    def acquire(self, wait_seconds: float) -> None:
        """Join the lock when no lease is live or the run id is this one's; else wait, then refuse."""
        from google.api_core.exceptions import PreconditionFailed

        deadline = time.monotonic() + wait_seconds
        while True:
            lock, generation = self._read()
            holders = _live(lock)
            if not holders or (self.run_id is not None and lock.get("run_id") == self.run_id):
                try:  # dead holders are dropped
                    self._write({"run_id": self.run_id, "holders": {**holders, self._member: self._leased()}}, generation)
                    return
                except PreconditionFailed:
                    continue  # another holder wrote since our read
            if time.monotonic() >= deadline:
                holder = next(iter(holders.values()))
                raise _refusal(self.output_dir, _describe({**holder, "run_id": lock.get("run_id")}), wait_seconds)
            time.sleep(_POLL_SECONDS)

    def renew(self) -> None:
        """Extend this holder's lease by :data:`GCS_LEASE_SECONDS` from now."""
        self._update(renew=True)

    def release(self) -> None:
        """Drop this holder's lease; the last holder deletes the lock object."""
        self._update(renew=False)

    def _update(self, renew: bool) -> None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        while True:
            lock, generation = self._read()
            if self._member not in lock.get("holders", {}):
                return  # its lease ran out and another run took over
            others = {key: holder for key, holder in _live(lock).items() if key != self._member}
            try:
                if renew:
                    self._write({**lock, "holders": {**others, self._member: self._leased()}}, generation)
                elif others:
                    self._write({**lock, "holders": others}, generation)
                else:
                    self._bucket.blob(self._name).delete(if_generation_match=generation)
                return
            except (NotFound, PreconditionFailed):
                continue

    def _read(self) -> tuple[dict, int]:
        """The lock and the generation it was read at (0: there is no lock object)."""
        from google.api_core.exceptions import NotFound

        while True:
            blob = self._bucket.get_blob(self._name)
            if blob is None:
                return {}, 0
            generation = blob.generation  # before the download, which resets it where a response omits it
            try:
                return json.loads(blob.download_as_text() or "{}"), generation
            except NotFound:
                continue  # replaced or deleted between the two requests
            except ValueError:
                return {}, generation  # unreadable: nobody live holds it

    def _write(self, lock: dict, generation: int) -> None:
        self._bucket.blob(self._name).upload_from_string(json.dumps(lock), if_generation_match=generation)

    def _leased(self) -> dict:
        return {**self._record, "lease_until": time.time() + GCS_LEASE_SECONDS}


def _live(lock: dict) -> dict:
    """The holders of ``lock`` whose lease has not run out."""
    now = time.time()
    return {key: holder for key, holder in lock.get("holders", {}).items() if holder.get("lease_until", 0) >= now}


@contextmanager
def _gcs_lock(output_dir: str, wait_seconds: float, run_id: str | None) -> Iterator[None]:
    lease = GcsLease(output_dir, run_id)
    lease.acquire(wait_seconds)
    stop = threading.Event()

    def keep_renewing() -> None:
        while not stop.wait(GCS_LEASE_SECONDS / 3):
            try:
                lease.renew()
            except Exception:  # a missed renewal is retried; the lease outlasts two of them
                continue

    renewer = threading.Thread(target=keep_renewing, name="output-lock-lease", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        lease.release()
