"""64-bit pHash and dHash, bit-identical to ``imagehash.phash`` and ``imagehash.dhash``.

imagehash converts to 8-bit grayscale, resizes with Pillow's LANCZOS filter and compares
pixels (dHash) or DCT coefficients against their median (pHash). We do the same steps on one
grayscale conversion shared by both hashes. Bits are packed row-major with the first bit as
the most significant, so ``int(str(imagehash.phash(img)), 16)`` equals our integer.
"""

from __future__ import annotations

import numpy as np
import scipy.fftpack
from PIL import Image

_PHASH_SIZE = 32  # hash_size 8 x highfreq_factor 4, as imagehash's defaults
_DHASH_SIZE = (9, 8)  # (width, height): 8 horizontal differences per row


def pack_bits(bits: np.ndarray) -> int:
    """Row-major boolean array of 64 bits -> integer, first bit most significant."""
    return int.from_bytes(np.packbits(bits.reshape(-1)).tobytes(), "big")


def phash_from_pixels(pixels: np.ndarray) -> int:
    """pHash of the 32x32 LANCZOS-resized grayscale pixels."""
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:8, :8]
    return pack_bits(low > np.median(low))


def dhash_from_gray(gray: Image.Image) -> int:
    pixels = np.asarray(gray.resize(_DHASH_SIZE, Image.Resampling.LANCZOS))
    return pack_bits(pixels[:, 1:] > pixels[:, :-1])


def perceptual_hashes(image: Image.Image) -> tuple[int, int, float]:
    """(pHash, dHash, detail) of a decoded Pillow image.

    ``detail`` is the standard deviation of the 32x32 grayscale thumbnail: near zero for blank
    or solid frames, whose hashes carry no information and match every other blank frame.
    """
    gray = image.convert("L")
    thumbnail = np.asarray(gray.resize((_PHASH_SIZE, _PHASH_SIZE), Image.Resampling.LANCZOS))
    return phash_from_pixels(thumbnail), dhash_from_gray(gray), float(thumbnail.std())
