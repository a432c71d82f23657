"""Pillow's 8-bit LANCZOS resize, reimplemented in numba bit for bit, for the hashes' thumbnails.

imagehash shrinks the grayscale image twice (32x32 for pHash, 9x8 for dHash) with Pillow's
LANCZOS filter; those two resizes cost more than decoding the JPEG. This is the same algorithm
as Pillow's ``src/libImaging/Resample.c`` (verified against Pillow 11 to 13; the tests compare
every pixel against Pillow on many sizes): per axis, filter weights computed in double
precision with the C library's ``sin``, normalised, rounded to 22-bit fixed point; a horizontal
pass whose 8-bit output is rounded and clipped, then a vertical pass over it. The integer dot
products are exact, so LLVM may reorder and vectorise them without changing a bit.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
import PIL

_PILLOW_13 = int(PIL.__version__.split(".")[0]) >= 13

_SUPPORT = 3.0  # LANCZOS is a sinc windowed by a sinc three times as wide
_PRECISION_BITS = 32 - 8 - 2
_HALF = 1 << (_PRECISION_BITS - 1)


@numba.njit(cache=True)
def _sinc(x):
    if x == 0.0:
        return 1.0
    x = x * math.pi
    return math.sin(x) / x


@numba.njit(cache=True)
def _lanczos(x):
    if -3.0 <= x and x < 3.0:
        return _sinc(x) * _sinc(x / 3)
    return 0.0


@numba.njit(cache=True)
def _coefficients(in_size, out_size):
    """(bounds, fixed-point weights) as Pillow's ``precompute_coeffs`` and ``normalize_coeffs_8bpc``."""
    scale = np.float64(np.float32(in_size)) / out_size  # Pillow subtracts the box edges in float
    filterscale = max(scale, 1.0)
    support = _SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    bounds = np.zeros((out_size, 2), np.int64)
    weights = np.zeros((out_size, ksize), np.float64)  # integers, in float64 for the sums below
    taps = np.zeros(ksize, np.float64)
    inverse = 1.0 / filterscale
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)  # int() truncates toward zero, as C's cast
        xmax = min(int(center + support + 0.5), in_size) - xmin
        total = 0.0
        for x in range(xmax):
            w = _lanczos((x + xmin - center + 0.5) * inverse)
            taps[x] = w
            total += w
        for x in range(xmax):
            w = taps[x] / total if total != 0.0 else taps[x]
            weights[xx, x] = float(int(w * (1 << _PRECISION_BITS) + (-0.5 if w < 0 else 0.5)))
        bounds[xx, 0] = xmin
        bounds[xx, 1] = xmax
    return bounds, weights


@functools.lru_cache(maxsize=4096)
def coefficients(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Cached per size pair: a dataset has few distinct image sizes."""
    return _coefficients(in_size, out_size)


@numba.njit(cache=True, inline="always")
def _clip8(acc):
    value = acc >> _PRECISION_BITS
    return 0 if value < 0 else (255 if value > 255 else value)


# Sums run in float64: every product and partial sum is an integer below 2**53, so they are exact
# in any order, and ``reassoc`` lets LLVM vectorise the dot products without changing a bit.
@numba.njit(nogil=True, cache=True, fastmath={"reassoc", "contract"})
def _horizontal(image, bounds, weights, first_row, rows, first_column):
    """Rows ``first_row`` .. ``first_row + rows`` resampled to ``len(bounds)`` columns; column 0 of
    ``image`` is source column ``first_column``.

    Four rows go through each output column's weights together, so every weight loaded serves
    four sums; the rows are converted to float64 once, into a buffer padded with zero rows.
    """
    out = np.empty((rows, bounds.shape[0]), np.uint8)
    block = np.zeros((4, image.shape[1]), np.float64)
    for y in range(0, rows, 4):
        count = min(4, rows - y)
        for r in range(4):
            for x in range(image.shape[1]):
                block[r, x] = image[first_row + y + r, x] if r < count else 0.0
        for xx in range(bounds.shape[0]):
            start = bounds[xx, 0] - first_column
            stop = start + bounds[xx, 1]
            r0, r1, r2, r3 = block[0, start:stop], block[1, start:stop], block[2, start:stop], block[3, start:stop]
            k = weights[xx]
            s0 = s1 = s2 = s3 = 0.0
            for x in range(r0.shape[0]):
                w = k[x]
                s0 += r0[x] * w
                s1 += r1[x] * w
                s2 += r2[x] * w
                s3 += r3[x] * w
            for r, total in enumerate((s0, s1, s2, s3)):
                if r < count:
                    out[y + r, xx] = _clip8(np.int64(total) + _HALF)
    return out


@numba.njit(nogil=True, cache=True, fastmath={"reassoc"})
def _vertical(image, bounds, weights, first_row, first_column, columns):
    """Columns ``first_column`` .. ``first_column + columns`` resampled to ``len(bounds)`` rows; row 0
    of ``image`` is source row ``first_row``."""
    out = np.empty((bounds.shape[0], columns), np.uint8)
    acc = np.empty(columns, np.float64)
    for yy in range(bounds.shape[0]):
        acc[:] = 0.0
        for y in range(bounds[yy, 1]):
            row = image[bounds[yy, 0] - first_row + y, first_column:first_column + columns]
            k = weights[yy, y]
            for xx in range(columns):
                acc[xx] += np.float64(row[xx]) * k
        for xx in range(columns):
            out[yy, xx] = _clip8(np.int64(acc[xx]) + _HALF)
    return out


def _span(bounds: np.ndarray) -> tuple[int, int]:
    """First source index the pass reads, and how many it reads."""
    first = int(bounds[0, 0])
    return first, int(bounds[-1, 0] + bounds[-1, 1]) - first


def vertical_pass_first(in_width: int, in_height: int, width: int, height: int) -> bool:
    """Pillow 13 resizes vertically first when the height shrinks by more than twice as many pixels as
    the width (python-pillow/Pillow#9549); earlier releases always start with the horizontal pass."""
    return _PILLOW_13 and in_height > height and in_height - height > 2 * (in_width - width)


def lanczos_resize(gray: np.ndarray, width: int, height: int) -> np.ndarray:
    """``Image.fromarray(gray).resize((width, height), LANCZOS)`` as an array, for 8-bit grayscale."""
    in_height, in_width = gray.shape
    need_horizontal, need_vertical = width != in_width, height != in_height
    horizontal = coefficients(in_width, width)
    vertical = coefficients(in_height, height)
    # Like Pillow, the first pass covers only the source rows (or columns) the second one reads.
    if need_horizontal and need_vertical and vertical_pass_first(in_width, in_height, width, height):
        first_column, columns = _span(horizontal[0])
        reduced = _vertical(gray, *vertical, 0, first_column, columns)
        return _horizontal(reduced, *horizontal, 0, height, first_column)
    if need_horizontal:
        first_row, rows = _span(vertical[0]) if need_vertical else (0, in_height)
        gray = _horizontal(gray, *horizontal, first_row, rows, 0)
        if not need_vertical:
            return gray
        return _vertical(gray, *vertical, first_row, 0, width)
    if need_vertical:
        return _vertical(gray, *vertical, 0, 0, in_width)
    return gray.copy()


@functools.lru_cache(maxsize=4096)
def _stacked_coefficients(in_size: int, out_sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Several horizontal coefficient sets as one, weights zero-padded to the widest kernel."""
    sets = [coefficients(in_size, size) for size in out_sizes]
    weights = np.zeros((sum(size for size in out_sizes), max(w.shape[1] for _, w in sets)), np.float64)
    row = 0
    for _, w in sets:
        weights[row:row + len(w), :w.shape[1]] = w
        row += len(w)
    return np.concatenate([bounds for bounds, _ in sets]), weights


def lanczos_resize_many(gray: np.ndarray, sizes: tuple[tuple[int, int], ...]) -> list[np.ndarray]:
    """``lanczos_resize`` to each (width, height) of ``sizes``, with one horizontal pass for all.

    The horizontal pass dominates the cost and reads every source pixel; shared, each block of
    rows is converted once and stays in cache for every size's weights.
    """
    in_height, in_width = gray.shape
    if any(width == in_width or height == in_height or vertical_pass_first(in_width, in_height, width, height)
           for width, height in sizes):
        return [lanczos_resize(gray, width, height) for width, height in sizes]
    verticals = [coefficients(in_height, height) for _, height in sizes]
    spans = [_span(bounds) for bounds, _ in verticals]
    first_row = min(first for first, _ in spans)
    last_row = max(first + count for first, count in spans)
    reduced = _horizontal(gray, *_stacked_coefficients(in_width, tuple(width for width, _ in sizes)),
                          first_row, last_row - first_row, 0)
    results, column = [], 0
    for (width, _), vertical in zip(sizes, verticals, strict=True):
        results.append(_vertical(reduced, *vertical, first_row, column, width))
        column += width
    return results
