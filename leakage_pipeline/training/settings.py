"""How a model is trained: the one definition of every training knob and its default.

Torch-free on purpose: the Dagster code location reads these names and defaults without
loading torch, which only the training process imports.
"""

from __future__ import annotations

from dataclasses import dataclass

SMALL_CNN = "small_cnn"
RESNET18 = "resnet18"
ARCHITECTURES = (SMALL_CNN, RESNET18)


@dataclass(frozen=True)
class ClassifierSettings:
    """The classifier's own training knobs, as :func:`~leakage_pipeline.training.trainer.train_classifier` takes
    them; the Dagster resource ``TrainingSettings`` offers each one under the same name and default."""

    architecture: str = SMALL_CNN
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6  # epochs without a better validation macro F1 before stopping
    seed: int = 0
    device: str = "auto"  # "auto" picks CUDA when available
    initial_weights: str | None = None  # a state dict file to start from
