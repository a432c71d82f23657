"""Reading and validating an image manifest (CSV or Parquet) into a canonical polars frame.

Real manifests name their columns differently, so the caller maps canonical names
(``image_uri``, ``patient_id``, ``label``, ``split``, ``case_id``, ``vendor``) to the
file's own. Every problem is reported with the column or the 1-based data row numbers
(the header is row 0), so a user can open the file and fix it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

REQUIRED_COLUMNS = ("image_uri", "patient_id", "label")
OPTIONAL_COLUMNS = ("split", "case_id", "vendor")
CANONICAL_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
# Row numbers are listed up to this many in an error; the count is always given.
_MAX_ROWS_IN_MESSAGE = 10


class ManifestError(ValueError):
    """A manifest that cannot be audited; the message names the file, column and rows."""


@dataclass(frozen=True)
class ColumnMapping:
    """Canonical column name -> the manifest's own column name."""

    names: dict[str, str] = field(default_factory=dict)

    def source(self, canonical: str) -> str:
        return self.names.get(canonical, canonical)

    @classmethod
    def parse(cls, spec: str | None) -> ColumnMapping:
        """Parse ``image_uri=path,patient_id=pid`` as given on the command line."""
        names: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in (spec or "").split(","))):
            canonical, sep, source = item.partition("=")
            canonical, source = canonical.strip(), source.strip()
            if not sep or not source:
                raise ManifestError(f"column mapping {item!r} is not of the form canonical=source")
            if canonical not in CANONICAL_COLUMNS:
                raise ManifestError(
                    f"column mapping names unknown column {canonical!r}; "
                    f"known: {', '.join(CANONICAL_COLUMNS)}"
                )
            names[canonical] = source
        return cls(names)


def read_table(path: Path) -> pl.DataFrame:
    """Read a CSV or Parquet file with every CSV column as text (ids like 007 must stay 007)."""
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            return pl.read_parquet(path)
        if suffix in (".csv", ".tsv", ".txt"):
            return pl.read_csv(path, infer_schema=False, separator="\t" if suffix == ".tsv" else ",")
    except (pl.exceptions.PolarsError, OSError) as error:
        raise ManifestError(f"manifest {path} could not be read: {error}") from error
    raise ManifestError(f"manifest {path}: unsupported file type {suffix!r} (use .csv, .tsv or .parquet)")


def _rows(mask: pl.Series) -> str:
    rows = [index + 1 for index in mask.arg_true().to_list()]
    shown = ", ".join(map(str, rows[:_MAX_ROWS_IN_MESSAGE]))
    more = f" and {len(rows) - _MAX_ROWS_IN_MESSAGE} more" if len(rows) > _MAX_ROWS_IN_MESSAGE else ""
    return f"{len(rows)} row(s): {shown}{more}"


def canonicalize(
    raw: pl.DataFrame, columns: ColumnMapping, split_names: list[str] | None, origin: str
) -> pl.DataFrame:
    """Rename to canonical columns, check them, and add ``row`` (1-based data row number).

    ``split_names`` is the set of allowed split values; a manifest without a split
    column is fine here (the split policy decides whether one is needed).
    """
    missing = [
        f"{name} (looked for column {columns.source(name)!r})"
        for name in REQUIRED_COLUMNS
        if columns.source(name) not in raw.columns
    ]
    if missing:
        raise ManifestError(
            f"manifest {origin} is missing required column(s): {'; '.join(missing)}. "
            f"Its columns are: {', '.join(raw.columns)}"
        )
    present = [name for name in CANONICAL_COLUMNS if columns.source(name) in raw.columns]
    renamed = {columns.source(name): name for name in present}
    reserved = set(CANONICAL_COLUMNS) | {"row"}
    # Extra columns are carried through; one that would shadow a canonical name gets a prefix.
    extras = {c: f"manifest_{c}" if c in reserved else c for c in raw.columns if c not in renamed}
    frame = raw.select(
        [pl.col(source).cast(pl.String).alias(name) for source, name in renamed.items()]
        + [pl.col(source).alias(name) for source, name in extras.items()]
    ).with_row_index("row", offset=1)
    frame = frame.with_columns(
        [pl.col(name).str.strip_chars() for name in present]
    ).with_columns(
        # An empty optional cell means "not given", the same as a null.
        [pl.when(pl.col(name) == "").then(None).otherwise(pl.col(name)).alias(name) for name in present]
    )

    for name in REQUIRED_COLUMNS:
        nulls = frame[name].is_null()
        if nulls.any():
            raise ManifestError(
                f"manifest {origin}: column {columns.source(name)!r} ({name}) is empty in {_rows(nulls)}"
            )
    duplicated = frame["image_uri"].is_duplicated()
    if duplicated.any():
        raise ManifestError(
            f"manifest {origin}: column {columns.source('image_uri')!r} (image_uri) repeats the same "
            f"image in {_rows(duplicated)}"
        )
    if "split" in frame.columns and split_names is not None:
        unknown = frame["split"].is_not_null() & ~frame["split"].is_in(split_names)
        if unknown.any():
            values = sorted(set(frame.filter(unknown)["split"].to_list()))
            raise ManifestError(
                f"manifest {origin}: column {columns.source('split')!r} (split) has unknown split name(s) "
                f"{values} in {_rows(unknown)}; allowed: {', '.join(split_names)}"
            )
    for name in OPTIONAL_COLUMNS:
        if name not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(name))
    return frame.select(["row", *CANONICAL_COLUMNS, *extras.values()])


def load_manifest(
    path: Path, columns: ColumnMapping | None = None, split_names: list[str] | None = None
) -> pl.DataFrame:
    """Read and validate ``path``; see :func:`canonicalize` for the returned columns."""
    return canonicalize(read_table(path), columns or ColumnMapping(), split_names, str(path))
