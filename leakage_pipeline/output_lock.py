"""One writer per output directory: an OS file lock held for the whole run.

Two audits writing one output directory would mix their files (one run's manifest beside the
other's hashes), so every run takes an exclusive ``flock`` on ``DIR/.leakage-pipeline.lock``
before it writes and keeps it until it ends. A second run waits up to its ``wait_seconds``, then
refuses with :class:`OutputLocked`, naming the holder (pid, host, start time, command) that the
holder wrote into the lock file. The kernel drops the lock when the holder's process ends, even
on ``kill -9``, so a crash never leaves a stale lock and there is nothing to take over.

Nested acquisitions in one process (the CLI holds the lock around an in-process Dagster run whose
resource takes it again) share the first one. The lock is local: an output directory on a network
file system without working ``flock`` (some NFS setups) is not protected, and outputs on object
storage are not supported.
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

LOCK_FILE = ".leakage-pipeline.lock"
_POLL_SECONDS = 0.2
_held: set[str] = set()  # lock paths this process holds
_held_guard = threading.Lock()


class OutputLocked(RuntimeError):
    """Another run holds the output directory; the message names it."""


def _holder(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "a run that has not yet written its name"
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: "
            f"{holder.get('command')}")


@contextmanager
def output_lock(output_dir: str | Path, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold the exclusive lock of ``output_dir`` (created if needed) for the ``with`` block."""
    path = Path(output_dir) / LOCK_FILE
    key = os.path.realpath(path)
    with _held_guard:
        nested = key in _held
    if nested:  # the outermost holder releases it
        yield
        return

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
                raise OutputLocked(
                    f"output directory {output_dir} is in use by another run ({_holder(path)}); "
                    f"waited {wait_seconds:g} s. Wait for it to finish or use another output directory"
                ) from None
            time.sleep(_POLL_SECONDS)
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.now(UTC).isoformat(timespec="seconds"), "command": " ".join(sys.argv)[:300]}
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(holder).encode(), 0)
    with _held_guard:
        _held.add(key)
    try:
        yield
    finally:
        with _held_guard:
            _held.discard(key)
        os.ftruncate(descriptor, 0)
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)
