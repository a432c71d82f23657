"""Which torch device a step computes on, shared by training and the same-subject stage.

torch is imported on call, so importing this module never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def pick_device(requested: str = "auto") -> torch.device:
    """``auto``: CUDA when present, else the CPU; any other name is taken as given (``cpu``, ``cuda:1``)."""
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
