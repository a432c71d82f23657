"""Why an image leaked: every reason an image of a later split has a twin in an earlier one.

Splits are ordered from training to test, and each later split is judged against all earlier
ones (test against train and val, val against train). The reasons, each with its evidence:

* ``same_patient``: the image's patient (or group) has images in an earlier split;
* ``linked_patient``: its patient is one identity with another patient id that has images in an
  earlier split (see :mod:`leakage_pipeline.audit.identity`);
* ``exact_copy``: an earlier split holds the same bytes (sha256);
* ``near_duplicate``: an earlier split holds an image within a trusted hash radius;
* ``same_subject``: an earlier split holds another photograph of the same subject (the learned
  matcher's candidate, confirmed by keypoint geometry above the calibrated inlier threshold; see
  :mod:`leakage_pipeline.same_subject`).

An image can have several reasons; the verdict counts the images with at least one.
"""

from __future__ import annotations

import polars as pl

from leakage_pipeline.audit.matching import closeness

SAME_PATIENT = "same_patient"
LINKED_PATIENT = "linked_patient"
EXACT_COPY = "exact_copy"
NEAR_DUPLICATE = "near_duplicate"
SAME_SUBJECT = "same_subject"
LEAK_REASONS = (SAME_PATIENT, LINKED_PATIENT, EXACT_COPY, NEAR_DUPLICATE, SAME_SUBJECT)

REASON_SCHEMA = {
    "location": pl.String,
    "reason": pl.String,
    "evidence": pl.String,
    "partner_location": pl.String,
    "partner_image_uri": pl.String,
    "partner_patient_id": pl.String,
    "partner_split": pl.String,
    "partner_label": pl.String,
    "distance": pl.Int32,
}
_SIDE = ("location", "image_uri", "patient_id", "split", "label")


def _earlier(split_order: list[str], split: str) -> list[str]:
    return split_order[: split_order.index(split)]


def same_patient_reasons(images: pl.DataFrame, split_order: list[str]) -> pl.DataFrame:
    """Images whose patient has images in an earlier split; the partner is the first of them."""
    parts = []
    for split in split_order[1:]:
        earlier = (
            images.filter(pl.col("split").is_in(_earlier(split_order, split)))
            .sort("split", "image_uri")
            .group_by("patient_id", maintain_order=True)
            .agg(*(pl.col(c).first().alias(f"partner_{c}") for c in _SIDE), pl.len().alias("partner_images"))
        )
        parts.append(images.filter(pl.col("split") == split).join(earlier, on="patient_id"))
    return pl.concat(parts).with_columns(
        reason=pl.lit(SAME_PATIENT), distance=pl.lit(None),
        evidence=pl.format("patient {} has {} image(s) in {}", "patient_id", "partner_images", "partner_split"),
    ).select(REASON_SCHEMA.keys()).cast(REASON_SCHEMA)


def linked_patient_reasons(images: pl.DataFrame, identity_table: pl.DataFrame, split_order: list[str]) -> pl.DataFrame:
    """Images whose identity holds another patient id with images in an earlier split."""
    with_identity = images.join(identity_table, on="patient_id", how="left").with_columns(
        identity=pl.col("identity").fill_null(pl.col("patient_id")))
    parts = []
    for split in split_order[1:]:
        # One partner image per (identity, patient id) in the earlier splits, the first by split and name.
        earlier = (
            with_identity.filter(pl.col("split").is_in(_earlier(split_order, split)))
            .sort("split", "image_uri")
            .group_by("identity", "patient_id", maintain_order=True).first()
            .select("identity", *(pl.col(c).alias(f"partner_{c}") for c in _SIDE))
        )
        parts.append(
            with_identity.filter(pl.col("split") == split).select("location", "patient_id", "identity")
            .join(earlier, on="identity")
            # The image's own patient is same_patient's reason, not this one.
            .filter(pl.col("partner_patient_id") != pl.col("patient_id"))
            .sort("location", "partner_split", "partner_image_uri")  # the same first partner on every run
            .group_by("location", maintain_order=True)
            .agg(pl.all().exclude("patient_id", "identity").first(),
                 pl.col("partner_patient_id").unique().sort().alias("linked_ids"))
        )
    return pl.concat(parts).with_columns(
        reason=pl.lit(LINKED_PATIENT), distance=pl.lit(None),
        evidence=pl.format("one identity with patient(s) {} in {} (duplicate images or a shared case id)",
                           pl.col("linked_ids").list.join(", "), "partner_split"),
    ).select(REASON_SCHEMA.keys()).cast(REASON_SCHEMA)


def duplicate_reasons(trusted: pl.DataFrame) -> pl.DataFrame:
    """Exact copies and near-duplicates from the trusted cross-split pairs, the closest partner per image."""
    ranked = trusted.with_columns(
        reason=pl.when(pl.col("sha256_equal")).then(pl.lit(EXACT_COPY)).otherwise(pl.lit(NEAR_DUPLICATE)),
        distance=closeness(),
    ).sort("query_location", "distance", "reference_image_uri")
    closest = ranked.group_by("query_location", "reason", maintain_order=True).first()
    return closest.select(
        location="query_location",
        reason="reason",
        evidence=pl.when(pl.col("reason") == EXACT_COPY)
        .then(pl.format("the same bytes as {} in {}", "reference_image_uri", "reference_split"))
        .otherwise(pl.format("{} distance {} to {} in {}", "matched_by", "distance", "reference_image_uri",
                             "reference_split")),
        **{f"partner_{c}": f"reference_{c}" for c in _SIDE},
        distance="distance",
    ).cast(REASON_SCHEMA)


def same_subject_reasons(accepted: pl.DataFrame) -> pl.DataFrame:
    """Images with an accepted same-subject pair (see :mod:`leakage_pipeline.same_subject.matcher`),
    the partner with the most inliers per image."""
    best = accepted.sort(["query_location", "inliers", "reference_image_uri"], descending=[False, True, False]) \
        .group_by("query_location", maintain_order=True).first()
    return best.select(
        location="query_location",
        reason=pl.lit(SAME_SUBJECT),
        evidence=pl.format("{} inliers, cosine {}, to {} in {}", "inliers", pl.col("cosine").round(2),
                           "reference_image_uri", "reference_split"),
        **{f"partner_{c}": f"reference_{c}" for c in _SIDE},
        distance=pl.lit(None),
    ).cast(REASON_SCHEMA)


def leak_reasons(
    images: pl.DataFrame, trusted: pl.DataFrame, identity_table: pl.DataFrame, split_order: list[str],
    same_subject: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Every (image, reason) of every split after the first, with its evidence (:data:`REASON_SCHEMA`).

    ``same_subject``: the accepted same-subject pairs, when that stage ran."""
    return pl.concat([
        same_patient_reasons(images, split_order),
        linked_patient_reasons(images, identity_table, split_order),
        duplicate_reasons(trusted),
        *([same_subject_reasons(same_subject)] if same_subject is not None else []),
    ])


def flagged_images(images: pl.DataFrame, reasons: pl.DataFrame) -> pl.DataFrame:
    """One row per image with at least one reason: the image, its reasons in :data:`LEAK_REASONS`
    order, and each reason's evidence."""
    order = {reason: rank for rank, reason in enumerate(LEAK_REASONS)}
    per_image = (
        reasons.with_columns(rank=pl.col("reason").replace_strict(order, return_dtype=pl.Int32))
        .sort("location", "rank")
        .group_by("location", maintain_order=True)
        .agg(pl.col("reason").alias("reasons"),
             pl.struct(pl.all().exclude("location", "rank")).alias("evidence"))
    )
    return (
        images.select("location", "image_uri", "split", "patient_id", "label", "status")
        .join(per_image, on="location")
        .sort("split", "image_uri")
    )
