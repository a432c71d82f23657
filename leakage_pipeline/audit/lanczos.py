"""Pillow's 8-bit LANCZOS resize, reimplemented in numba bit for bit, for the hashes' thumbnails.

imagehash shrinks the grayscale image twice (32x32 for pHash, 9x8 for dHash) with Pillow's
LANCZOS filter; those two resizes cost more than decoding the JPEG. This is the same algorithm
as Pillow's ``src/libImaging/Resample.c`` (verified against Pillow 11 to 13; the tests compare
every pixel against Pillow on many sizes): per axis, filter weights computed in double
precision with the C library's ``sin``, normalised, rounded to 22-bit fixed point; a horizontal
pass whose 8-bit output is rounded and clipped, then a vertical pass over it. The integer dot
products are exact in the arithmetic each pass uses, so the order of the sums changes no bit.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
import PIL
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

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


# The horizontal pass reads every source pixel and dominates the cost. Its dot products run on
# 16-bit integers: pixels fit, and each 22-bit weight splits exactly into a high and a low 16-bit
# part, k = 256 * high + low. Multiply-adds of 16-bit pairs into 32-bit sums (pmaddwd, or one
# VNNI instruction) do 32 products per instruction, four times float64's; the sums wrap modulo
# 2**32 like Pillow's own int32 arithmetic, and the total fits an int32, so every bit is kept.
_LANES = 32  # 16-bit taps per vector; kernels are zero-padded to a multiple of it
_ROWS = 4  # rows that share each weight load
_I16, _I32 = ir.IntType(16), ir.IntType(32)
_TAPS = ir.VectorType(_I16, _LANES)
_PRODUCTS = ir.VectorType(_I32, _LANES)
_SUMS = ir.VectorType(_I32, _LANES // 2)
_EVEN = ir.Constant(_SUMS, list(range(0, _LANES, 2)))
_ODD = ir.Constant(_SUMS, list(range(1, _LANES, 2)))
_HIGH_SHIFT = ir.Constant(_SUMS, [8] * (_LANES // 2))


def _multiply_add_pairs(builder, a, b):
    """pmaddwd in portable IR: products of sign-extended 16-bit lanes, adjacent products summed.
    LLVM's x86 backend matches this shape to pmaddwd, and an add after it to vpdpwssd."""
    products = builder.mul(builder.sext(a, _PRODUCTS), builder.sext(b, _PRODUCTS))
    return builder.add(builder.shuffle_vector(products, products, _EVEN),
                       builder.shuffle_vector(products, products, _ODD))


@intrinsic
def _fixed_point_dots(typingctx, block, start, high, low, vectors):
    """Rows 0..3 of the int16 ``block`` from column ``start``, dotted with the split weights
    ``high`` and ``low`` over ``vectors`` x ``_LANES`` taps: four int32 fixed-point sums."""
    if not (isinstance(block, types.Array) and block.dtype == types.int16 and block.ndim == 2 and block.layout == "C"):
        return None
    signature = types.UniTuple(types.int32, _ROWS)(block, start, high, low, vectors)

    def codegen(context, builder, signature, args):
        block_value, start_value, high_value, low_value, vectors_value = args
        pixels = context.make_array(signature.args[0])(context, builder, block_value)
        high_taps = context.make_array(signature.args[2])(context, builder, high_value).data
        low_taps = context.make_array(signature.args[3])(context, builder, low_value).data
        width = builder.extract_value(pixels.shape, 1)
        first = builder.gep(pixels.data, [start_value])
        rows = [builder.gep(first, [builder.mul(width, ir.Constant(width.type, r))]) for r in range(_ROWS)]
        zero = ir.Constant(_SUMS, None)
        high_sums = [cgutils.alloca_once_value(builder, zero) for _ in range(_ROWS)]
        low_sums = [cgutils.alloca_once_value(builder, zero) for _ in range(_ROWS)]

        def load(pointer, offset):
            return builder.load(builder.bitcast(builder.gep(pointer, [offset]), _TAPS.as_pointer()), align=2)

        with cgutils.for_range(builder, vectors_value) as loop:
            offset = builder.mul(loop.index, ir.Constant(loop.index.type, _LANES))
            high_weights, low_weights = load(high_taps, offset), load(low_taps, offset)
            for row, high_sum, low_sum in zip(rows, high_sums, low_sums, strict=True):
                taps = load(row, offset)
                builder.store(builder.add(builder.load(high_sum), _multiply_add_pairs(builder, taps, high_weights)), high_sum)
                builder.store(builder.add(builder.load(low_sum), _multiply_add_pairs(builder, taps, low_weights)), low_sum)
        reduce_add = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I32, [_SUMS]), f"llvm.vector.reduce.add.v{_LANES // 2}i32")
        totals = [builder.call(reduce_add, [builder.add(builder.shl(builder.load(high_sum), _HIGH_SHIFT),
                                                        builder.load(low_sum))])
                  for high_sum, low_sum in zip(high_sums, low_sums, strict=True)]
        return context.make_tuple(builder, signature.return_type, totals)

    return signature, codegen


@functools.lru_cache(maxsize=4096)
def _horizontal_weights(in_size: int, out_sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bounds, high, low) for one horizontal pass to several widths at once: the int16 split of
    each size's weights, stacked, zero-padded to a whole number of vectors."""
    sets = [coefficients(in_size, size) for size in out_sizes]
    taps = max(weights.shape[1] for _, weights in sets)
    fixed = np.zeros((sum(out_sizes), taps + -taps % _LANES), np.int64)
    row = 0
    for _, weights in sets:
        fixed[row:row + len(weights), :weights.shape[1]] = weights
        row += len(weights)
    high = fixed >> 8
    return np.concatenate([bounds for bounds, _ in sets]), high.astype(np.int16), (fixed - (high << 8)).astype(np.int16)


@numba.njit(nogil=True, cache=True)
def _horizontal(image, bounds, high, low, first_row, rows, first_column):
    """Rows ``first_row`` .. ``first_row + rows`` resampled to ``len(bounds)`` columns; column 0 of
    ``image`` is source column ``first_column``.

    Each block of four rows is widened to int16 once, into a buffer whose zero padding covers
    the last vector of the widest kernel; padding taps have zero weight.
    """
    out = np.empty((rows, bounds.shape[0]), np.uint8)
    block = np.zeros((_ROWS, image.shape[1] + _LANES), np.int16)
    for y in range(0, rows, _ROWS):
        count = min(_ROWS, rows - y)
        for r in range(_ROWS):
            for x in range(image.shape[1]):
                block[r, x] = image[first_row + y + r, x] if r < count else 0
        for xx in range(bounds.shape[0]):
            totals = _fixed_point_dots(block, bounds[xx, 0] - first_column, high[xx], low[xx],
                                       (bounds[xx, 1] + _LANES - 1) // _LANES)
            for r in range(count):
                out[y + r, xx] = _clip8(np.int64(totals[r]) + _HALF)
    return out


# The vertical pass reads the horizontal pass's few columns (or, when Pillow goes vertical first,
# the whole image once per output row, which is rare). Its sums run in float64: every product
# and partial sum is an integer below 2**53, exact in any order, so ``reassoc`` may vectorise them.
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
    horizontal = _horizontal_weights(in_width, (width,))
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


def lanczos_resize_many(gray: np.ndarray, sizes: tuple[tuple[int, int], ...]) -> list[np.ndarray]:
    """``lanczos_resize`` to each (width, height) of ``sizes``, with one horizontal pass for all.

    The horizontal pass dominates the cost and reads every source pixel; shared, each block of
    rows is widened once and stays in cache for every size's weights.
    """
    in_height, in_width = gray.shape
    if any(width == in_width or height == in_height or vertical_pass_first(in_width, in_height, width, height)
           for width, height in sizes):
        return [lanczos_resize(gray, width, height) for width, height in sizes]
    verticals = [coefficients(in_height, height) for _, height in sizes]
    spans = [_span(bounds) for bounds, _ in verticals]
    first_row = min(first for first, _ in spans)
    last_row = max(first + count for first, count in spans)
    reduced = _horizontal(gray, *_horizontal_weights(in_width, tuple(width for width, _ in sizes)),
                          first_row, last_row - first_row, 0)
    results, column = [], 0
    for (width, _), vertical in zip(sizes, verticals, strict=True):
        results.append(_vertical(reduced, *vertical, first_row, column, width))
        column += width
    return results
