"""What the same-subject embedding sees and how it is trained: settings and the model's input.

Torch-free, so settings can be read where torch must not be imported (the Dagster code location);
the model, its augmentations and its training are in :mod:`leakage_pipeline.same_subject.embedding_model`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EmbeddingSettings:
    image_size: int = 64
    dimensions: int = 64
    width: int = 16  # channels of the first block; later blocks double it
    epochs: int = 12  # a few hundred steps at most: minutes on two shared CPU cores
    # ... and never more than this many steps, so training costs the same at any dataset size (HAM10000's 4,331
    # training lesions take 804 steps; a million images would take over 100,000).
    max_steps: int = 1000
    batch_patients: int = 64  # patients per batch, two views each
    learning_rate: float = 3e-3
    temperature: float = 0.1
    seed: int = 0
    device: str = "auto"

    def model_tag(self) -> str:
        return f"cnn{self.width}_d{self.dimensions}_{self.image_size}px_e{self.epochs}_m{self.max_steps}_s{self.seed}"


def embedding_input(image, size: int) -> np.ndarray:
    """A PIL image as the model's uint8 input (3, size, size): RGB, squeezed to a square."""
    rgb = image.convert("RGB").resize((size, size), resample=2, reducing_gap=2.0)  # 2: BILINEAR
    return np.asarray(rgb).transpose(2, 0, 1).copy()
