"""Exact radius search over 64-bit hashes: every (query, reference) pair with Hamming distance <= radius.

Two exact strategies, compiled with numba and run over threads:

* **brute force**: every query against every reference with the hardware popcount. Its cost is
  fixed, query count x reference count, whatever the data.
* **multi-index hashing** (Norouzi et al.): the 64 bits are cut into ``m`` substrings, each with
  a radius ``r_i`` such that ``sum(r_i + 1) > radius``. By the pigeonhole principle a pair within
  ``radius`` is within ``r_i`` on at least one substring, so probing each substring's table with
  every key within ``r_i`` of the query's finds every pair; each candidate is verified on all 64
  bits and kept only at the first substring that can find it, so no pair is reported twice.

:func:`radius_pairs` picks per call: it plans the cheapest substring split for the radius,
measures the candidates that plan would verify on a sample of the queries (skewed data, like
real perceptual hashes, makes buckets far fuller than uniform bits suggest), and falls back to
brute force when that is cheaper. Queries are cut into blocks searched on threads (the kernels
release the GIL), each block growing its own result arrays.
"""

from __future__ import annotations

import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

BRUTE_FORCE = "brute_force"
MULTI_INDEX = "multi_index"
STRATEGIES = (BRUTE_FORCE, MULTI_INDEX)
# Substring tables are direct-addressed: 2**width offsets each; wider ones cost too much memory.
_MAX_WIDTH = 24
# Relative costs, in brute-force pair checks, of probing one table bucket (a random memory access)
# and verifying one candidate (a sequential read), fitted to timings of every plan at radius 8 on
# 330k uniform references (x86-64, AVX-512); the choice is not sensitive to them within 2x.
_PROBE_COST = 80.0
_VERIFY_COST = 5.0
_SAMPLE_QUERIES = 256
_CHUNK = 4096  # references per brute-force chunk


@intrinsic
def _popcount(typingctx, value):
    """LLVM's ctpop, which compiles to the POPCNT instruction."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, sig, args):
        return builder.ctpop(args[0])

    return signature, codegen


@numba.njit(nogil=True, cache=True)
def _brute_force(query, start, reference, radius, out_query, out_reference, out_distance):
    """Matches of ``query[start:]`` against every reference, written to the ``out_`` buffers.

    Returns (matches written, first query not done): a query whose matches do not fit is left
    whole for the next call, with bigger buffers (:func:`_drain`). References are scanned in
    chunks by a loop that only counts, which LLVM vectorises; a chunk is scanned again to record
    its matches only when it has any.
    """
    found = 0
    for i in range(start, query.shape[0]):
        q = query[i]
        found_before = found
        for first in range(0, reference.shape[0], _CHUNK):
            chunk = reference[first:first + _CHUNK]
            hits = 0
            for j in range(chunk.shape[0]):
                if _popcount(q ^ chunk[j]) <= radius:
                    hits += 1
            if hits == 0:
                continue
            if found + hits > out_query.shape[0]:
                return found_before, i
            for j in range(chunk.shape[0]):
                d = _popcount(q ^ chunk[j])
                if d <= radius:
                    out_query[found] = i
                    out_reference[found] = first + j
                    out_distance[found] = d
                    found += 1
    return found, query.shape[0]


def _drain(kernel, n_query: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Call ``kernel(start, out_query, out_reference, out_distance)`` until every query is done.

    The kernels never reallocate (numba would count references on every loop iteration that
    might reassign an array, many times slower than the work); when a query's matches do not
    fit they stop, and the next call gets buffers twice as big.
    """
    capacity = max(4096, 4 * n_query)
    parts, start = [], 0
    while start < n_query:
        out_query, out_reference = np.empty(capacity, np.int64), np.empty(capacity, np.int64)
        out_distance = np.empty(capacity, np.uint8)
        found, next_start = kernel(start, out_query, out_reference, out_distance)
        parts.append((out_query[:found], out_reference[:found], out_distance[:found]))
        if next_start == start:
            capacity *= 2
        start = next_start
    return tuple(np.concatenate([part[k] for part in parts]) for k in range(3))


@dataclass(frozen=True)
class SubstringPlan:
    """How the 64 bits are cut: substring ``i`` is ``widths[i]`` bits from ``shifts[i]``, radius ``radii[i]``."""

    shifts: tuple[int, ...]
    widths: tuple[int, ...]
    radii: tuple[int, ...]

    def probes(self) -> list[int]:
        """Keys probed per query in each substring: all within the substring's radius."""
        return [sum(math.comb(w, k) for k in range(r + 1)) for w, r in zip(self.widths, self.radii, strict=True)]

    def uniform_cost(self, references: int) -> float:
        """Expected work per query, in brute-force pair checks, if the bits were uniform."""
        return sum(p * (_PROBE_COST + _VERIFY_COST * references / 2**w)
                   for p, w in zip(self.probes(), self.widths, strict=True))


def substring_plans(radius: int) -> list[SubstringPlan]:
    """Every valid plan with 3 to 8 substrings of near-equal width and radii spread evenly."""
    plans = []
    for m in range(3, 9):
        base, extra = divmod(64, m)
        widths = tuple(base + (i < extra) for i in range(m))
        if max(widths) > _MAX_WIDTH:
            continue
        shifts = tuple(int(x) for x in np.cumsum((0,) + widths[:-1]))
        # sum(r_i + 1) must exceed the radius: spread radius + 1 - m over the substrings, widest first.
        spare = max(0, radius + 1 - m)
        radii = tuple(spare // m + (i < spare % m) for i in range(m))
        plans.append(SubstringPlan(shifts, widths, radii))
    return plans


def _probe_masks(plan: SubstringPlan) -> tuple[np.ndarray, np.ndarray]:
    """XOR masks of every key within each substring's radius, flattened, with per-substring starts."""
    masks, starts = [], [0]
    for width, r in zip(plan.widths, plan.radii, strict=True):
        for k in range(r + 1):
            for bits in itertools.combinations(range(width), k):
                masks.append(sum(1 << b for b in bits))
        starts.append(len(masks))
    return np.array(masks, dtype=np.uint64), np.array(starts, dtype=np.int64)


@numba.njit(cache=True)
def _build_tables(reference, shifts, widths, table_starts):
    """Per substring, references sorted by substring key: bucket offsets, sorted hashes and ids."""
    m = shifts.shape[0]
    n = reference.shape[0]
    offsets = np.zeros(table_starts[m], dtype=np.int64)
    hashes = np.empty(m * n, dtype=np.uint64)
    ids = np.empty(m * n, dtype=np.int64)
    for s in range(m):
        base = table_starts[s]
        mask = (np.uint64(1) << np.uint64(widths[s])) - np.uint64(1)
        for j in range(n):
            offsets[base + ((reference[j] >> np.uint64(shifts[s])) & mask) + 1] += 1
        size = (1 << widths[s]) + 1
        for k in range(1, size):
            offsets[base + k] += offsets[base + k - 1]
        cursor = offsets[base:base + size - 1].copy()
        for j in range(n):
            key = (reference[j] >> np.uint64(shifts[s])) & mask
            position = s * n + cursor[key]
            hashes[position] = reference[j]
            ids[position] = j
            cursor[key] += 1
    return offsets, hashes, ids


@numba.njit(nogil=True, cache=True)
def _multi_index(query, start, radius, shifts, widths, radii, table_starts, offsets, hashes, ids, n_reference,
                 masks, mask_starts, out_query, out_reference, out_distance):
    """Matches of ``query[start:]`` found by probing the substring tables; returns like ``_brute_force``."""
    found = 0
    capacity = out_query.shape[0]
    m = shifts.shape[0]
    for i in range(start, query.shape[0]):
        q = query[i]
        found_before = found
        for s in range(m):
            width_mask = (np.uint64(1) << np.uint64(widths[s])) - np.uint64(1)
            key = (q >> np.uint64(shifts[s])) & width_mask
            base = table_starts[s]
            for p in range(mask_starts[s], mask_starts[s + 1]):
                probe = key ^ masks[p]
                low = s * n_reference + offsets[base + probe]
                bucket = hashes[low:s * n_reference + offsets[base + probe + 1]]
                # Most buckets hold no match: a counting pass, which LLVM vectorises, skips them.
                hits = 0
                for t in range(bucket.shape[0]):
                    if _popcount(q ^ bucket[t]) <= radius:
                        hits += 1
                if hits == 0:
                    continue
                for t in range(bucket.shape[0]):
                    difference = q ^ bucket[t]
                    d = _popcount(difference)
                    if d > radius:
                        continue
                    # Kept only at the first substring whose probes reach it. The earlier substrings
                    # are all checked, without an early exit: that branch is a coin toss the CPU
                    # cannot predict, slower than the few popcounts it would save.
                    earlier = 0
                    for e in range(s):
                        sub_mask = (np.uint64(1) << np.uint64(widths[e])) - np.uint64(1)
                        earlier += _popcount((difference >> np.uint64(shifts[e])) & sub_mask) <= radii[e]
                    if earlier:
                        continue
                    if found == capacity:
                        return found_before, i
                    out_query[found] = i
                    out_reference[found] = ids[low + t]
                    out_distance[found] = d
                    found += 1
    return found, query.shape[0]


@numba.njit(cache=True)
def _candidates(query, shifts, widths, table_starts, offsets, masks, mask_starts):
    """Candidates the multi-index probes would verify for ``query`` (bucket sizes summed)."""
    total = 0
    for i in range(query.shape[0]):
        for s in range(shifts.shape[0]):
            width_mask = (np.uint64(1) << np.uint64(widths[s])) - np.uint64(1)
            key = (query[i] >> np.uint64(shifts[s])) & width_mask
            base = table_starts[s]
            for p in range(mask_starts[s], mask_starts[s + 1]):
                probe = key ^ masks[p]
                total += offsets[base + probe + 1] - offsets[base + probe]
    return total


class MultiIndex:
    """Substring tables over ``reference`` for one plan; :meth:`search` finds every pair within ``radius``."""

    def __init__(self, reference: np.ndarray, plan: SubstringPlan):
        self.plan = plan
        self.n_reference = len(reference)
        self.shifts = np.array(plan.shifts, dtype=np.int64)
        self.widths = np.array(plan.widths, dtype=np.int64)
        self.radii = np.array(plan.radii, dtype=np.int64)
        self.table_starts = np.concatenate([[0], np.cumsum([2**w + 1 for w in plan.widths])]).astype(np.int64)
        self.masks, self.mask_starts = _probe_masks(plan)
        self.offsets, self.hashes, self.ids = _build_tables(reference, self.shifts, self.widths, self.table_starts)

    def candidates_per_query(self, query: np.ndarray) -> float:
        if not len(query):
            return 0.0
        return _candidates(query, self.shifts, self.widths, self.table_starts, self.offsets, self.masks,
                           self.mask_starts) / len(query)

    def cost_per_query(self, query: np.ndarray) -> float:
        """Measured work per query, in brute-force pair checks."""
        probes = sum(self.plan.probes())
        return probes * _PROBE_COST + self.candidates_per_query(query) * _VERIFY_COST

    def search(self, query: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _drain(lambda start, *out: _multi_index(
            query, start, np.uint64(radius), self.shifts, self.widths, self.radii, self.table_starts, self.offsets,
            self.hashes, self.ids, self.n_reference, self.masks, self.mask_starts, *out), len(query))


def _in_blocks(search, query: np.ndarray, workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``search(block)`` over blocks of queries on ``workers`` threads (the kernels release the
    GIL) and concatenate the results in query order, with indices into the whole ``query``."""
    edges = np.linspace(0, len(query), max(1, min(len(query), workers * 8)) + 1).astype(np.int64)
    spans = [(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(lambda span: search(query[span[0]:span[1]]), spans))
    return (np.concatenate([part[0] + a for part, (a, _) in zip(parts, spans, strict=True)]),
            np.concatenate([part[1] for part in parts]), np.concatenate([part[2] for part in parts]))


def cheapest_plan(radius: int, references: int) -> SubstringPlan | None:
    plans = substring_plans(radius)
    return min(plans, key=lambda p: p.uniform_cost(references)) if plans else None


def choose_strategy(query: np.ndarray, reference: np.ndarray, radius: int) -> tuple[str, MultiIndex | None]:
    """The cheaper exact strategy for this input, with the index already built when it is multi-index."""
    plan = cheapest_plan(radius, len(reference))
    if plan is None or plan.uniform_cost(len(reference)) >= len(reference):
        return BRUTE_FORCE, None
    index = MultiIndex(reference, plan)
    sample = query[np.linspace(0, len(query) - 1, min(len(query), _SAMPLE_QUERIES)).astype(np.int64)]
    if index.cost_per_query(sample) >= len(reference):
        return BRUTE_FORCE, None
    return MULTI_INDEX, index


def radius_pairs(
    query: np.ndarray, reference: np.ndarray, radius: int, strategy: str | None = None, workers: int | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices into ``query`` and ``reference`` and the distance of every pair within ``radius``.

    ``strategy`` forces one of :data:`STRATEGIES`; by default the cheaper one for the input is used.
    ``workers`` threads share the queries (default: one per core).
    """
    query = np.ascontiguousarray(query, dtype=np.uint64)
    reference = np.ascontiguousarray(reference, dtype=np.uint64)
    if query.size == 0 or reference.size == 0 or radius < 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.uint8)
    workers = workers or os.cpu_count() or 1
    index = None
    if strategy is None:
        strategy, index = choose_strategy(query, reference, radius)
    elif strategy == MULTI_INDEX:
        index = MultiIndex(reference, cheapest_plan(radius, len(reference)))
    elif strategy != BRUTE_FORCE:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")
    if index is not None:
        return _in_blocks(lambda block: index.search(block, radius), query, workers)
    return _in_blocks(lambda block: _drain(
        lambda start, *out: _brute_force(block, start, reference, np.uint64(radius), *out), len(block)),
        query, workers)
