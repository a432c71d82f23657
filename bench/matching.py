"""Radius matching: ours vs band-LSH in polars, numpy brute force and a BK-tree, on the same inputs.

    python -m bench.matching [--queries 15000] [--references 330000] [--radius 8] [--scale 100000x3000000]

Inputs are skewed like real perceptual hashes (clusters, first bit always set) and uniform random.
Ours is timed as the pipeline runs it (the strategy it picks, every core) and on one core, beside
our brute-force fallback. Every method's pair count is checked against ours; a mismatch fails the
benchmark. The scale run times ours alone in a child process and reports that process's peak memory.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

from bench.timing import timed
from leakage_pipeline.audit.hamming_search import (
    BRUTE_FORCE,
    choose_strategy,
    radius_pairs,
)


def cluster_centres(rng: np.random.Generator, count: int = 2000) -> np.ndarray:
    """Common hash values, with the first bit always set as in imagehash's pHash."""
    return rng.integers(0, 2**63, count, dtype=np.uint64) | np.uint64(1 << 63)


def skewed_hashes(rng: np.random.Generator, n: int, centres: np.ndarray, flips: int = 10) -> np.ndarray:
    """Hashes scattered around shared centres, so queries and references share bands like real data."""
    hashes = centres[rng.integers(0, len(centres), n)]
    for _ in range(flips):
        hashes ^= (np.uint64(1) << rng.integers(0, 63, n).astype(np.uint64)) * (rng.random(n) < 0.5)
    return hashes


def band_lsh_polars(query: np.ndarray, reference: np.ndarray, radius: int) -> int:
    """The reference approach: radius+1 bands (pigeonhole), candidates joined per band, then verified."""
    bands = radius + 1
    edges = np.linspace(0, 64, bands + 1).astype(int)

    def banded(values: np.ndarray, name: str) -> pl.DataFrame:
        index = np.arange(len(values))
        return pl.concat([
            pl.DataFrame({
                f"{name}_index": index, f"{name}_hash": values, "band": np.full(len(values), b),
                "key": (values >> np.uint64(edges[b])) & np.uint64((1 << int(edges[b + 1] - edges[b])) - 1),
            })
            for b in range(bands)
        ])

    candidates = banded(query, "q").join(banded(reference, "r"), on=["band", "key"])
    distance = (candidates["q_hash"].to_numpy() ^ candidates["r_hash"].to_numpy())
    matched = candidates.filter(pl.Series(np.bitwise_count(distance) <= radius))
    return matched.select("q_index", "r_index").unique().height


def numpy_brute_force(query: np.ndarray, reference: np.ndarray, radius: int, block: int = 256) -> int:
    found = 0
    for start in range(0, len(query), block):
        found += int((np.bitwise_count(query[start:start + block, None] ^ reference[None, :]) <= radius).sum())
    return found


class BKTree:
    """Burkhard-Keller tree over Hamming distance, the classic metric-tree baseline."""

    def __init__(self, values: np.ndarray):
        self.root = None
        for value in values.tolist():
            self._add(value)

    def _add(self, value: int) -> None:
        if self.root is None:
            self.root = (value, {})
            return
        node = self.root
        while True:
            d = (node[0] ^ value).bit_count()
            if d not in node[1]:
                node[1][d] = (value, {})
                return
            node = node[1][d]

    def count_within(self, value: int, radius: int) -> int:
        found, stack = 0, [self.root]
        while stack:
            node_value, children = stack.pop()
            d = (node_value ^ value).bit_count()
            found += d <= radius
            stack.extend(child for edge, child in children.items() if d - radius <= edge <= d + radius)
        return found


def ours(query, reference, radius, workers=None, strategy=None) -> int:
    return len(radius_pairs(query, reference, radius, strategy=strategy, workers=workers)[0])


def peak_memory_gb() -> float:
    """This process's peak resident memory. Read from VmHWM, not getrusage: Linux carries a parent's
    ru_maxrss into a child across exec, so a child of a large benchmark would report the parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20  # kilobytes
    raise RuntimeError("no VmHWM in /proc/self/status")


def scale_run(queries: int, references: int, radius: int) -> None:
    """Ours alone on a large skewed input (run in a child process so its peak memory is its own)."""
    rng = np.random.default_rng(1)
    centres = cluster_centres(rng, 20_000)
    query, reference = skewed_hashes(rng, queries, centres), skewed_hashes(rng, references, centres)
    ours(query[:10], reference[:10_000], radius)  # compile
    start = time.perf_counter()
    pairs = ours(query, reference, radius)
    seconds = time.perf_counter() - start
    strategy = choose_strategy(query[:256], reference, radius)[0]
    peak_gb = peak_memory_gb()
    print(f"{seconds:.2f} {pairs} {strategy} {peak_gb:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=15_000)
    parser.add_argument("--references", type=int, default=330_000)
    parser.add_argument("--radius", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", default="100000x3000000", help="QxR for the scale run; 'none' skips it")
    parser.add_argument("--scale-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_child:
        scale_run(*map(int, args.scale_child.split("x")), args.radius)
        return
    rng = np.random.default_rng(0)
    ours(np.ones(4, np.uint64), np.ones(4, np.uint64), 1)  # compile outside the timings
    ours(np.ones(4, np.uint64), np.ones(4, np.uint64), 1, strategy=BRUTE_FORCE)
    print(f"radius {args.radius}; medians of {args.repeats} runs; ratio = method time / ours (all cores)\n")
    print("| input | size | method | seconds | pairs | ratio |\n|---|---|---|---|---|---|")
    centres = cluster_centres(rng)
    inputs = {
        "skewed": (skewed_hashes(rng, args.queries, centres), skewed_hashes(rng, args.references, centres)),
        "uniform": tuple(rng.integers(0, 2**64, n, dtype=np.uint64) for n in (args.queries, args.references)),
    }
    small = min(300, args.queries), min(20_000, args.references)
    for name, (query, reference) in inputs.items():
        picked = choose_strategy(query, reference, args.radius)[0]
        cases = [
            (f"{len(query)}x{len(reference)}", query, reference, [
                ("ours, one core", lambda q, r, k: ours(q, r, k, workers=1), args.repeats),
                ("ours, brute force (fallback)", lambda q, r, k: ours(q, r, k, strategy=BRUTE_FORCE), 1),
                ("band-LSH polars", band_lsh_polars, 1),
                ("numpy brute force", numpy_brute_force, 1),
            ]),
            # The BK-tree is pure Python: compared on a smaller input, ours measured on that same input.
            (f"{small[0]}x{small[1]}", query[:small[0]], reference[:small[1]],
             [("BK-tree", lambda q, r, k: sum(BKTree(r).count_within(v, k) for v in q.tolist()), 1)]),
        ]
        for size, q, r, references in cases:
            our_time, our_pairs = timed(lambda: ours(q, r, args.radius), args.repeats)
            print(f"| {name} | {size} | ours ({picked}, all cores) | {our_time:.3f} | {our_pairs} | 1.0 |")
            for label, method, repeats in references:
                ref_time, ref_pairs = timed(lambda: method(q, r, args.radius), repeats)
                if ref_pairs != our_pairs:
                    raise SystemExit(f"{label} found {ref_pairs} pairs on {name} {size}, ours {our_pairs}")
                print(f"| {name} | {size} | {label} | {ref_time:.3f} | {ref_pairs} | {ref_time / our_time:.1f}x |")
    if args.scale != "none":
        child = subprocess.run([sys.executable, "-m", "bench.matching", "--scale-child", args.scale,
                                "--radius", str(args.radius)], capture_output=True, text=True, check=True)
        seconds, pairs, strategy, peak_gb = child.stdout.split()
        print(f"\nscale, skewed {args.scale} at radius {args.radius}: ours ({strategy}, all cores) {seconds} s, "
              f"{pairs} pairs, peak memory of the whole process (inputs included) {peak_gb} GB")


if __name__ == "__main__":
    main()
