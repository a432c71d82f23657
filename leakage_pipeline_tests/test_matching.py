import numpy as np
import polars as pl
import pytest

from leakage_pipeline.audit.hamming_search import (
    BRUTE_FORCE,
    MULTI_INDEX,
    STRATEGIES,
    _drain,
    choose_strategy,
    radius_pairs,
    substring_plans,
)
from leakage_pipeline.audit.matching import PAIR_SCHEMA, cross_split_pairs, split_pairs


def clustered_hashes(rng, n, centres=40, flips=6):
    """Skewed hashes like real pHashes: clusters around a few centres, the top bit always set."""
    base = rng.integers(0, 2**63, centres, dtype=np.uint64) | np.uint64(1 << 63)
    picks = base[rng.integers(0, centres, n)]
    for _ in range(flips):
        picks ^= (np.uint64(1) << rng.integers(0, 64, n).astype(np.uint64)) * (rng.random(n) < 0.6)
    return picks


def brute_force(query, reference, radius):
    distance = np.bitwise_count(query[:, None] ^ reference[None, :])
    qi, ri = np.nonzero(distance <= radius)
    return set(zip(qi.tolist(), ri.tolist(), distance[qi, ri].tolist()))


@pytest.mark.parametrize("strategy", [None, *STRATEGIES])
@pytest.mark.parametrize("kind", ["uniform", "clustered"])
@pytest.mark.parametrize("radius", [0, 1, 3, 8, 12, 17])
def test_radius_search_equals_brute_force(kind, radius, strategy):
    rng = np.random.default_rng(radius)
    if kind == "uniform":
        query, reference = (rng.integers(0, 2**64, n, dtype=np.uint64) for n in (1500, 4003))
        query[:50] = reference[:50] ^ np.uint64(0b1011)  # guaranteed near pairs
        query[50:60] = reference[60:70] ^ np.uint64((1 << 64) - 1 - 0b11)  # far apart: 62 bits differ
    else:
        query, reference = clustered_hashes(rng, 1500), clustered_hashes(rng, 4003)
    qi, ri, d = radius_pairs(query, reference, radius, strategy=strategy, workers=2)
    found = set(zip(qi.tolist(), ri.tolist(), d.tolist()))
    assert len(found) == len(qi)  # no pair twice, although several substrings can find it
    assert found == brute_force(query, reference, radius)


@pytest.mark.parametrize("radius", range(0, 21))
def test_every_substring_plan_covers_the_radius(radius):
    # Pigeonhole: a pair within the radius is within r_i on some substring when sum(r_i + 1) > radius.
    for plan in substring_plans(radius):
        assert sum(plan.widths) == 64 and plan.shifts[0] == 0
        assert sum(r + 1 for r in plan.radii) > radius


def test_the_choice_follows_the_data():
    rng = np.random.default_rng(0)
    uniform = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    assert choose_strategy(uniform[:500], uniform, 8)[0] == MULTI_INDEX
    # Every hash equal: every probe lands in one full bucket, so scanning everything is cheaper.
    same = np.full(20_000, 12345, dtype=np.uint64)
    assert choose_strategy(same[:500], same, 8)[0] == BRUTE_FORCE
    assert choose_strategy(uniform[:500], uniform, 30)[0] == BRUTE_FORCE  # too wide a radius to index


def test_results_that_outgrow_the_buffers_are_complete():
    # Every query matches every reference: the kernels must stop, and resume with bigger buffers.
    same = np.full(300, 7, dtype=np.uint64)
    for strategy in STRATEGIES:
        qi, ri, _ = radius_pairs(same, same, 2, strategy=strategy, workers=1)
        assert len(qi) == 300 * 300 and len(set(zip(qi.tolist(), ri.tolist()))) == 300 * 300
    calls = []

    def kernel(start, out_query, out_reference, out_distance):
        calls.append(len(out_query))
        if len(out_query) < 20_000:
            return 0, start  # not even one query fits
        out_query[:3] = start
        return 3, start + 1

    _drain(kernel, 2)
    assert calls == [4096, 8192, 16384, 32768, 32768]


def test_radius_search_handles_empty_inputs():
    empty = np.empty(0, dtype=np.uint64)
    assert all(len(a) == 0 for a in radius_pairs(empty, np.ones(3, dtype=np.uint64), 4))


def test_split_pairs_query_later_splits_against_earlier_ones():
    assert split_pairs(["train", "val", "test"]) == [("test", "train"), ("test", "val"), ("val", "train")]


def test_cross_split_pairs_equal_brute_force_over_all_criteria():
    rng = np.random.default_rng(5)
    n = 900
    phash, dhash = clustered_hashes(rng, n, centres=30), clustered_hashes(rng, n, centres=10, flips=4)
    sha = [f"s{i}" for i in range(n)]
    sha[10] = sha[701] = "copy"  # equal bytes whose hashes differ after this
    dhash[701] = ~dhash[10]
    phash[701] = ~phash[10]
    status = ["ok"] * n
    status[5] = "unreadable"
    images = pl.DataFrame({
        "image_uri": [f"i{i}" for i in range(n)], "location": [f"/i{i}" for i in range(n)],
        "patient_id": [f"p{i // 3}" for i in range(n)], "label": [str(i % 4) for i in range(n)],
        "split": [["train", "val", "test"][i % 3] for i in range(n)],
        "status": status, "sha256": sha, "phash": phash, "dhash": dhash,
        "detail": np.full(n, 20.0, dtype=np.float32),
    })
    radius = 6
    pairs = cross_split_pairs(images, ["train", "val", "test"], radius)
    assert pairs.schema == pl.Schema(PAIR_SCHEMA)
    rank = {"train": 0, "val": 1, "test": 2}
    expected = set()
    rows = images.to_dicts()
    for q in rows:
        for r in rows:
            if rank[q["split"]] <= rank[r["split"]]:
                continue
            hashed = q["status"] == r["status"] == "ok"
            near = hashed and min((q["phash"] ^ r["phash"]).bit_count(), (q["dhash"] ^ r["dhash"]).bit_count()) <= radius
            if near or q["sha256"] == r["sha256"]:
                expected.add((q["image_uri"], r["image_uri"]))
    assert set(zip(pairs["query_image_uri"], pairs["reference_image_uri"])) == expected
    assert pairs.height == len(expected)
    copy = pairs.filter(pl.col("sha256_equal"))
    assert copy.height == 1 and copy["phash_distance"].item() == 64
    assert pairs.filter(pl.col("query_image_uri") == "i5")["phash_distance"].null_count() == \
        pairs.filter(pl.col("query_image_uri") == "i5").height
