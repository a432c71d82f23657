"""HAM10000 lesions as a same-subject benchmark: a split by lesion with real re-photographed queries, and its scores.

One photo of half the lesions photographed two or more times is a query (in val or test), the lesion's other
photos are references in train; the other repeated lesions stay whole in train, where the threshold is calibrated
(a split whose training has no repeated lesions cannot be calibrated); lesions photographed once are distractors
on every side. The
lesion id is the truth: a query is found when an accepted pair ties it to a train photo of its lesion,
and an accepted pair is true when both photos show one lesion.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from leakage_pipeline.storage.output_files import OutputFiles

DISTRACTOR_SHARES = {"train": 0.7, "val": 0.15, "test": 0.15}
QUERY_LESION_SHARE = 0.5


def lesion_split_manifest(ham_dir: Path, out_csv: Path, seed: int = 0) -> pl.DataFrame:
    """Write (and return) the manifest with a ``split`` column: queries, references and distractors by lesion."""
    manifest = pl.read_csv(ham_dir / "manifest.csv", infer_schema=False).sort("image_path")
    rng = np.random.default_rng(seed)
    split_of: dict[str, str] = {}
    for _, group in sorted(manifest.group_by("lesion_id"), key=lambda item: item[0][0]):
        paths = group["image_path"].to_list()
        if len(paths) == 1:
            split_of[paths[0]] = str(rng.choice(list(DISTRACTOR_SHARES), p=list(DISTRACTOR_SHARES.values())))
            continue
        # Half the repeated lesions stay whole in train: calibration needs lesions photographed again there.
        query = paths[int(rng.integers(len(paths)))] if rng.random() < QUERY_LESION_SHARE else None
        for path in paths:
            split_of[path] = ("val" if rng.random() < 0.5 else "test") if path == query else "train"
    frame = manifest.with_columns(
        image_path=pl.lit(str(ham_dir.resolve()) + "/") + pl.col("image_path"),
        split=pl.col("image_path").replace_strict(split_of))
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    frame.write_csv(out_csv)
    return frame


def _rate(hits: int, total: int) -> str:
    return f"{hits / total:.3f} ({hits}/{total})" if total else "– (0)"


def lesion_scores(manifest: pl.DataFrame, out: Path) -> tuple[list[list], dict]:
    """Rows for hashes and the matcher side by side (recall@1/@5, threshold, precision, recall), and the stage summary."""
    files = OutputFiles(out)
    report = json.loads(files.report_json.read_text())
    lesion_of = dict(manifest.select("image_path", "lesion_id").iter_rows())
    train_lesions = set(manifest.filter(pl.col("split") == "train")["lesion_id"].to_list())
    queries = [uri for uri, lesion, split in manifest.select("image_path", "lesion_id", "split").iter_rows()
               if split != "train" and lesion in train_lesions]

    def is_true(frame: pl.DataFrame) -> np.ndarray:
        return np.array([lesion_of[q] == lesion_of[r] for q, r in
                         frame.select("query_image_uri", "reference_image_uri").iter_rows()], bool)

    def found(frame: pl.DataFrame) -> set[str]:
        return {q for q, ok in zip(frame["query_image_uri"].to_list(), is_true(frame)) if ok}

    def row(name: str, ranked: pl.DataFrame | None, threshold: str, accepted: pl.DataFrame) -> list:
        recalls = ["–", "–"]
        if ranked is not None:
            hit = ranked.with_columns(true=pl.Series(is_true(ranked))).filter(pl.col("true"))
            recalls = [_rate(hit.filter(pl.col("order") <= k)["query_image_uri"].n_unique(), len(queries)) for k in (1, 5)]
        true = is_true(accepted)
        return [name, *recalls, threshold, _rate(int(true.sum()), len(true)),
                _rate(len(found(accepted) & set(queries)), len(queries))]

    hashes = pl.read_parquet(files.near_duplicate_pairs).sort("query_image_uri", "phash_distance")
    by_phash = hashes.with_columns(order=pl.col("phash_distance").rank("ordinal").over("query_image_uri"))
    trusted = report["trusted_radius"]
    from leakage_pipeline.audit.report import informative_trusted_pairs

    hash_accepted = informative_trusted_pairs(hashes, trusted, report["blank_frames"]["min_detail"])
    same = pl.read_parquet(files.same_subject_pairs).sort("query_image_uri", "rank")
    summary = json.loads(files.same_subject_summary.read_text())
    trusted_text = ", ".join(f"{n} ≤ {r}" for n, r in trusted.items() if r is not None) or "sha256 only"
    rows = [
        row("hashes (pHash distance, within the max radius)", by_phash, f"trusted: sha256, {trusted_text}", hash_accepted),
        row("matcher: embedding cosine", same.with_columns(order=pl.col("rank")), "–", same.clear()),
        row("matcher: + keypoint verification", same.with_columns(
            order=pl.col("inliers").rank("ordinal", descending=True).over("query_image_uri")),
            f"≥ {summary['calibration']['threshold']} (calibrated)", same.filter(pl.col("accepted"))),
    ]
    return rows, summary
