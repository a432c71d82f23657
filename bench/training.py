"""Training throughput: our training loop vs a plain DataLoader loop, same model, same images.

Ours keeps the uint8 images on the device (or in pinned memory), normalises there, and on CUDA
trains with bf16 autocast and channels_last. The reference is the loop most projects start with:
a ``DataLoader`` over float32 tensors, fp32, default memory format. Both train the same
architecture for the same number of images; the table gives images/s and the ratio, on the CPU
and, when one is present, on CUDA (with the GPU's utilisation sampled by ``nvidia-smi``).

    python -m bench.training [--images 2048] [--epochs 2]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import threading
import time

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from leakage_pipeline.training.models import build_model
from leakage_pipeline.training.preprocessing import Preprocessing
from leakage_pipeline.training.settings import RESNET18, SMALL_CNN, ClassifierSettings
from leakage_pipeline.training.trainer import LabelledImages, train_classifier

CLASSES = 5


def build_images(count: int, size: int, seed: int = 0) -> LabelledImages:
    """Smooth class-dependent images (a blob whose size is the class), not noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, count)
    y, x = np.mgrid[:size, :size] / size
    images = np.empty((count, 3, size, size), np.uint8)
    for i, label in enumerate(labels):
        cy, cx = rng.uniform(0.3, 0.7, 2)
        blob = np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (0.01 + 0.01 * label))
        tone = rng.uniform(0.5, 1.0, 3)[:, None, None]
        images[i] = np.clip((0.3 + 0.6 * blob) * tone * 255 + rng.normal(0, 6, (3, size, size)), 0, 255)
    return LabelledImages(images, labels.astype(np.int64))


class GpuUtilisation:
    """Samples ``nvidia-smi`` utilisation while the block runs; None without nvidia-smi."""

    def __enter__(self):
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.2):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.samples.append(int(out.stdout.split()[0]))

    def __exit__(self, *_):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def median(self) -> float | None:
        return float(np.median(self.samples)) if self.samples else None


def ours(data: LabelledImages, architecture: str, device: str, epochs: int, batch: int) -> tuple[float, float | None]:
    preprocessing = Preprocessing.for_shape(data.images.shape[-1], 3)
    val = LabelledImages(data.images[:64], data.labels[:64])
    settings = ClassifierSettings(architecture=architecture, epochs=epochs, batch_size=batch, device=device,
                             patience=epochs)
    with GpuUtilisation() as gpu:
        result = train_classifier(data, val, CLASSES, preprocessing, settings, log=lambda _: None)
    return float(np.median([e["images_per_second"] for e in result.history[1:] or result.history])), gpu.median


def reference(data: LabelledImages, architecture: str, device: str, epochs: int, batch: int) -> float:
    torch.manual_seed(0)
    target = torch.device(device)
    model = build_model(architecture, 3, CLASSES).to(target)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    dataset = TensorDataset(torch.from_numpy(data.images).float().div(255).sub(0.5).div(0.25),
                            torch.from_numpy(data.labels))
    rates = []
    for _ in range(epochs):
        started, seen = time.perf_counter(), 0
        for images, labels in DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True):
            loss = nn.functional.cross_entropy(model(images.to(target)), labels.to(target))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(labels)
        if target.type == "cuda":
            torch.cuda.synchronize()
        rates.append(seen / (time.perf_counter() - started))
    return float(np.median(rates[1:] or rates))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    cases = [(SMALL_CNN, 32, 64), (SMALL_CNN, 64, 64), (RESNET18, 64, 64)]
    if torch.cuda.is_available():
        cases += [(RESNET18, 224, 128)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no CUDA device"))
    print("| device | model | px | batch | ours images/s | plain DataLoader images/s | ours / plain | GPU util |")
    print("|---|---|---|---|---|---|---|---|")
    for device in devices:
        for architecture, size, batch in cases:
            if device == "cpu" and size > 64:
                continue
            count = args.images if device == "cpu" else args.images * 8
            data = build_images(count, size)
            ours_rate, utilisation = ours(data, architecture, device, args.epochs, batch)
            plain_rate = reference(data, architecture, device, args.epochs, batch)
            util = "–" if utilisation is None else f"{utilisation:.0f}%"
            print(f"| {device} | {architecture} | {size} | {batch} | {ours_rate:.0f} | {plain_rate:.0f} | "
                  f"{ours_rate / plain_rate:.2f}x | {util} |", flush=True)


if __name__ == "__main__":
    main()
