"""Identity links checked against demographics: two patient ids tied into one identity whose images disagree on
sex, body site or age (beyond a tolerance) are listed for review; links that agree are marked consistent.

The check only reports: a link is never merged or dropped because of demographics. Each link is an image pair of
two distinct patient ids (a trusted duplicate, an accepted same-subject pair, or two images filed under one case
id); the two images' own values are compared, since one person's site differs from lesion to lesion. A value
that is not given on either side cannot disagree: such a link is ``not_comparable`` on that column.
"""

from __future__ import annotations

import polars as pl

DEMOGRAPHIC_COLUMNS = ("age", "sex", "body_site")
CONSISTENT, CONFLICT, NOT_COMPARABLE = "consistent", "conflict", "not_comparable"
LINK_CASE_ID = "case_id"
SEX_ABBREVIATIONS = {"m": "male", "f": "female"}
UNKNOWN_VALUES = ("unknown", "unk", "?", "other/unknown")
_SIDES = ("query", "reference")
_IMAGE_COLUMNS = ("location", "image_uri", "patient_id", "split", *DEMOGRAPHIC_COLUMNS)


def _case_links(images: pl.DataFrame) -> pl.DataFrame:
    """One image pair per patient id sharing a case id with another: its first image against the case's first id's."""
    firsts = images.drop_nulls("case_id").sort("patient_id", "location").unique(
        ["case_id", "patient_id"], keep="first", maintain_order=True)
    anchors = firsts.unique("case_id", keep="first", maintain_order=True)
    return (firsts.join(anchors.select("case_id", reference_location="location"), on="case_id")
            .filter(pl.col("location") != pl.col("reference_location"))
            .select(query_location="location", reference_location="reference_location",
                    link=pl.lit(LINK_CASE_ID)))


def _disagreements(age_tolerance: float) -> pl.Expr:
    """The columns on which a link's two images disagree (a list, empty when none does)."""
    differs = {
        "age": (pl.col("query_age") - pl.col("reference_age")).abs() > age_tolerance,
        "sex": pl.col("query_sex") != pl.col("reference_sex"),
        "body_site": pl.col("query_body_site") != pl.col("reference_body_site"),
    }
    return pl.concat_list([pl.when(expr).then(pl.lit(name)).otherwise(None) for name, expr in differs.items()]
                          ).list.drop_nulls()


def _compared(age_tolerance: float) -> pl.Expr:
    both_given = [pl.col(f"query_{c}").is_not_null() & pl.col(f"reference_{c}").is_not_null()
                  for c in DEMOGRAPHIC_COLUMNS]
    return pl.concat_list([pl.when(given).then(pl.lit(c)).otherwise(None)
                           for c, given in zip(DEMOGRAPHIC_COLUMNS, both_given)]).list.drop_nulls()


def check_links(images: pl.DataFrame, linking: pl.DataFrame, age_tolerance: float) -> pl.DataFrame:
    """One row per linked pair of patient ids: the link kinds, the image pairs, and the image pair shown (the one
    disagreeing on most columns), both images' values, the columns compared and those that disagree, and a status.

    ``images``: one row per image with patient_id, case_id and the demographic columns (null: not given);
    ``linking``: image pairs with query_location, reference_location and ``link`` (what tied them).
    """
    pairs = pl.concat([linking.select("query_location", "reference_location", "link"), _case_links(images)])
    side = images.select(_IMAGE_COLUMNS)
    for name in _SIDES:
        pairs = pairs.join(side.rename({c: f"{name}_{c}" for c in _IMAGE_COLUMNS}), on=f"{name}_location")
    pairs = pairs.filter(pl.col("query_patient_id") != pl.col("reference_patient_id"))
    ordered = pl.col("query_patient_id") < pl.col("reference_patient_id")
    checked = pairs.with_columns(
        patient_id=pl.when(ordered).then("query_patient_id").otherwise("reference_patient_id"),
        linked_patient_id=pl.when(ordered).then("reference_patient_id").otherwise("query_patient_id"),
        disagree=_disagreements(age_tolerance), compared=_compared(age_tolerance))
    links = (
        checked.sort(pl.col("disagree").list.len(), pl.col("compared").list.len(), "query_location",
                     "reference_location", descending=[True, True, False, False])
        .group_by("patient_id", "linked_patient_id", maintain_order=True)
        .agg(pl.col("link").unique().sort().alias("links"), pl.len().alias("image_pairs"),
             pl.all().exclude("link", "patient_id", "linked_patient_id").first())
    )
    status = (pl.when(pl.col("disagree").list.len() > 0).then(pl.lit(CONFLICT))
              .when(pl.col("compared").list.len() > 0).then(pl.lit(CONSISTENT)).otherwise(pl.lit(NOT_COMPARABLE)))
    return links.with_columns(status=status).sort(
        pl.col("status") != CONFLICT, "patient_id", "linked_patient_id").select(
        "patient_id", "linked_patient_id", "status", "disagree", "compared", "links", "image_pairs",
        *[f"{s}_{c}" for s in _SIDES for c in _IMAGE_COLUMNS if c != "location"])


def _values(images: pl.DataFrame) -> pl.DataFrame:
    """Age as years, sex and body site in lower case; "unknown" (as HAM10000 and others write it) and absent columns are
    not given."""
    missing = [pl.lit(None, pl.String).alias(c) for c in DEMOGRAPHIC_COLUMNS if c not in images.columns]
    images = images.with_columns(missing) if missing else images
    text = {c: pl.col(c).cast(pl.String).str.strip_chars().str.to_lowercase() for c in ("sex", "body_site")}
    text["sex"] = text["sex"].replace(SEX_ABBREVIATIONS)
    return images.with_columns(
        age=pl.col("age").cast(pl.Float64, strict=False),
        **{c: pl.when(value.is_in(UNKNOWN_VALUES)).then(None).otherwise(value) for c, value in text.items()})


def demographics_section(images: pl.DataFrame, linking: pl.DataFrame, age_tolerance: float) -> dict:
    """The report's section: which columns were given, counts per status, and every checked link."""
    images = _values(images)
    given = [c for c in DEMOGRAPHIC_COLUMNS if images[c].is_not_null().any()]
    section = {"columns_given": given, "age_tolerance_years": age_tolerance}
    if not given:
        return section | {"checked": False, "reason": "the manifest gives no age, sex or body site"}
    links = check_links(images, linking, age_tolerance)
    counts = dict(links.group_by("status").len().iter_rows())
    return section | {"checked": True, "links": links.height,
                      **{status: counts.get(status, 0) for status in (CONFLICT, CONSISTENT, NOT_COMPARABLE)},
                      "link_rows": links.to_dicts()}
