"""Which torch device a step computes on, and how reproducibly, shared by training and the same-subject stage.

torch is imported on call, so importing this module never loads it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device(requested: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else the CPU; any other name is taken as given (``cpu``, ``cuda:1``)."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


# Threads a CPU computation runs on, whatever the machine's core count: float sums split over another
# number of threads add up in another order, so a fixed count keeps one result across core counts.
REPRODUCIBLE_CPU_THREADS = 2


@contextmanager
def reproducible(device: torch.device) -> Iterator[None]:
    """On the CPU: deterministic algorithms on :data:`REPRODUCIBLE_CPU_THREADS` threads, both restored after.

    CUDA is left as it is (bf16 autocast and cuDNN's autotuned kernels make no such promise)."""
    import torch

    if device.type != "cpu":
        yield
        return
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(REPRODUCIBLE_CPU_THREADS)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
