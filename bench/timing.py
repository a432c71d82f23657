"""Timing shared by the benchmarks: the median of repeated runs, so one disturbed run moves nothing."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed(function: Callable[[], object], repeats: int) -> tuple[float, object]:
    """(median seconds, last result) of ``repeats`` calls of ``function``."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result
