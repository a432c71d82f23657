"""Exact radius search over 64-bit hashes: every (query, reference) pair with Hamming distance <= radius.

A brute-force scan in numba with the hardware popcount; queries are spread over threads.
It counts matches per query first, then fills preallocated arrays, so memory is exactly
what the result needs.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic


@intrinsic
def _popcount(typingctx, value):
    """LLVM's ctpop, which compiles to the POPCNT instruction."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, sig, args):
        return builder.ctpop(args[0])

    return signature, codegen


@numba.njit(parallel=True, cache=True)
def _count_matches(query, reference, radius):
    counts = np.zeros(query.shape[0], dtype=np.int64)
    for i in numba.prange(query.shape[0]):
        q = query[i]
        found = 0
        for j in range(reference.shape[0]):
            if _popcount(q ^ reference[j]) <= radius:
                found += 1
        counts[i] = found
    return counts


@numba.njit(parallel=True, cache=True)
def _fill_matches(query, reference, radius, offsets, query_index, reference_index, distance):
    for i in numba.prange(query.shape[0]):
        q = query[i]
        slot = offsets[i]
        for j in range(reference.shape[0]):
            d = _popcount(q ^ reference[j])
            if d <= radius:
                query_index[slot] = i
                reference_index[slot] = j
                distance[slot] = d
                slot += 1


def radius_pairs(query: np.ndarray, reference: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into ``query`` and ``reference`` and the distance of every pair within ``radius``."""
    query = np.ascontiguousarray(query, dtype=np.uint64)
    reference = np.ascontiguousarray(reference, dtype=np.uint64)
    if query.size == 0 or reference.size == 0 or radius < 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.uint8)
    counts = _count_matches(query, reference, np.uint64(radius))
    offsets = np.zeros(query.shape[0], dtype=np.int64)
    np.cumsum(counts[:-1], out=offsets[1:])
    total = int(counts.sum())
    query_index = np.empty(total, dtype=np.int64)
    reference_index = np.empty(total, dtype=np.int64)
    distance = np.empty(total, dtype=np.uint8)
    _fill_matches(query, reference, np.uint64(radius), offsets, query_index, reference_index, distance)
    return query_index, reference_index, distance
