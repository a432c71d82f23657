"""What the same-subject stage spends on each of its steps: wall seconds, and CPU seconds (user + system time of
every thread of the process), which say how much computing a step needs even when other work shares the cores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass
class StageCost:
    wall_seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # what the steps worked on: images, queries, pairs
    total: dict[str, float] = field(default_factory=dict)  # the whole stage's, set by finish()
    _started: tuple[float, float] = field(default_factory=lambda: (time.perf_counter(), time.process_time()))
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @contextmanager
    def timed(self, step: str, cpu: bool = True) -> Iterator[None]:
        """Wall seconds of the block, and (``cpu``) its process CPU seconds, added to ``step``'s; ``cpu`` False
        where the block's threads record their own parts (:meth:`thread_timed`)."""
        wall, process = time.perf_counter(), time.process_time()
        yield
        with self._lock:
            self.wall_seconds[step] = self.wall_seconds.get(step, 0.0) + time.perf_counter() - wall
        if cpu:
            self._add(step, time.process_time() - process)

    @contextmanager
    def thread_timed(self, step: str) -> Iterator[None]:
        """CPU seconds of this thread in the block, added to ``step``'s: the parts of work that threads share out."""
        started = time.thread_time()
        yield
        self._add(step, time.thread_time() - started)

    def _add(self, step: str, cpu: float) -> None:
        with self._lock:
            self.cpu_seconds[step] = self.cpu_seconds.get(step, 0.0) + cpu

    def finish(self) -> None:
        """The whole stage's wall and CPU seconds, since this record was made."""
        self.total = {"wall_seconds": time.perf_counter() - self._started[0],
                      "cpu_seconds": time.process_time() - self._started[1]}

    def to_dict(self) -> dict:
        return {"wall_seconds": dict(self.wall_seconds), "cpu_seconds": dict(self.cpu_seconds),
                "counts": dict(self.counts), "total": dict(self.total)}
