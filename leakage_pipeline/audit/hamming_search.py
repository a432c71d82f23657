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
brute force when that is cheaper. The work is cut into tasks run on threads (the kernels release
the GIL), each growing its own result arrays: blocks of queries for brute force; for multi-index,
one table at a time, so that it stays in cache, with the queries sorted by that table's key.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

BRUTE_FORCE = "brute_force"
MULTI_INDEX = "multi_index"
STRATEGIES = (BRUTE_FORCE, MULTI_INDEX)
# Substring tables are direct-addressed: 2**width offsets each; wider ones cost too much memory.
_MAX_WIDTH = 24
# Relative costs, in brute-force pair checks, of probing one table bucket (a random memory access)
# and verifying one candidate (a sequential read), fitted by least squares to one-core timings of
# every plan at radius 8 on 330k skewed and uniform references (x86-64, AVX-512); the choice is not
# sensitive to them within 2x.
_PROBE_COST = 50.0
_VERIFY_COST = 1.2
_SAMPLE_QUERIES = 256
_CHUNK = 4096  # references per brute-force chunk
_TASKS_PER_WORKER = 8


@intrinsic
def _popcount(typingctx, value):
    """LLVM's ctpop, which compiles to the POPCNT instruction."""
    signature = types.uint64(types.uint64)

    def codegen(context, builder, sig, args):
        return builder.ctpop(args[0])

    return signature, codegen


_LANES = 8  # 64-bit hashes per vector
_I1, _I32, _I64 = ir.IntType(1), ir.IntType(32), ir.IntType(64)
_VALUES = ir.VectorType(_I64, _LANES)
_IOTA = ir.Constant(_VALUES, list(range(_LANES)))
_LANE_MASK, _LANE_BITS = ir.VectorType(_I1, _LANES), ir.IntType(_LANES)


def _splat(builder, value):
    vector = builder.insert_element(ir.Constant(_VALUES, None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vector, vector, ir.Constant(ir.VectorType(_I32, _LANES), [0] * _LANES))


@intrinsic
def _collect_matches(typingctx, hashes, low, high, q, radius, earlier_masks, earlier_radii, out, found):
    """Positions ``t`` in ``low .. high`` with ``popcount(q ^ hashes[t]) <= radius``, written to
    ``out[found:]``; returns how many. A position is left out when, for some ``e``, the bits of that
    difference under ``earlier_masks[e]`` number at most ``earlier_radii[e]``: an earlier substring
    finds that pair.

    Eight hashes per step: XOR, popcount and compare as vectors, and the rare steps with a match
    compress their positions into ``out``. Portable IR; on AVX-512 it is vpopcntq and vpcompressq.
    ``hashes`` must extend ``_LANES - 1`` entries past ``high``: the last step reads them, masked out.
    """
    signature = types.int64(hashes, low, high, q, radius, earlier_masks, earlier_radii, out, found)

    def codegen(context, builder, signature, args):
        arrays = [context.make_array(signature.args[i])(context, builder, args[i]) for i in (0, 5, 6, 7)]
        hashes_data, masks_data, radii_data, out_data = (array.data for array in arrays)
        earlier_count = builder.extract_value(arrays[1].shape, 0)
        low_value, high_value, q_value, radius_value, found_value = args[1], args[2], args[3], args[4], args[8]
        popcount = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_VALUES, [_VALUES]),
                                                  f"llvm.ctpop.v{_LANES}i64")
        compress = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_VALUES, out_data.type, _LANE_MASK]),
            f"llvm.masked.compressstore.v{_LANES}i64")

        def within(difference, bits, limit):
            return builder.icmp_unsigned("<=", builder.call(popcount, [builder.and_(difference, bits)]), limit)

        count = cgutils.alloca_once_value(builder, ir.Constant(_I64, 0))
        kept = cgutils.alloca_once(builder, _LANE_MASK)
        query, limit, end = _splat(builder, q_value), _splat(builder, radius_value), _splat(builder, high_value)
        every_bit = ir.Constant(_VALUES, [-1] * _LANES)
        with cgutils.for_range_slice(builder, low_value, high_value, ir.Constant(_I64, _LANES)) as (t, _):
            values = builder.load(builder.bitcast(builder.gep(hashes_data, [t]), _VALUES.as_pointer()), align=8)
            difference = builder.xor(values, query)
            positions = builder.add(_splat(builder, t), _IOTA)
            builder.store(builder.and_(within(difference, every_bit, limit),
                                       builder.icmp_signed("<", positions, end)), kept)
            any_kept = builder.icmp_unsigned("!=", builder.bitcast(builder.load(kept), _LANE_BITS),
                                             ir.Constant(_LANE_BITS, 0))
            with builder.if_then(any_kept, likely=False):
                with cgutils.for_range(builder, earlier_count) as earlier:
                    bits = _splat(builder, builder.load(builder.gep(masks_data, [earlier.index])))
                    reached = within(difference, bits, _splat(builder, builder.load(builder.gep(radii_data, [earlier.index]))))
                    builder.store(builder.and_(builder.load(kept), builder.not_(reached)), kept)
                mask = builder.load(kept)
                n = builder.load(count)
                builder.call(compress, [positions, builder.gep(out_data, [builder.add(found_value, n)]), mask])
                builder.store(builder.add(n, builder.zext(builder.ctpop(builder.bitcast(mask, _LANE_BITS)), _I64)), count)
        return builder.load(count)

    return signature, codegen


def _padded(hashes: np.ndarray) -> np.ndarray:
    """``hashes`` followed by the ``_LANES - 1`` entries that :func:`_collect_matches` may read past the end."""
    return np.concatenate([hashes, np.zeros(_LANES - 1, np.uint64)])


@numba.njit(nogil=True, cache=True, inline="always")
def _record(query_index, q, hashes, found, n, out_query, out_position, out_distance):
    """Query index and distance for the ``n`` positions in ``hashes`` just collected at ``out_position[found:]``."""
    for k in range(found, found + n):
        out_query[k] = query_index
        out_distance[k] = _popcount(q ^ hashes[out_position[k]])


@numba.njit(nogil=True, cache=True)
def _brute_force(query, start, reference, radius, out_query, out_reference, out_distance):
    """Matches of ``query[start:]`` against every reference (``_padded``), written to the ``out_`` buffers.

    Returns (matches written, first query not done): a query whose matches may not fit is left
    whole for the next call, with bigger buffers (:func:`_drain`).
    """
    found = 0
    n_reference = reference.shape[0] - (_LANES - 1)
    no_earlier_masks, no_earlier_radii = np.zeros(0, np.uint64), np.zeros(0, np.int64)
    for i in range(start, query.shape[0]):
        q = query[i]
        found_before = found
        for first in range(0, n_reference, _CHUNK):
            last = min(first + _CHUNK, n_reference)
            if found + last - first > out_query.shape[0]:
                return found_before, i
            n = _collect_matches(reference, first, last, q, radius, no_earlier_masks, no_earlier_radii,
                                 out_reference, found)
            _record(i, q, reference, found, n, out_query, out_reference, out_distance)
            found += n
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
def _build_tables(reference, shifts, key_masks, table_starts):
    """Per substring, references sorted by substring key: bucket offsets, sorted hashes (with the
    padding :func:`_collect_matches` reads past the end) and ids (int32: half the memory traffic)."""
    m = shifts.shape[0]
    n = reference.shape[0]
    offsets = np.zeros(table_starts[m], dtype=np.int64)
    hashes = np.zeros(m * n + _LANES - 1, dtype=np.uint64)
    ids = np.empty(m * n, dtype=np.int32)
    for j in range(n):  # every substring's bucket sizes in one pass over the references
        for s in range(m):
            offsets[table_starts[s] + ((reference[j] >> np.uint64(shifts[s])) & key_masks[s]) + 1] += 1
    for s in range(m):
        for k in range(table_starts[s] + 1, table_starts[s + 1]):
            offsets[k] += offsets[k - 1]
    cursor = offsets.copy()
    for s in range(m):  # one table at a time: its bucket write heads stay in cache
        for j in range(n):
            slot = table_starts[s] + ((reference[j] >> np.uint64(shifts[s])) & key_masks[s])
            position = s * n + cursor[slot]
            hashes[position] = reference[j]
            ids[position] = j
            cursor[slot] += 1
    return offsets, hashes, ids


@numba.njit(nogil=True, cache=True)
def _multi_index(query, start, radius, substring, shifts, key_masks, in_place_masks, radii, table_starts, offsets,
                 hashes, n_reference, masks, mask_starts, out_query, out_position, out_distance):
    """Matches of ``query[start:]`` found by probing table ``substring``, but for those an earlier
    substring finds; returns like ``_brute_force``, with positions in ``hashes`` (the tables' order)
    where ``_brute_force`` gives reference indices."""
    found = 0
    earlier_masks, earlier_radii = in_place_masks[:substring], radii[:substring]
    base = table_starts[substring]
    first = substring * n_reference
    for i in range(start, query.shape[0]):
        q = query[i]
        found_before = found
        key = (q >> np.uint64(shifts[substring])) & key_masks[substring]
        for p in range(mask_starts[substring], mask_starts[substring + 1]):
            probe = key ^ masks[p]
            low, high = first + offsets[base + probe], first + offsets[base + probe + 1]
            if found + high - low > out_query.shape[0]:
                return found_before, i
            n = _collect_matches(hashes, low, high, q, radius, earlier_masks, earlier_radii, out_position, found)
            _record(i, q, hashes, found, n, out_query, out_position, out_distance)
            found += n
    return found, query.shape[0]


@numba.njit(cache=True)
def _candidates(query, shifts, key_masks, table_starts, offsets, masks, mask_starts):
    """Candidates the multi-index probes would verify for ``query`` (bucket sizes summed)."""
    total = 0
    for i in range(query.shape[0]):
        for s in range(shifts.shape[0]):
            key = (query[i] >> np.uint64(shifts[s])) & key_masks[s]
            base = table_starts[s]
            for p in range(mask_starts[s], mask_starts[s + 1]):
                probe = key ^ masks[p]
                total += offsets[base + probe + 1] - offsets[base + probe]
    return total


class MultiIndex:
    """Substring tables over ``reference`` for one plan; :meth:`search` finds every pair within ``radius``."""

    def __init__(self, reference: np.ndarray, plan: SubstringPlan):
        if len(reference) >= 2**31:
            raise ValueError(f"{len(reference)} references: the tables hold int32 ids, fewer than 2**31")
        self.plan = plan
        self.n_reference = len(reference)
        self.shifts = np.array(plan.shifts, dtype=np.int64)
        self.key_masks = np.array([(1 << w) - 1 for w in plan.widths], dtype=np.uint64)  # a substring's key bits
        self.in_place_masks = self.key_masks << self.shifts.astype(np.uint64)  # its bits where they lie in a hash
        self.radii = np.array(plan.radii, dtype=np.int64)
        self.table_starts = np.concatenate([[0], np.cumsum([2**w + 1 for w in plan.widths])]).astype(np.int64)
        self.masks, self.mask_starts = _probe_masks(plan)
        self.offsets, self.hashes, self.ids = _build_tables(reference, self.shifts, self.key_masks, self.table_starts)

    def candidates_per_query(self, query: np.ndarray) -> float:
        if not len(query):
            return 0.0
        return _candidates(query, self.shifts, self.key_masks, self.table_starts, self.offsets, self.masks,
                           self.mask_starts) / len(query)

    def cost_per_query(self, query: np.ndarray) -> float:
        """Measured work per query, in brute-force pair checks."""
        probes = sum(self.plan.probes())
        return probes * _PROBE_COST + self.candidates_per_query(query) * _VERIFY_COST

    def substring_keys(self, query: np.ndarray, substring: int) -> np.ndarray:
        return (query >> np.uint64(self.plan.shifts[substring])) & self.key_masks[substring]

    def search(self, query: np.ndarray, radius: int, substring: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs table ``substring`` finds (and no earlier one): query indices, reference ids, distances."""
        query_index, position, distance = _drain(lambda start, *out: _multi_index(
            query, start, np.uint64(radius), substring, self.shifts, self.key_masks, self.in_place_masks, self.radii,
            self.table_starts, self.offsets, self.hashes, self.n_reference, self.masks, self.mask_starts, *out), len(query))
        # Reference ids are looked up once per pair found, not for every candidate verified.
        return query_index, self.ids[position].astype(np.int64), distance

    def tasks(self, query: np.ndarray, radius: int, blocks: int) -> list[tuple[np.ndarray, Callable]]:
        """The search cut into (query indices, search over those queries) tasks, ``blocks`` per table.

        One table at a time stays in cache, and within a task queries come sorted by that table's
        key, so neighbours probe the same buckets.
        """
        tasks = []
        for substring in range(len(self.plan.widths)):
            order = np.argsort(self.substring_keys(query, substring), kind="stable")
            tasks.extend((indices, functools.partial(self.search, query[indices], radius, substring))
                         for indices in np.array_split(order, blocks) if len(indices))
        return tasks


def _brute_force_tasks(query: np.ndarray, reference: np.ndarray, radius: int,
                       blocks: int) -> list[tuple[np.ndarray, Callable]]:
    reference = _padded(reference)

    def search(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _drain(lambda start, *out: _brute_force(block, start, reference, np.uint64(radius), *out), len(block))

    return [(indices, functools.partial(search, query[indices]))
            for indices in np.array_split(np.arange(len(query)), blocks) if len(indices)]


def _run(tasks: list[tuple[np.ndarray, Callable]], workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run the tasks on ``workers`` threads (the kernels release the GIL) and concatenate their
    results, with each task's query indices mapped back to the whole query array."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(lambda task: task[1](), tasks))
    return (np.concatenate([indices[part[0]] for (indices, _), part in zip(tasks, parts, strict=True)]),
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
    """Indices into ``query`` and ``reference`` and the distance of every pair within ``radius``, in no
    particular order.

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
    blocks = workers * _TASKS_PER_WORKER  # enough tasks that no thread idles while another finishes a big one
    if index is not None:
        return _run(index.tasks(query, radius, -(-blocks // len(index.plan.widths))), workers)
    return _run(_brute_force_tasks(query, reference, radius, blocks), workers)
