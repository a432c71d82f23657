"""Cross-split duplicate pairs: equal bytes (sha256) or perceptual hashes within a radius.

Splits are ordered from training to test; every later split is queried against every
earlier one (test vs train and val, val vs train), which is the direction leakage flows.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from leakage_pipeline.audit.image_hashing import STATUS_OK
from leakage_pipeline.progress import ProgressReporter, start_progress

PERCEPTUAL_HASHES = ("phash", "dhash")
# Per image, what a pair row carries from each side.
SIDE_COLUMNS = ("image_uri", "location", "patient_id", "label", "split")

PAIR_SCHEMA = {
    **{f"query_{c}": pl.String for c in SIDE_COLUMNS},
    **{f"reference_{c}": pl.String for c in SIDE_COLUMNS},
    "query_detail": pl.Float32,
    "reference_detail": pl.Float32,
    "sha256_equal": pl.Boolean,
    "phash_distance": pl.Int32,
    "dhash_distance": pl.Int32,
}


def closeness() -> pl.Expr:
    """A pair's smaller perceptual distance; 64 (as far as can be) where either side has no hash."""
    return pl.min_horizontal("phash_distance", "dhash_distance").fill_null(64)


def split_pairs(split_order: list[str]) -> list[tuple[str, str]]:
    """(query split, reference split) for every later split against every earlier one, test first."""
    return [
        (split_order[q], split_order[r])
        for q in range(len(split_order) - 1, 0, -1)
        for r in range(q)
    ]


def _candidate_indices(query: pl.DataFrame, reference: pl.DataFrame, max_radius: int) -> np.ndarray:
    """Unique (query row, reference row) index pairs that match under any criterion."""
    # The numba kernels load when pairs are searched, not when the Dagster code location loads.
    from leakage_pipeline.audit.hamming_search import radius_pairs

    found = []
    q_ok = query.with_row_index("qi").filter(pl.col("status") == STATUS_OK)
    r_ok = reference.with_row_index("ri").filter(pl.col("status") == STATUS_OK)
    for column in PERCEPTUAL_HASHES:
        qi, ri, _ = radius_pairs(q_ok[column].to_numpy(), r_ok[column].to_numpy(), max_radius)
        found.append(np.stack([q_ok["qi"].to_numpy()[qi], r_ok["ri"].to_numpy()[ri]], axis=1))
    exact = (
        query.with_row_index("qi").drop_nulls("sha256")
        .join(reference.with_row_index("ri").drop_nulls("sha256"), on="sha256")
        .select("qi", "ri")
    )
    found.append(exact.to_numpy().reshape(-1, 2))
    return np.unique(np.concatenate(found).astype(np.int64), axis=0)


def cross_split_pairs(
    images: pl.DataFrame, split_order: list[str], max_radius: int, progress: ProgressReporter | None = None,
) -> pl.DataFrame:
    """Every cross-split pair with equal sha256 or a pHash/dHash distance <= ``max_radius``.

    ``images`` has one row per image: SIDE_COLUMNS, status, sha256, phash, dhash, detail.
    Distances are filled for both hashes on every pair (null when either side has no hash).
    ``progress`` hears how many split pairs are searched.
    """
    parts = []
    searched = start_progress(progress, len(split_pairs(split_order)), "split pairs")
    for query_split, reference_split in split_pairs(split_order):
        query = images.filter(pl.col("split") == query_split)
        reference = images.filter(pl.col("split") == reference_split)
        pairs = _candidate_indices(query, reference, max_radius)
        searched.advance()
        if not len(pairs):
            continue
        q = query[pairs[:, 0]]
        r = reference[pairs[:, 1]]
        columns = {f"{side}_{c}": frame[c] for side, frame in (("query", q), ("reference", r))
                   for c in (*SIDE_COLUMNS, "detail")}
        columns["sha256_equal"] = (q["sha256"] == r["sha256"]).fill_null(False)
        for name in PERCEPTUAL_HASHES:
            columns[f"{name}_distance"] = np.bitwise_count(
                q[name].fill_null(0).to_numpy() ^ r[name].fill_null(0).to_numpy()
            ).astype(np.int32)
        both_hashed = (q["status"] == STATUS_OK) & (r["status"] == STATUS_OK)
        parts.append(
            pl.DataFrame(columns).with_columns(
                pl.when(both_hashed).then(pl.col(f"{name}_distance")).alias(f"{name}_distance")
                for name in PERCEPTUAL_HASHES
            )
        )
    searched.finish()
    if not parts:
        return pl.DataFrame(schema=PAIR_SCHEMA)
    return pl.concat(parts).cast(PAIR_SCHEMA).select(PAIR_SCHEMA.keys())
