"""A trained model on disk (``model.pt`` + ``preprocessing.json``) and predictions from it.

``model.pt`` holds the weights, the architecture and the class names; ``preprocessing.json``
the image size, channels and normalisation. Evaluation, ``predict`` and ``serve`` all load a
model through :class:`Classifier`, so they preprocess exactly as training did.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from leakage_pipeline.devices import pick_device
from leakage_pipeline.storage.files import replace_atomically
from leakage_pipeline.training.models import build_model
from leakage_pipeline.training.preprocessing import Preprocessing
from leakage_pipeline.training.trainer import DeviceImages, predict_probabilities

MODEL_FILE = "model.pt"
PREPROCESSING_FILE = "preprocessing.json"


def save_model(directory: Path, model: nn.Module, architecture: str, class_names: list[str],
               preprocessing: Preprocessing) -> Path:
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    saved = {"state_dict": state, "architecture": architecture, "class_names": class_names,
             "in_channels": preprocessing.channels}
    # Preprocessing first: a model.pt on disk always has the preprocessing.json it was trained with.
    preprocessing.save(directory / PREPROCESSING_FILE)
    return replace_atomically(directory / MODEL_FILE, lambda partial: torch.save(saved, partial))


class ModelFileError(ValueError):
    """A model directory whose files are missing, corrupt, or not a model this pipeline saved."""


_SAVED_KEYS = ("state_dict", "architecture", "class_names", "in_channels")


def _read_model_file(directory: Path) -> dict:
    path = directory / MODEL_FILE
    if not path.exists():
        raise ModelFileError(f"{directory} holds no {MODEL_FILE}: train a model first")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch reports a bad file as a pickle, zip, EOF or runtime error
        raise ModelFileError(f"{path} is not a readable model file ({type(error).__name__}: {error})") from error
    lacking = [key for key in _SAVED_KEYS if not isinstance(saved, dict) or key not in saved]
    if lacking:
        raise ModelFileError(f"{path} is not a model saved by leakage-pipeline: it lacks {', '.join(lacking)}")
    return saved


def class_names(directory: Path) -> list[str]:
    return list(_read_model_file(directory)["class_names"])


@dataclass
class Classifier:
    model: nn.Module
    class_names: list[str]
    preprocessing: Preprocessing
    device: torch.device

    @classmethod
    def load(cls, directory: Path, device: str = "auto") -> Classifier:
        """The model in ``directory``, or :class:`ModelFileError` saying what is wrong with its files."""
        saved = _read_model_file(directory)
        try:
            model = build_model(saved["architecture"], saved["in_channels"], len(saved["class_names"]))
            model.load_state_dict(saved["state_dict"])
            preprocessing = Preprocessing.load(directory / PREPROCESSING_FILE)
        except (ValueError, TypeError, KeyError, RuntimeError, OSError) as error:
            raise ModelFileError(f"the model in {directory} cannot be rebuilt "
                                 f"({type(error).__name__}: {error})") from error
        target = pick_device(device)
        return cls(model=model.to(target).eval(), class_names=list(saved["class_names"]),
                   preprocessing=preprocessing, device=target)

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities of preprocessed uint8 images (N, C, H, W)."""
        return predict_probabilities(self.model, DeviceImages(images, self.preprocessing, self.device))

    def predict_bytes(self, data: bytes) -> dict:
        """Predicted class and every class's probability for one encoded image."""
        probabilities = self.probabilities(self.preprocessing.bytes_to_array(data)[None])[0]
        return {
            "predicted": self.class_names[int(probabilities.argmax())],
            "probabilities": {name: round(float(p), 6) for name, p in zip(self.class_names, probabilities,
                                                                          strict=True)},
        }
