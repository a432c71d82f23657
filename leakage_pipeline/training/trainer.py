"""The training loop: class-weighted loss, early stopping on validation macro F1, CUDA when present.

On CUDA it trains with bf16 autocast and channels_last, keeps the uint8 images on the GPU when
they fit (else in pinned memory, copied asynchronously) and normalises there, so the GPU is not
starved by a Python data loader. On the CPU it is deterministic for a given seed (see `devices.reproducible`).
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from leakage_pipeline.devices import pick_device, reproducible
from leakage_pipeline.progress import ProgressReporter, start_progress
from leakage_pipeline.training.metrics import macro_f1
from leakage_pipeline.training.models import build_model, load_initial_weights
from leakage_pipeline.training.preprocessing import Preprocessing
from leakage_pipeline.training.settings import ClassifierSettings

# Images stay on the GPU when they take at most this share of its free memory.
_DEVICE_RESIDENT_SHARE = 0.4


@dataclass(frozen=True)
class LabelledImages:
    images: np.ndarray  # (N, C, H, W) uint8
    labels: np.ndarray  # (N,) class indices


@dataclass
class TrainResult:
    model: nn.Module  # the best epoch's weights, in eval mode
    device: torch.device
    best_epoch: int
    history: list[dict] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return float(np.median([epoch["images_per_second"] for epoch in self.history]))


class DeviceImages:
    """uint8 images where the device can reach them fast, handed out as normalised float batches."""

    def __init__(self, images: np.ndarray, preprocessing: Preprocessing, device: torch.device):
        self.device = device
        tensor = torch.from_numpy(np.ascontiguousarray(images))
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            tensor = tensor.to(device) if tensor.numel() < free * _DEVICE_RESIDENT_SHARE else tensor.pin_memory()
        self.images = tensor
        shape = (1, preprocessing.channels, 1, 1)
        self.mean = torch.tensor(preprocessing.mean, device=device).view(shape)
        self.std = torch.tensor(preprocessing.std, device=device).view(shape)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        raw = self.images[indices.to(self.images.device)].to(self.device, non_blocking=True)
        batch = (raw.float() / 255.0 - self.mean) / self.std
        return batch.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else batch


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def predict_probabilities(model: nn.Module, images: DeviceImages, batch_size: int = 256) -> np.ndarray:
    model.eval()
    outputs = []
    for start in range(0, len(images), batch_size):
        indices = torch.arange(start, min(start + batch_size, len(images)))
        with _autocast(images.device):
            logits = model(images.batch(indices))
        outputs.append(torch.softmax(logits.float(), dim=1).cpu())
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, 0), np.float32)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (mean 1 over the classes present) against class imbalance."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / (np.count_nonzero(counts) * np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights, dtype=torch.float32)


def train_classifier(
    train: LabelledImages, val: LabelledImages, num_classes: int, preprocessing: Preprocessing,
    settings: ClassifierSettings, log: Callable[[str], None] = print, progress: ProgressReporter | None = None,
) -> TrainResult:
    """Train ``settings.architecture`` on ``train``; return the epoch with the best validation macro F1.

    ``progress`` hears the training images done over all epochs (the total if none stops early).
    """
    device = pick_device(settings.device)
    torch.manual_seed(settings.seed)
    order_rng = torch.Generator().manual_seed(settings.seed)
    model = build_model(settings.architecture, preprocessing.channels, num_classes)
    if settings.initial_weights:
        fresh = load_initial_weights(model, Path(settings.initial_weights))
        log(f"initial weights from {settings.initial_weights}; left at init: {', '.join(fresh) or 'none'}")
    model = model.to(device, memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True

    train_images = DeviceImages(train.images, preprocessing, device)
    val_images = DeviceImages(val.images, preprocessing, device)
    train_labels = torch.from_numpy(train.labels).to(device)
    loss_fn = nn.CrossEntropyLoss(weight=class_weights(train.labels, num_classes).to(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, settings.epochs))
    result = TrainResult(model=model, device=device, best_epoch=0)
    best_score, best_state = -1.0, None
    # Per epoch every image but a one-image tail batch, which batch norm cannot take.
    images_per_epoch = len(train_images) - (len(train_images) % settings.batch_size == 1)
    training = start_progress(progress, settings.epochs * images_per_epoch, "images")

    with reproducible(device):
        for epoch in range(1, settings.epochs + 1):
            model.train()
            training.stage = f"epoch {epoch}/{settings.epochs}"
            started = time.perf_counter()
            total_loss, seen = 0.0, 0
            order = torch.randperm(len(train_images), generator=order_rng)
            for start in range(0, len(order), settings.batch_size):
                indices = order[start:start + settings.batch_size]
                if len(indices) < 2:  # batch norm needs two images
                    continue
                batch = train_images.batch(indices)
                flip = (torch.rand(len(indices), generator=order_rng) < 0.5).to(device)
                batch = torch.where(flip.view(-1, 1, 1, 1), batch.flip(3), batch)
                with _autocast(device):
                    loss = loss_fn(model(batch), train_labels[indices.to(device)])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach()) * len(indices)
                seen += len(indices)
                training.advance(len(indices))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - started
            scheduler.step()

            probabilities = predict_probabilities(model, val_images)
            predicted = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, int)
            score = macro_f1(val.labels, predicted, num_classes) if len(val.labels) else 0.0
            record = {"epoch": epoch, "loss": total_loss / max(seen, 1), "val_macro_f1": score,
                      "val_top1": float((predicted == val.labels).mean()) if len(val.labels) else 0.0,
                      "images_per_second": seen / elapsed if elapsed > 0 else 0.0}
            result.history.append(record)
            log(f"epoch {epoch}/{settings.epochs}: loss {record['loss']:.4f}, val macro F1 {score:.3f}, "
                f"val top-1 {record['val_top1']:.3f}, {record['images_per_second']:.0f} images/s on {device}")
            if score > best_score:
                best_score, best_state, result.best_epoch = score, copy.deepcopy(model.state_dict()), epoch
            elif epoch - result.best_epoch >= settings.patience:
                log(f"early stop: no better val macro F1 for {settings.patience} epochs; "
                    f"best epoch {result.best_epoch}")
                break
    training.finish()

    model.load_state_dict(best_state)
    model.eval()
    return result
