"""A second way to propose candidates, learned from nothing: each image's colour, as chromaticity histograms of its
centre and its surround, so a re-shot the embedding ranks low can still be verified.

Chromaticity (each pixel's share of red and of green in its R+G+B) does not change with exposure or gain, and a
histogram does not change with rotation, mirroring or a shift; the centre (where a photographed lesion usually is)
and the surround get one histogram each. Square roots of the shares (the Hellinger map) make inner products of the
unit-length result a fair similarity. Pure integer counting over the image's own pixels: the same image gives the
same descriptor on any CPU, whatever the embedding's training did there.
"""

from __future__ import annotations

import numpy as np

BINS = 16  # per chromaticity axis
# Chromaticity of skin, lesions and most photographs lies well inside the triangle; these ranges hold it.
_RED_RANGE, _GREEN_RANGE = (0.25, 0.65), (0.15, 0.40)
_CENTRE_RADIUS = 0.25  # of the half side: the inner disc is the centre, the rest the surround
_DARK = 24  # pixels darker than this (R+G+B / 3) have no reliable colour
COLOUR_DIMENSIONS = 2 * BINS * BINS  # a histogram of the centre, then one of the surround
# Names the descriptor in the feature cache: change the descriptor and bump it, and cached ones are recomputed.
COLOUR_TAG = f"colour1_{BINS}x{BINS}_r{_CENTRE_RADIUS}"


def _bin(share: np.ndarray, low: float, high: float) -> np.ndarray:
    return np.clip(((share - low) / (high - low) * BINS).astype(np.int64), 0, BINS - 1)


def colour_descriptors(images: np.ndarray) -> np.ndarray:
    """Unit-length float32 descriptors (N, COLOUR_DIMENSIONS) of uint8 images (N, 3, S, S)."""
    n, _, height, width = images.shape
    pixels = images.astype(np.int64)
    total = pixels.sum(axis=1)
    safe = np.maximum(total, 1)
    cell = _bin(pixels[:, 0] / safe, *_RED_RANGE) * BINS + _bin(pixels[:, 1] / safe, *_GREEN_RANGE)
    y, x = np.mgrid[0:height, 0:width]
    radius = np.hypot((y + 0.5) / height - 0.5, (x + 0.5) / width - 0.5) / 0.5
    region = np.broadcast_to((radius > _CENTRE_RADIUS).astype(np.int64), cell.shape)
    index = (np.arange(n)[:, None, None] * 2 + region) * BINS * BINS + cell
    counts = np.bincount(index[total >= 3 * _DARK], minlength=n * 2 * BINS * BINS).reshape(n, 2, BINS * BINS)
    shares = counts / np.maximum(counts.sum(axis=2, keepdims=True), 1)
    descriptor = np.sqrt(shares).reshape(n, COLOUR_DIMENSIONS)
    return (descriptor / np.maximum(np.linalg.norm(descriptor, axis=1, keepdims=True), 1e-12)).astype(np.float32)
