"""On the CPU a computation gives one result whatever the machine's core count (devices.reproducible)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from leakage_pipeline.devices import reproducible
from leakage_pipeline.same_subject.embedding_model import EmbeddingSettings, train_embedding

PIXELS = np.random.default_rng(0).integers(0, 255, (64, 3, 64, 64), dtype=np.uint8)
PATIENTS = np.repeat(np.arange(32), 2)


def _trained_weights(threads: int, under_reproducible: bool) -> torch.Tensor:
    torch.set_num_threads(threads)  # as on a machine with this many cores
    settings = EmbeddingSettings(epochs=2, device="cpu")
    if under_reproducible:
        with reproducible(torch.device("cpu")):
            model = train_embedding(PIXELS, PATIENTS, settings).model
    else:
        model = train_embedding(PIXELS, PATIENTS, settings).model
    return torch.cat([parameter.detach().flatten() for parameter in model.parameters()])


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_training_on_one_core_or_four_gives_the_same_weights(restore_threads):
    # Without the fixed thread count the sums split over threads differ, and so do the weights.
    assert not torch.equal(_trained_weights(1, False), _trained_weights(4, False))
    assert torch.equal(_trained_weights(1, True), _trained_weights(4, True))
    assert torch.get_num_threads() == 4 and not torch.are_deterministic_algorithms_enabled()  # restored after


def test_openmp_threads_spin_briefly_unless_the_environment_says_otherwise():
    show = "import leakage_pipeline, os; print(os.environ['GOMP_SPINCOUNT'])"
    environment = {key: value for key, value in os.environ.items() if key != "GOMP_SPINCOUNT"}
    assert subprocess.check_output([sys.executable, "-c", show], env=environment, text=True).strip() == "10000"
    explicit = subprocess.check_output([sys.executable, "-c", show], env={**environment, "GOMP_SPINCOUNT": "5"}, text=True)
    assert explicit.strip() == "5"
