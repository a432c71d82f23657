"""Leakage report statistics, from images, cross-split pairs and split integrity.

Everything here is a pure function of polars frames; the result is a JSON-ready dict and a
markdown rendering of it. The sections are the ones a reviewer asks for, in this order:
counts and coverage, split integrity, threshold table, label agreement against chance, the
identities behind the matches, the flagged images with their leak reasons, and the verdict on
the headline metric, which counts every test image with at least one reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import polars as pl

from leakage_pipeline.audit.demographics import demographics_section
from leakage_pipeline.audit.identity import identities, identity_clusters, identity_edges
from leakage_pipeline.audit.image_hashing import STATUS_OK
from leakage_pipeline.audit.integrity import IntegrityFindings
from leakage_pipeline.audit.leak_reasons import LEAK_REASONS, flagged_images, leak_reasons
from leakage_pipeline.audit.matching import PERCEPTUAL_HASHES

SHA256 = "sha256"
# A hash whose matched pairs agree on the label barely more than random pairs do is matching
# by coincidence. Kappa = (agreement - chance) / (1 - chance): 0 is chance, 1 is perfect. When true
# duplicates share their label and false matches agree by chance, kappa estimates the share of
# matched pairs that are true duplicates, so a radius is trusted only while that is at least 0.9:
# the verdict must not count coincidences as leakage.
COINCIDENCE_KAPPA = 0.9
# Below this many pairs the agreement of a hash at a radius is not judged.
MIN_PAIRS_TO_JUDGE = 10
_EXAMPLES = 20
_Z95 = 1.959964


@dataclass(frozen=True)
class AuditReport:
    report: dict  # JSON-ready sections
    reasons: pl.DataFrame  # one row per (image, leak reason) with its evidence
    flagged: pl.DataFrame  # one row per image of a later split with at least one leak reason
    identities: pl.DataFrame  # each patient id with its identity (ids tied by duplicates or case ids)


@dataclass(frozen=True)
class ReportSettings:
    radii: tuple[int, ...] = (0, 2, 5, 8)
    # Images whose 32x32 grayscale thumbnail varies less than this (std, in gray levels) are
    # blank frames: their perceptual hashes match every other blank frame and mean nothing.
    min_detail: float = 3.0
    # Fixed trusted radius per hash; a hash left out gets one chosen from label agreement.
    trusted_radius: dict[str, int] | None = None
    # Below this share of readable test images the audit cannot vouch for the test split.
    min_test_coverage: float = 0.9
    # Two linked images whose ages differ by more than this (years) disagree: visits can be years apart.
    age_tolerance_years: float = 5.0


def _records(frame: pl.DataFrame, limit: int | None = None) -> list[dict]:
    return (frame if limit is None else frame.head(limit)).to_dicts()


def _matched(pairs: pl.DataFrame, criterion: str, radius: int | None) -> pl.DataFrame:
    if criterion == SHA256:
        return pairs.filter(pl.col("sha256_equal"))
    return pairs.filter(pl.col(f"{criterion}_distance") <= radius)


def _criteria(radii: tuple[int, ...]) -> list[tuple[str, int | None]]:
    return [(SHA256, None)] + [(name, r) for name in PERCEPTUAL_HASHES for r in radii]


def _readable() -> pl.Expr:
    return pl.col("status") == STATUS_OK


def count_table(images: pl.DataFrame) -> dict:
    return {
        "images": images.height,
        "per_split": dict(images.group_by("split").len().sort("split").iter_rows()),
        "per_status": dict(images.group_by("status").len().sort("status").iter_rows()),
        "per_split_status": _records(images.group_by("split", "status").len("images").sort("split", "status")),
    }


def coverage_table(images: pl.DataFrame, split_order: list[str]) -> list[dict]:
    """Per split: images listed, images read (hashed), and those not audited because they could not be read."""
    rows = []
    for split in split_order:
        listed = images.filter(pl.col("split") == split)
        read = listed.filter(_readable()).height
        rows.append({"split": split, "images": listed.height, "read": read, "not_audited": listed.height - read,
                     "read_share": read / listed.height if listed.height else None})
    return rows


def threshold_table(images: pl.DataFrame, pairs: pl.DataFrame, split_order: list[str], radii) -> list[dict]:
    """Per criterion and query split: readable images with a match in an earlier split, and their share."""
    totals = dict(images.filter(_readable()).group_by("split").len().iter_rows())
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
    shares = images.filter(_readable())["label"].value_counts(normalize=True)
    return float((shares["proportion"] ** 2).sum())


def _pair_chance(matched: pl.DataFrame) -> float:
    """Agreement expected from the two sides' own label mixes (Cohen's kappa's chance term)."""
    # Sorted, so that the float sum is the same on every run.
    query = matched["query_label"].value_counts(normalize=True).sort("query_label")
    reference = matched["reference_label"].value_counts(normalize=True)
    joined = query.join(reference, left_on="query_label", right_on="reference_label", maintain_order="left")
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


def _between_blank_frames(min_detail: float) -> pl.Expr:
    """Pairs whose perceptual hashes mean nothing: a side is a blank frame and the bytes differ."""
    return (pl.min_horizontal("query_detail", "reference_detail") < min_detail) & ~pl.col("sha256_equal")


def trusted_pairs(pairs: pl.DataFrame, trusted: dict[str, int | None]) -> pl.DataFrame:
    """Pairs that match on bytes or on a hash within its trusted radius, with the reason (blank-frame
    pairs excluded beforehand, see :func:`informative_trusted_pairs`)."""
    condition = pl.col("sha256_equal")
    for name, radius in trusted.items():
        if radius is not None:
            condition = condition | (pl.col(f"{name}_distance") <= radius)
    reason = pl.when(pl.col("sha256_equal")).then(pl.lit(SHA256))
    for name, radius in trusted.items():
        if radius is not None:
            reason = reason.when(pl.col(f"{name}_distance") <= radius).then(pl.lit(name))
    return pairs.filter(condition).with_columns(matched_by=reason.otherwise(None))


def patient_links(trusted: pl.DataFrame, identity_table: pl.DataFrame) -> dict:
    """Distinct patient ids whose images match across splits (one person under two ids, or a shared
    source), and the identities of more than two ids."""
    linked = trusted.filter(pl.col("query_patient_id") != pl.col("reference_patient_id"))
    pairs = (
        linked.group_by("query_patient_id", "query_split", "reference_patient_id", "reference_split")
        .agg(
            pl.col("query_location").n_unique().alias("query_images"),
            pl.col("reference_location").n_unique().alias("reference_images"),
            pl.len().alias("matched_pairs"),
            (pl.col("query_label") == pl.col("reference_label")).mean().alias("same_label_share"),
        )
        .sort(["matched_pairs", "query_patient_id", "reference_patient_id"], descending=[True, False, False])
    )
    return {
        "pairs": _records(pairs),
        "identities_with_several_ids": len(identity_clusters(identity_table)),
        "clusters": [c for c in identity_clusters(identity_table) if len(c) > 2],
    }


VERDICT_CLEAN = "clean"
VERDICT_LEAKED = "leaked"
VERDICT_CANNOT_VOUCH = "cannot_vouch"
VERDICT_NOTHING_TO_AUDIT = "nothing_to_audit"
_REASON_WORDS = {"same_patient": "same patient", "linked_patient": "linked patient", "exact_copy": "exact copy",
                 "near_duplicate": "near-duplicate", "same_subject": "same subject"}


def wilson_interval(hits: int, total: int) -> tuple[float, float]:
    """95% Wilson score interval of the share ``hits / total`` (sound at 0 and at small totals)."""
    share = hits / total
    centre = (share + _Z95**2 / (2 * total)) / (1 + _Z95**2 / total)
    half = _Z95 * math.sqrt(share * (1 - share) / total + _Z95**2 / (4 * total**2)) / (1 + _Z95**2 / total)
    # At 0 and at 1 the bound is exact; the formula only gets there up to rounding.
    return (0.0 if hits == 0 else centre - half), (1.0 if hits == total else centre + half)


def _reason_breakdown(per_reason: dict[str, int]) -> str:
    return ", ".join(f"{count} {_REASON_WORDS[reason]}" for reason, count in per_reason.items() if count)


def verdict(
    images: pl.DataFrame, flagged: pl.DataFrame, findings: IntegrityFindings, split_order: list[str],
    settings: ReportSettings, patient_ids_given: bool,
) -> dict:
    """How much of the readable test set leaked, for any reason, and what that bounds for top-1 accuracy.

    Shares are over the test images that were read; the unread are "not audited", never clean.
    """
    test_split, earlier = split_order[-1], " or ".join(split_order[:-1])
    listed = images.filter(pl.col("split") == test_split).height
    read = images.filter((pl.col("split") == test_split) & _readable()).height
    leaked_test = flagged.filter((pl.col("split") == test_split) & _readable())
    leaked = leaked_test.height
    per_reason = {reason: leaked_test.filter(pl.col("reasons").list.contains(reason)).height
                  for reason in LEAK_REASONS}
    overlap = dict(
        leaked_test.group_by(pl.col("reasons").list.join(" + ").alias("reasons")).len().sort("reasons").iter_rows())
    spanning = findings.patients_spanning_splits.height
    coverage = read / listed if listed else None
    share = leaked / read if read else None
    interval = wilson_interval(leaked, read) if read else None
    noise = _Z95 * math.sqrt(0.25 / read) if read else None  # the widest 95% interval of a top-1 accuracy

    sentences = []
    if not patient_ids_given:
        sentences.append("Patient ids were not given, so the same patient across splits cannot be checked: each "
                         "image counts as its own patient (or its case id), and the count below is a lower bound.")
    if not listed:
        status = VERDICT_NOTHING_TO_AUDIT
        sentences.append(f"The manifest has no {test_split} images: there is nothing to audit against.")
    else:
        status = VERDICT_LEAKED if leaked else VERDICT_CLEAN
        if coverage < settings.min_test_coverage:
            status = VERDICT_CANNOT_VOUCH
            sentences.append(
                f"The audit cannot vouch for the {test_split} split: only {read} of {listed} {test_split} images "
                f"({coverage:.1%}) could be read, under the {settings.min_test_coverage:.0%} it needs; the images "
                f"it could not read are not audited.")
        if leaked:
            sentences.append(
                f"{leaked} of {read} {test_split} images ({share:.1%}, 95% CI {interval[0]:.1%}–{interval[1]:.1%}) "
                f"show a patient or image that is also in {earlier}: {_reason_breakdown(per_reason)} "
                f"(an image can have several reasons).")
            beyond = share > noise
            sentences.append(
                f"Removing them could move top-1 accuracy by up to {share * 100:.1f} points, "
                + (f"which exceeds the ±{noise * 100:.1f}-point sampling noise of {read} images: leakage can move "
                   "the headline metric." if beyond else
                   f"within the ±{noise * 100:.1f}-point sampling noise of {read} images: leakage cannot move the "
                   "headline metric beyond its noise."))
        elif read:
            sentences.append(f"None of the {read} {test_split} images read shows a patient or image that is also "
                             f"in {earlier}: no leakage into the {test_split} split was found.")
        if status != VERDICT_CANNOT_VOUCH and read < listed:
            unread = listed - read
            sentences.append(f"{unread} of {listed} {test_split} images could not be read; "
                             f"{'it is' if unread == 1 else 'they are'} not audited.")
    if spanning:
        sentences.append(f"{spanning} patient(s) have images in more than one split.")
    can_move = None if status in (VERDICT_NOTHING_TO_AUDIT, VERDICT_CANNOT_VOUCH) else bool(share > noise)
    return {
        "status": status, "test_split": test_split, "test_images": listed, "test_images_read": read,
        "coverage": coverage, "leaked_test_images": leaked, "leaked_share": share,
        "leaked_share_interval": list(interval) if interval else None, "per_reason": per_reason,
        "reason_overlap": overlap, "max_top1_shift_points": share * 100 if share is not None else None,
        "sampling_noise_points": noise * 100 if noise is not None else None, "can_move_metric": can_move,
        "patients_spanning_splits": spanning, "patient_ids_given": patient_ids_given,
        "text": " ".join(sentences),
    }

def integrity_section(findings: IntegrityFindings) -> dict:
    return {
        name: {"count": table.height, "examples": _records(table, _EXAMPLES)} if name != "counts"
        else _records(table)
        for name, table in findings.tables().items()
    }


def patient_ids_given(images: pl.DataFrame) -> bool:
    """False when the manifest had no patient ids and each image (or case) stands in for its patient."""
    return "identity_level" not in images.columns or bool((images["identity_level"] == "patient").all())


def informative_trusted_pairs(pairs: pl.DataFrame, trusted: dict[str, int | None], min_detail: float) -> pl.DataFrame:
    """The trusted pairs among those not between blank frames: the pairs that count as leakage."""
    return trusted_pairs(pairs.filter(~_between_blank_frames(min_detail)), trusted)


def flagged_section(flagged: pl.DataFrame, split_order: list[str]) -> dict:
    """Counts per split and reason over the images read, like the verdict's; flagged images that could
    not be read (a patient-level reason needs no pixels) are counted apart."""
    read = flagged.filter(_readable())
    return {
        "count": flagged.height,
        "per_split": {split: read.filter(pl.col("split") == split).height for split in split_order[1:]},
        "per_split_reason": {
            split: {reason: read.filter((pl.col("split") == split) & pl.col("reasons").list.contains(reason)).height
                    for reason in LEAK_REASONS}
            for split in split_order[1:]
        },
        "per_split_not_read": {split: flagged.filter((pl.col("split") == split) & ~_readable()).height
                               for split in split_order[1:]},
        "images": _records(flagged),
    }


_LINK_COLUMNS = [f"{side}_{c}" for side in ("query", "reference")
                 for c in ("location", "patient_id", "split", "label")]


def same_subject_section(summary: dict | None) -> dict:
    """What the same-subject stage decided, for the report: run or skipped (and why), its calibrated
    threshold, precision and counts, and the review band below it."""
    if summary is None:
        return {"status": "not_run", "reason": "the same-subject stage was not part of this audit"}
    section = {key: summary.get(key) for key in ("status", "reason", "top_k", "candidate_pairs", "accepted_pairs",
                                                 "review_pairs", "accepted_query_images")}
    calibration = summary.get("calibration")
    if calibration:
        section["calibration"] = {key: value for key, value in calibration.items() if key != "curve"}
    return section


def build_report(
    images: pl.DataFrame,
    pairs: pl.DataFrame,
    findings: IntegrityFindings,
    split_order: list[str],
    settings: ReportSettings = ReportSettings(),
    same_subject_pairs: pl.DataFrame | None = None,
    same_subject_summary: dict | None = None,
) -> AuditReport:
    """The report, every leak reason, the flagged images and the identities.

    ``images``: one row per manifest image with SIDE_COLUMNS, case_id, status, sha256, phash, dhash
    and detail; ``pairs``: from :func:`leakage_pipeline.audit.matching.cross_split_pairs`. Pairs
    between blank frames are set aside (counted under ``blank_frames``) unless their bytes are equal.
    ``same_subject_pairs`` (the same-subject stage's pairs, of which the accepted count) add the
    ``same_subject`` reason and tie identities like trusted duplicates; ``same_subject_summary`` is that
    stage's summary, reported under ``same_subject``.
    """
    chance = label_chance(images)
    blank_pairs = pairs.filter(_between_blank_frames(settings.min_detail))
    pairs = pairs.filter(~_between_blank_frames(settings.min_detail))
    agreement = label_agreement_table(pairs, chance, settings.radii)
    trusted = trusted_radii(agreement, settings)
    kept = trusted_pairs(pairs, trusted)
    accepted = same_subject_pairs.filter(pl.col("accepted")) if same_subject_pairs is not None else None
    # Pairs that tie two patient ids into one identity: trusted duplicates and accepted same-subject pairs.
    linking = kept if accepted is None else pl.concat([kept.select(_LINK_COLUMNS), accepted.select(_LINK_COLUMNS)])
    identity_table = identities(images["patient_id"], identity_edges(images, linking))
    link_kinds = [kept.select("query_location", "reference_location", link="matched_by")]
    if accepted is not None:
        link_kinds.append(accepted.select("query_location", "reference_location", link=pl.lit("same_subject")))
    reasons = leak_reasons(images, kept, identity_table, split_order, accepted)
    flagged = flagged_images(images, reasons)
    ids_given = patient_ids_given(images)
    report = {
        "splits": split_order,
        "patient_ids_given": ids_given,
        "counts": count_table(images),
        "coverage": coverage_table(images, split_order),
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
        "patient_links": patient_links(linking, identity_table),
        "same_subject": same_subject_section(same_subject_summary),
        "link_demographics": demographics_section(images, pl.concat(link_kinds), settings.age_tolerance_years),
        "flagged": flagged_section(flagged, split_order),
        "verdict": verdict(images, flagged, findings, split_order, settings, ids_given),
    }
    return AuditReport(report=report, reasons=reasons, flagged=flagged, identities=identity_table)
