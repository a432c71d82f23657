"""The one way an image becomes model input, shared by training, evaluation and inference.

An image is decoded, converted to grayscale or RGB, resized to a square and stored as uint8
(C, H, W); normalisation to floats happens on the device, batch by batch, with the mean and
standard deviation measured on the training split. ``preprocessing.json`` records all of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from leakage_pipeline.audit.pixel_limit import open_image
from leakage_pipeline.storage.files import read_json, write_json

CHANNEL_MODES = {1: "L", 3: "RGB"}


@dataclass(frozen=True)
class Preprocessing:
    size: int = 64
    channels: int = 3
    # Per channel, in [0, 1] units; measured on the training split by ``with_statistics``.
    mean: tuple[float, ...] = field(default=(0.5, 0.5, 0.5))
    std: tuple[float, ...] = field(default=(0.25, 0.25, 0.25))

    def __post_init__(self) -> None:
        if self.channels not in CHANNEL_MODES:
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), not {self.channels}")
        if self.size < 8:
            raise ValueError(f"image size {self.size} is too small (at least 8 pixels)")

    @classmethod
    def for_shape(cls, size: int, channels: int) -> Preprocessing:
        return cls(size=size, channels=channels, mean=(0.5,) * channels, std=(0.25,) * channels)

    def with_statistics(self, images: np.ndarray) -> Preprocessing:
        """The same preprocessing, normalised by the channel statistics of ``images`` (N, C, H, W uint8)."""
        sample = images[:: max(1, len(images) // 4096)].astype(np.float32) / 255.0
        mean = sample.mean(axis=(0, 2, 3))
        std = np.maximum(sample.std(axis=(0, 2, 3)), 1e-3)
        return Preprocessing(self.size, self.channels, tuple(map(float, mean)), tuple(map(float, std)))

    def image_array(self, image: Image.Image) -> np.ndarray:
        """uint8 array (channels, size, size) of a decoded image."""
        # JPEG draft decoding at a reduced scale is much faster and, as the same code runs at
        # inference, consistent; the final resize then works on a smaller image.
        image.draft(CHANNEL_MODES[self.channels], (self.size * 2, self.size * 2))
        square = image.convert(CHANNEL_MODES[self.channels]).resize(
            (self.size, self.size), Image.Resampling.BILINEAR, reducing_gap=2.0
        )
        array = np.asarray(square, dtype=np.uint8)
        return array[None] if self.channels == 1 else array.transpose(2, 0, 1)

    def bytes_to_array(self, data: bytes) -> np.ndarray:
        """Decode image bytes; raises ``PIL.UnidentifiedImageError`` or ``OSError`` when they are not
        one, and :class:`ImageTooLarge` (before decoding) when the image is over the pixel cap."""
        with open_image(data) as image:
            return self.image_array(image)

    def save(self, path: Path) -> None:
        write_json(asdict(self), path)

    @classmethod
    def load(cls, path: Path) -> Preprocessing:
        values = read_json(path)
        return cls(size=values["size"], channels=values["channels"],
                   mean=tuple(values["mean"]), std=tuple(values["std"]))
