"""64-bit pHash and dHash, bit-identical to ``imagehash.phash`` and ``imagehash.dhash``.

imagehash converts to 8-bit grayscale, resizes with Pillow's LANCZOS filter and compares
pixels (dHash) or DCT coefficients against their median (pHash). We do the same steps on one
grayscale conversion shared by both hashes, with the resizes done by :mod:`lanczos` (Pillow's
algorithm in numba, several times faster, same bits). Bits are packed row-major with the first
bit as the most significant, so ``int(str(imagehash.phash(img)), 16)`` equals our integer.

In the opt-in *fast* mode a JPEG is decoded by the codec at reduced scale (1/2 to 1/8) straight
to grayscale, which is much cheaper than a full RGB decode; its hashes are close to, not equal
to, the exact ones, so the hash cache records the mode of every hash and never mixes the two.
"""

from __future__ import annotations

import numpy as np
import scipy.fftpack
from PIL import Image

HASH_MODE_EXACT = "exact"
HASH_MODE_FAST = "fast"
HASH_MODES = (HASH_MODE_EXACT, HASH_MODE_FAST)
HASH_BITS = 64  # each hash's length: a Hamming radius is at most this
_PHASH_SIZE = 32  # hash_size 8 x highfreq_factor 4, as imagehash's defaults
_DHASH_SIZE = (9, 8)  # (width, height): 8 horizontal differences per row
# Fast mode asks the JPEG decoder for at least this many pixels a side: the 32x32 thumbnail
# still comes from a LANCZOS reduction of at least 4x, as in the exact path for typical images.
_FAST_DRAFT_SIDE = 4 * _PHASH_SIZE


def pack_bits(bits: np.ndarray) -> int:
    """Row-major boolean array of 64 bits -> integer, first bit most significant."""
    return int.from_bytes(np.packbits(bits.reshape(-1)).tobytes(), "big")


def phash_from_pixels(pixels: np.ndarray) -> int:
    """pHash of the 32x32 LANCZOS-resized grayscale pixels."""
    dct = scipy.fftpack.dct(scipy.fftpack.dct(pixels, axis=0), axis=1)
    low = dct[:8, :8]
    return pack_bits(low > np.median(low))


def dhash_from_pixels(pixels: np.ndarray) -> int:
    """dHash of the 9x8 LANCZOS-resized grayscale pixels."""
    return pack_bits(pixels[:, 1:] > pixels[:, :-1])


def prepare(image: Image.Image, mode: str) -> None:
    """Before ``load()``: in fast mode, let a JPEG decode at reduced scale, already grayscale."""
    if mode == HASH_MODE_FAST:
        image.draft("L", (_FAST_DRAFT_SIDE, _FAST_DRAFT_SIDE))


def perceptual_hashes(image: Image.Image) -> tuple[int, int, float]:
    """(pHash, dHash, detail) of a decoded Pillow image.

    ``detail`` is the standard deviation of the 32x32 grayscale thumbnail: near zero for blank
    or solid frames, whose hashes carry no information and match every other blank frame.
    """
    # The numba kernel loads with the first image hashed, not when the Dagster code location loads.
    from leakage_pipeline.audit.lanczos import lanczos_resize_many

    gray = image if image.mode == "L" else image.convert("L")  # converting L to L would only copy it
    thumbnail, gradient = lanczos_resize_many(np.asarray(gray), ((_PHASH_SIZE, _PHASH_SIZE), _DHASH_SIZE))
    return phash_from_pixels(thumbnail), dhash_from_pixels(gradient), float(thumbnail.std())
