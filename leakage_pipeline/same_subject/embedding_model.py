"""A small embedding CNN trained on the audited dataset's own training split, so that images of one
subject land close together whatever the crop, zoom, rotation, mirror or lighting.

Contrastive training (NT-Xent, as in SimCLR): each batch holds distinct training patients, two
views of each. A patient with two or more images contributes two different images, so the model
learns what stays the same across real re-shots; a patient with one image contributes two
augmentations of it. Augmentations (rotation at any angle, mirror, crop and zoom, brightness,
contrast, colour) run batched on the device. Nothing is downloaded: the model starts from random
weights. It runs on CUDA when present (the device choice of :mod:`leakage_pipeline.training.trainer`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from leakage_pipeline.devices import pick_device
from leakage_pipeline.same_subject.embedding import EmbeddingSettings


def _block(inputs: int, outputs: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(outputs), nn.ReLU(inplace=True))


class EmbeddingNet(nn.Module):
    """Four stages of 3x3 convolutions, global average pooling and a two-layer head; unit-length output."""

    def __init__(self, dimensions: int = 64, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            _block(3, width, stride=2), _block(width, width), nn.MaxPool2d(2),
            _block(width, 2 * width), _block(2 * width, 2 * width), nn.MaxPool2d(2),
            _block(2 * width, 4 * width), nn.MaxPool2d(2),
            _block(4 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(4 * width, 4 * width), nn.ReLU(inplace=True),
                                  nn.Linear(4 * width, dimensions))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.features(images)), dim=1)


def _standardise(images: torch.Tensor) -> torch.Tensor:
    """Each image to zero mean and unit spread over all its pixels: exposure and gain stop mattering."""
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - mean) / images.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)


def prepare(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, S, S) to the model's float input."""
    return _standardise(images.float() / 255)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random view of each uint8 image: rotated at any angle, maybe mirrored, cropped and zoomed,
    with new brightness, contrast and colour balance; returned as the model's float input."""
    n, device = images.shape[0], images.device

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, *shape, generator=generator, device=device)

    angle = uniform(0, 2 * math.pi)
    zoom = uniform(0.75, 1.0)  # the share of the image side the view covers
    mirror = torch.where(uniform(0, 1) < 0.5, -1.0, 1.0)
    shift = uniform(-1, 1, 2) * (1 - zoom)[:, None]
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    theta = torch.stack([torch.stack([cos * mirror, -sin, shift[:, 0]], 1),
                         torch.stack([sin * mirror, cos, shift[:, 1]], 1)], 1)
    pixels = images.float() / 255
    grid = F.affine_grid(theta, list(pixels.shape), align_corners=False)
    views = F.grid_sample(pixels, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gain = uniform(0.7, 1.3, 1, 1, 1) * uniform(0.9, 1.1, 3, 1, 1)  # exposure, then colour balance
    mean = views.mean(dim=(1, 2, 3), keepdim=True)
    contrast = uniform(0.7, 1.3, 1, 1, 1)
    views = ((views - mean) * contrast + mean) * gain + uniform(-0.1, 0.1, 1, 1, 1)
    return _standardise(views.clamp(0, 1))


def nt_xent(embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """Contrastive loss of 2B unit vectors where rows i and i+B are two views of one patient."""
    half = embeddings.shape[0] // 2
    similarity = embeddings @ embeddings.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(half, 2 * half), torch.arange(half)]).to(embeddings.device)
    return F.cross_entropy(similarity, target)


@dataclass
class TrainedEmbedding:
    model: EmbeddingNet
    device: torch.device
    history: list[dict]
    seconds: float
    images: int
    patients: int
    steps: int


def _view_pairs(groups: list[np.ndarray], order: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two image indices per patient in ``order``: two different images when the patient has them."""
    first, second = np.empty(len(order), np.int64), np.empty(len(order), np.int64)
    for slot, patient in enumerate(order):
        members = groups[patient]
        if len(members) >= 2:
            first[slot], second[slot] = rng.choice(members, 2, replace=False)
        else:
            first[slot] = second[slot] = members[0]
    return first, second


def train_embedding(images: np.ndarray, patient_codes: np.ndarray, settings: EmbeddingSettings = EmbeddingSettings(),
                    log=None) -> TrainedEmbedding:
    """Train on ``images`` (N, 3, S, S uint8) of the training split with each image's patient (an int code)."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    device = pick_device(settings.device)
    generator = torch.Generator(device=device).manual_seed(settings.seed)
    model = EmbeddingNet(settings.dimensions, settings.width).to(device)
    pixels = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    order_by_patient = np.argsort(patient_codes, kind="stable")
    boundaries = np.flatnonzero(np.diff(patient_codes[order_by_patient])) + 1
    groups = np.split(order_by_patient, boundaries)
    batch = min(settings.batch_patients, len(groups))
    steps_per_epoch = max(1, len(groups) // batch)
    total_steps = min(settings.epochs * steps_per_epoch, settings.max_steps)
    optimiser = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, settings.learning_rate, total_steps=total_steps)
    history, started = [], time.perf_counter()
    model.train()
    for epoch in range(math.ceil(total_steps / steps_per_epoch)):
        patients = rng.permutation(len(groups))
        losses = []
        for step in range(min(steps_per_epoch, total_steps - epoch * steps_per_epoch)):
            first, second = _view_pairs(groups, patients[step * batch:(step + 1) * batch], rng)
            index = torch.from_numpy(np.concatenate([first, second])).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                loss = nt_xent(model(augment(pixels[index], generator)).float(), settings.temperature)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            losses.append(float(loss.detach()))
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
        if log is not None and (epoch + 1) % 10 == 0:
            log(f"embedding epoch {epoch + 1}/{settings.epochs}: loss {history[-1]['loss']:.3f}")
    model.eval()
    return TrainedEmbedding(model=model, device=device, history=history, seconds=time.perf_counter() - started,
                            images=len(images), patients=len(groups), steps=total_steps)


@torch.inference_mode()
def embed(model: EmbeddingNet, images: np.ndarray, device: torch.device | str = "cpu", batch: int = 512) -> np.ndarray:
    """Unit-length float32 embeddings (N, dimensions) of uint8 images (N, 3, S, S)."""
    model.eval()
    parts = [model(prepare(torch.from_numpy(np.ascontiguousarray(images[start:start + batch])).to(device))).float().cpu()
             for start in range(0, len(images), batch)]
    return torch.cat(parts).numpy() if parts else np.zeros((0, model.head[-1].out_features), np.float32)


def save_model(model: EmbeddingNet, settings: EmbeddingSettings, path, extra: dict) -> None:
    torch.save({"state_dict": model.state_dict(), "dimensions": settings.dimensions, "width": settings.width,
                **extra}, path)


def load_model(path) -> tuple[EmbeddingNet, dict]:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = EmbeddingNet(payload["dimensions"], payload["width"])
    model.load_state_dict(payload["state_dict"])
    model.eval()
    return model, {k: v for k, v in payload.items() if k != "state_dict"}
