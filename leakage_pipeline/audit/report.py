"""Leakage report statistics, from images, cross-split pairs and split integrity.

Everything here is a pure function of polars frames; the result is a JSON-ready dict and a
markdown rendering of it. The sections are the ones a reviewer asks for, in this order:
counts, split integrity, threshold table, label agreement against chance, the patients
behind the matches, the flagged query images, and the verdict on the headline metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from leakage_pipeline.audit.integrity import IntegrityFindings
from leakage_pipeline.audit.matching import PERCEPTUAL_HASHES, closeness
from leakage_pipeline.audit.image_hashing import STATUS_OK

SHA256 = "sha256"
# A hash whose matched pairs agree on the label barely more than random pairs do is matching
# by coincidence. Kappa = (agreement - chance) / (1 - chance): 0 is chance, 1 is perfect.
COINCIDENCE_KAPPA = 0.5
# Below this many pairs the agreement of a hash at a radius is not judged.
MIN_PAIRS_TO_JUDGE = 10
_EXAMPLES = 20


@dataclass(frozen=True)
class AuditReport:
    report: dict  # JSON-ready sections
    flagged: pl.DataFrame  # one row per query image with a trusted match
    informative_pairs: pl.DataFrame  # the pairs judged: all but those between blank frames


@dataclass(frozen=True)
class ReportSettings:
    radii: tuple[int, ...] = (0, 2, 5, 8)
    # Images whose 32x32 grayscale thumbnail varies less than this (std, in gray levels) are
    # blank frames: their perceptual hashes match every other blank frame and mean nothing.
    min_detail: float = 3.0
    # Fixed trusted radius per hash; a hash left out gets one chosen from label agreement.
    trusted_radius: dict[str, int] | None = None


def _records(frame: pl.DataFrame, limit: int | None = None) -> list[dict]:
    return (frame if limit is None else frame.head(limit)).to_dicts()


def _matched(pairs: pl.DataFrame, criterion: str, radius: int | None) -> pl.DataFrame:
    if criterion == SHA256:
        return pairs.filter(pl.col("sha256_equal"))
    return pairs.filter(pl.col(f"{criterion}_distance") <= radius)


def _criteria(radii: tuple[int, ...]) -> list[tuple[str, int | None]]:
    return [(SHA256, None)] + [(name, r) for name in PERCEPTUAL_HASHES for r in radii]


def count_table(images: pl.DataFrame) -> dict:
    return {
        "images": images.height,
        "per_split": dict(images.group_by("split").len().sort("split").iter_rows()),
        "per_status": dict(images.group_by("status").len().sort("status").iter_rows()),
        "per_split_status": _records(images.group_by("split", "status").len("images").sort("split", "status")),
    }


def threshold_table(images: pl.DataFrame, pairs: pl.DataFrame, split_order: list[str], radii) -> list[dict]:
    """Per criterion and query split: images with a match in an earlier split, and their share."""
    totals = dict(images.group_by("split").len().iter_rows())
    rows = []
    for criterion, radius in _criteria(radii):
        matched = _matched(pairs, criterion, radius)
        for query_split in split_order[1:]:
            total = totals.get(query_split, 0)
            hit = matched.filter(pl.col("query_split") == query_split)["query_location"].n_unique()
            rows.append({
                "criterion": criterion, "radius": radius, "query_split": query_split,
                "against": "+".join(split_order[: split_order.index(query_split)]),
                "query_images_matched": hit, "query_images": total,
                "share": hit / total if total else 0.0,
            })
    return rows


def label_chance(images: pl.DataFrame) -> float:
    """Probability that two images drawn at random share a label: sum of squared label shares."""
    shares = images.filter(pl.col("status") == STATUS_OK)["label"].value_counts(normalize=True)
    return float((shares["proportion"] ** 2).sum())


def _pair_chance(matched: pl.DataFrame) -> float:
    """Agreement expected from the two sides' own label mixes (Cohen's kappa's chance term)."""
    query = matched["query_label"].value_counts(normalize=True)
    reference = matched["reference_label"].value_counts(normalize=True)
    joined = query.join(reference, left_on="query_label", right_on="reference_label")
    return float((joined["proportion"] * joined["proportion_right"]).sum())


def label_agreement_table(pairs: pl.DataFrame, chance: float, radii) -> list[dict]:
    """Per criterion: share of matched pairs with the same label, beside chance.

    ``chance`` is the dataset's sum of squared label shares. Kappa is measured against the
    matched pairs' own label mix instead, so a hash that only ever matches within one
    modality (whose labels differ from the rest) is judged against that modality.
    """
    rows = []
    for criterion, radius in _criteria(radii):
        matched = _matched(pairs, criterion, radius)
        n = matched.height
        agreement = float((matched["query_label"] == matched["reference_label"]).mean()) if n else None
        pair_chance = _pair_chance(matched) if n else None
        kappa = (agreement - pair_chance) / (1 - pair_chance) if n and pair_chance < 1 else None
        judged = n >= MIN_PAIRS_TO_JUDGE and kappa is not None
        rows.append({
            "criterion": criterion, "radius": radius, "pairs": n,
            "same_label_share": agreement, "chance": chance, "pair_chance": pair_chance, "kappa": kappa,
            "coincidental": bool(judged and kappa < COINCIDENCE_KAPPA),
        })
    return rows


def trusted_radii(agreement: list[dict], settings: ReportSettings) -> dict[str, int | None]:
    """Per hash, the largest radius up to which matches are not coincidental (None: never trusted)."""
    fixed = settings.trusted_radius or {}
    trusted: dict[str, int | None] = {}
    for name in PERCEPTUAL_HASHES:
        if name in fixed:
            trusted[name] = fixed[name]
            continue
        trusted[name] = None
        for row in sorted((r for r in agreement if r["criterion"] == name), key=lambda r: r["radius"]):
            if row["coincidental"]:
                break
            trusted[name] = row["radius"]
    return trusted


def trusted_pairs(pairs: pl.DataFrame, trusted: dict[str, int | None]) -> pl.DataFrame:
    """Pairs that match on bytes or on a hash within its trusted radius, with the reason."""
    condition = pl.col("sha256_equal")
    for name, radius in trusted.items():
        if radius is not None:
            condition = condition | (pl.col(f"{name}_distance") <= radius)
    reason = pl.when(pl.col("sha256_equal")).then(pl.lit(SHA256))
    for name, radius in trusted.items():
        if radius is not None:
            reason = reason.when(pl.col(f"{name}_distance") <= radius).then(pl.lit(name))
    return pairs.filter(condition).with_columns(matched_by=reason.otherwise(None))


def flagged_images(trusted: pl.DataFrame) -> pl.DataFrame:
    """One row per query image with a trusted match: its closest match and how many it has."""
    ranked = trusted.with_columns(
        closeness=closeness(),
    ).sort(["query_location", "sha256_equal", "closeness"], descending=[False, True, False])
    return (
        ranked.group_by("query_location", maintain_order=True)
        .agg(
            pl.col("query_image_uri", "query_split", "query_patient_id", "query_label").first(),
            pl.col("reference_image_uri", "reference_split", "reference_patient_id", "reference_label",
                   "matched_by", "sha256_equal", "phash_distance", "dhash_distance").first(),
            pl.len().alias("matches"),
        )
        .rename({"query_location": "location"})
        .sort("query_split", "query_image_uri")
    )


def _clusters(edges: list[tuple[str, str]]) -> list[list[str]]:
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        parent[find(a)] = find(b)
    groups: dict[str, list[str]] = {}
    for node in parent:
        groups.setdefault(find(node), []).append(node)
    return sorted((sorted(g) for g in groups.values()), key=lambda g: (-len(g), g))


def patient_links(trusted: pl.DataFrame) -> dict:
    """Distinct patient ids whose images match across splits: one person under two ids, or a shared source."""
    linked = trusted.filter(pl.col("query_patient_id") != pl.col("reference_patient_id"))
    pairs = (
        linked.group_by("query_patient_id", "query_split", "reference_patient_id", "reference_split")
        .agg(
            pl.col("query_location").n_unique().alias("query_images"),
            pl.col("reference_location").n_unique().alias("reference_images"),
            pl.len().alias("matched_pairs"),
            (pl.col("query_label") == pl.col("reference_label")).mean().alias("same_label_share"),
        )
        .sort("matched_pairs", descending=True)
    )
    edges = list(zip(pairs["query_patient_id"].to_list(), pairs["reference_patient_id"].to_list(), strict=True))
    return {
        "pairs": _records(pairs),
        "clusters": [c for c in _clusters(edges) if len(c) > 2],
    }


def verdict(images: pl.DataFrame, flagged: pl.DataFrame, findings: IntegrityFindings, test_split: str) -> dict:
    """How much of the test set leaked, and what that bounds for top-1 accuracy."""
    test_images = images.filter(pl.col("split") == test_split).height
    leaked = flagged.filter(pl.col("query_split") == test_split).height
    share = leaked / test_images if test_images else 0.0
    # The widest 95% interval a top-1 accuracy on this many images can have (at 50%).
    noise = 1.96 * math.sqrt(0.25 / test_images) if test_images else 1.0
    spanning = findings.patients_spanning_splits.height
    text = (
        f"{leaked} of {test_images} {test_split} images ({share:.1%}) have a trusted near-duplicate in an "
        f"earlier split. Removing them cannot move top-1 accuracy by more than {share * 100:.1f} points"
    )
    if share > noise:
        text += f", which exceeds the ±{noise * 100:.1f}-point sampling noise of {test_images} images: " \
                "leakage can move the headline metric."
    else:
        text += f", within the ±{noise * 100:.1f}-point sampling noise of {test_images} images: " \
                "leakage cannot move the headline metric beyond its noise."
    if spanning:
        text += f" {spanning} patient(s) have images in more than one split: the split itself leaks, " \
                "and training on it is blocked until it is fixed."
    return {
        "test_split": test_split, "test_images": test_images, "leaked_test_images": leaked,
        "leaked_share": share, "max_top1_shift_points": share * 100, "sampling_noise_points": noise * 100,
        "can_move_metric": share > noise or spanning > 0,
        "patients_spanning_splits": spanning, "text": text,
    }


def integrity_section(findings: IntegrityFindings) -> dict:
    return {
        name: {"count": table.height, "examples": _records(table, _EXAMPLES)} if name != "counts"
        else _records(table)
        for name, table in findings.tables().items()
    }


def build_report(
    images: pl.DataFrame,
    pairs: pl.DataFrame,
    findings: IntegrityFindings,
    split_order: list[str],
    settings: ReportSettings = ReportSettings(),
) -> AuditReport:
    """The report, the flagged images and the pairs it judged.

    ``images``: one row per manifest image with SIDE_COLUMNS, status and detail; ``pairs``:
    from :func:`leakage_pipeline.audit.matching.cross_split_pairs`. Pairs between blank
    frames are set aside (counted under ``blank_frames``) unless their bytes are equal.
    """
    chance = label_chance(images)
    blank = pl.min_horizontal("query_detail", "reference_detail") < settings.min_detail
    blank_pairs = pairs.filter(blank & ~pl.col("sha256_equal"))
    pairs = pairs.filter(~blank | pl.col("sha256_equal"))
    agreement = label_agreement_table(pairs, chance, settings.radii)
    trusted = trusted_radii(agreement, settings)
    kept = trusted_pairs(pairs, trusted)
    flagged = flagged_images(kept)
    report = {
        "splits": split_order,
        "counts": count_table(images),
        "split_integrity": integrity_section(findings),
        "thresholds": threshold_table(images, pairs, split_order, settings.radii),
        "label_agreement": agreement,
        "blank_frames": {
            "min_detail": settings.min_detail,
            "images": images.filter(pl.col("detail") < settings.min_detail).height,
            "pairs_excluded": blank_pairs.height,
        },
        "coincidental_hashes": sorted({r["criterion"] for r in agreement if r["coincidental"]}),
        "trusted_radius": trusted,
        "patient_links": patient_links(kept),
        "flagged": {"count": flagged.height, "per_split": dict(flagged.group_by("query_split").len().iter_rows()),
                    "images": _records(flagged.drop("location"))},
        "verdict": verdict(images, flagged, findings, split_order[-1]),
    }
    return AuditReport(report=report, flagged=flagged, informative_pairs=pairs)
