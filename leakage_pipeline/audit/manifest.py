"""Reading and validating an image manifest (CSV or Parquet) into a canonical polars frame.

Real manifests name their columns differently, so the caller maps canonical names
(``image_uri``, ``patient_id``, ``label``, ``split``, ``case_id``, ``vendor``, ``age``, ``sex``, ``body_site``) to the
file's own. Every problem is reported with the column or the 1-based data row numbers
(the header is row 0), so a user can open the file and fix it.

The canonical frame holds only names the pipeline owns: ``row``, the canonical columns,
``identity_level`` and, once resolved, ``location``. Every other column of the file is carried
through under :data:`EXTRA_PREFIX`, so no manifest column can shadow or clash with a column the
pipeline computes (``sha256``, ``status``, ``split_source``, ...).
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from leakage_pipeline.audit.demographics import DEMOGRAPHIC_COLUMNS
from leakage_pipeline.audit.image_source import is_within, resolve_uri
from leakage_pipeline.storage.locations import UnsupportedLocation, check_location, is_local, location

REQUIRED_COLUMNS = ("image_uri", "patient_id", "label")
# Demographics (age in years, sex, body site) are optional: identity links are checked against them.
OPTIONAL_COLUMNS = ("split", "case_id", "vendor", *DEMOGRAPHIC_COLUMNS)
CANONICAL_COLUMNS = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
# The manifest's own other columns, carried through under this prefix.
EXTRA_PREFIX = "extra__"
# Cell values that mean "no value" in the spreadsheets and exports manifests come from; compared
# case-insensitively after stripping spaces. A patient id "NaN" is a missing id, not a patient.
NULL_LIKE_VALUES = ("", "nan", "none", "null", "n/a", "na", "-")
# How much each row's patient_id can be trusted to identify a person (see fill_missing_patient_ids).
IDENTITY_PATIENT, IDENTITY_CASE, IDENTITY_IMAGE = "patient", "case", "image"
# Row numbers are listed up to this many in an error; the count is always given.
_MAX_ROWS_IN_MESSAGE = 10


class ManifestError(ValueError):
    """A manifest that cannot be audited; the message names the file, column and rows."""


@dataclass(frozen=True)
class ColumnMapping:
    """Canonical column name -> the manifest's own column name (several may share one)."""

    names: dict[str, str] = field(default_factory=dict)

    def source(self, canonical: str) -> str:
        return self.names.get(canonical, canonical)

    def is_explicit(self, canonical: str) -> bool:
        return canonical in self.names

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


def read_table(uri: str | Path) -> pl.DataFrame:
    """Read a CSV or Parquet file (a local path or a ``gs://`` URI) with every CSV column as text
    (ids like 007 must stay 007)."""
    try:
        path = location(uri)
        exists = path.exists()
    except (UnsupportedLocation, OSError) as error:
        raise ManifestError(f"manifest {uri}: {error}") from error
    if not exists:
        raise ManifestError(f"manifest {uri} does not exist")
    suffix = path.suffix.lower()
    source = path.path if is_local(path) else io.BytesIO(path.read_bytes())
    try:
        if suffix == ".parquet":
            table = pl.read_parquet(source)
        elif suffix in (".csv", ".tsv", ".txt"):
            table = pl.read_csv(source, infer_schema=False, separator="\t" if suffix == ".tsv" else ",")
            _refuse_repeated_headers(table, str(uri))
        else:
            raise ManifestError(f"manifest {uri}: unsupported file type {suffix!r} (use .csv, .tsv or .parquet)")
    except (pl.exceptions.PolarsError, OSError) as error:
        raise ManifestError(f"manifest {uri} could not be read: {error}") from error
    if table.height == 0:
        raise ManifestError(f"manifest {uri} has no data rows (only a header): there is nothing to audit")
    return table


def _refuse_repeated_headers(table: pl.DataFrame, origin: str) -> None:
    """polars renames a repeated CSV header to ``NAME_duplicated_N``; which one was meant is unknowable."""
    repeated = sorted({match[1] for c in table.columns if (match := re.fullmatch(r"(.*)_duplicated_\d+", c))
                       and match[1] in table.columns})
    if repeated:
        raise ManifestError(f"manifest {origin}: column name(s) {repeated} appear more than once in the header")


def _rows(mask: pl.Series) -> str:
    rows = [index + 1 for index in mask.arg_true().to_list()]
    shown = ", ".join(map(str, rows[:_MAX_ROWS_IN_MESSAGE]))
    more = f" and {len(rows) - _MAX_ROWS_IN_MESSAGE} more" if len(rows) > _MAX_ROWS_IN_MESSAGE else ""
    return f"{len(rows)} row(s): {shown}{more}"


def _as_text(raw: pl.DataFrame, source: str, canonical: str, origin: str) -> pl.Expr:
    """Column ``source`` as text (stripped, but for image URIs) with null-like cells as null; nested columns are refused."""
    dtype = raw.schema[source]
    if dtype.is_nested() or dtype in (pl.Binary, pl.Object):
        raise ManifestError(
            f"manifest {origin}: column {source!r} ({canonical}) holds {dtype} values; "
            f"it must hold one text or number per row"
        )
    text = pl.col(source).cast(pl.String)
    stripped = text.str.strip_chars()
    # A path is taken as written: " a.png" is another file than "a.png" (ids and labels are trimmed).
    value = text if canonical == "image_uri" else stripped
    return pl.when(stripped.str.to_lowercase().is_in(NULL_LIKE_VALUES)).then(None).otherwise(value).alias(canonical)


def fill_missing_patient_ids(frame: pl.DataFrame) -> pl.DataFrame:
    """Add ``identity_level``; when no row has a patient id, stand in the best identity there is.

    With patient ids every row is ``patient``. Without any, each row's ``patient_id`` becomes its
    case id (``case``) or, lacking one, its image URI (``image``): the audit still runs, at the
    level the data supports, and says so per row.
    """
    if frame["patient_id"].is_not_null().any():
        return frame.with_columns(identity_level=pl.lit(IDENTITY_PATIENT))
    return frame.with_columns(
        patient_id=pl.coalesce("case_id", "image_uri"),
        identity_level=pl.when(pl.col("case_id").is_not_null())
        .then(pl.lit(IDENTITY_CASE)).otherwise(pl.lit(IDENTITY_IMAGE)),
    )


def canonicalize(
    raw: pl.DataFrame, columns: ColumnMapping, split_names: list[str] | None, origin: str
) -> pl.DataFrame:
    """Rename to canonical columns, check them, and add ``row`` (1-based data row number) and
    ``identity_level``; the file's other columns follow, prefixed with :data:`EXTRA_PREFIX`.

    ``split_names`` is the set of allowed split values; a manifest without a split
    column is fine here (the split policy decides whether one is needed).
    """
    # A name the user mapped must exist; patient_id alone may be absent when nobody asked for it.
    missing = [
        f"{name} (looked for column {columns.source(name)!r})"
        for name in CANONICAL_COLUMNS
        if columns.source(name) not in raw.columns
        and (name in REQUIRED_COLUMNS and name != "patient_id" or columns.is_explicit(name))
    ]
    if missing:
        raise ManifestError(
            f"manifest {origin} is missing required column(s): {'; '.join(missing)}. "
            f"Its columns are: {', '.join(raw.columns)}"
        )
    present = {name: columns.source(name) for name in CANONICAL_COLUMNS if columns.source(name) in raw.columns}
    used = set(present.values())
    frame = raw.select(
        [_as_text(raw, source, name, origin) for name, source in present.items()]
        + [pl.lit(None, dtype=pl.String).alias(name) for name in CANONICAL_COLUMNS if name not in present]
        + [pl.col(c).alias(EXTRA_PREFIX + c) for c in raw.columns if c not in used]
    ).with_row_index("row", offset=1)

    for name in REQUIRED_COLUMNS:
        nulls = frame[name].is_null()
        # No patient id anywhere is a manifest without patient ids; some missing is a broken one.
        if nulls.any() and not (name == "patient_id" and nulls.all()):
            raise ManifestError(
                f"manifest {origin}: column {columns.source(name)!r} ({name}) is empty in {_rows(nulls)} "
                f"(null-like values such as NaN, None, null, N/A or - count as empty)"
            )
    duplicated = frame["image_uri"].is_duplicated()
    if duplicated.any():
        raise ManifestError(
            f"manifest {origin}: column {columns.source('image_uri')!r} (image_uri) repeats the same "
            f"image in {_rows(duplicated)}"
        )
    if split_names is not None:
        unknown = frame["split"].is_not_null() & ~frame["split"].is_in(split_names)
        if unknown.any():
            values = sorted(set(frame.filter(unknown)["split"].to_list()))
            raise ManifestError(
                f"manifest {origin}: column {columns.source('split')!r} (split) has unknown split name(s) "
                f"{values} in {_rows(unknown)}; allowed: {', '.join(split_names)}"
            )
    not_a_number = frame["age"].is_not_null() & ~(frame["age"].cast(pl.Float64, strict=False) >= 0).fill_null(False)
    if not_a_number.any():
        raise ManifestError(
            f"manifest {origin}: column {columns.source('age')!r} (age) is not a number of years (0 or more) in "
            f"{_rows(not_a_number)}, e.g. {frame.filter(not_a_number)['age'][0]!r}"
        )
    extras = [c for c in frame.columns if c.startswith(EXTRA_PREFIX)]
    return fill_missing_patient_ids(frame).select(["row", *CANONICAL_COLUMNS, "identity_level", *extras])


def load_manifest(
    path: str | Path, columns: ColumnMapping | None = None, split_names: list[str] | None = None
) -> pl.DataFrame:
    """Read and validate ``path``; see :func:`canonicalize` for the returned columns."""
    return canonicalize(read_table(path), columns or ColumnMapping(), split_names, str(path))


@dataclass(frozen=True)
class LocationRules:
    """How manifest URIs become locations: under ``image_root`` (a folder or a ``gs://`` prefix)
    unless ``allow_outside_root``; local symlinks followed to their target when ``resolve_symlinks``."""

    image_root: str
    allow_outside_root: bool = False
    resolve_symlinks: bool = False


def _supported(uri: str) -> bool:
    try:
        check_location(uri)
    except UnsupportedLocation:
        return False
    return True


def add_locations(frame: pl.DataFrame, rules: LocationRules, origin: str) -> pl.DataFrame:
    """Add ``location``, the canonical form of each ``image_uri``, and refuse what it reveals.

    Canonical before anything joins on it: ``a.png``, ``./a.png`` and ``x/../a.png`` are one file,
    and two rows naming one file are an error (each would be counted, hashed and paired twice).
    A location outside the image root (``../../etc/passwd``, an absolute path elsewhere) is an error
    unless the rules allow it.
    """
    foreign = pl.Series([not _supported(uri) for uri in frame["image_uri"]], dtype=pl.Boolean)
    if foreign.any():
        raise ManifestError(
            f"manifest {origin}: image_uri is neither a local path nor gs://bucket/object in {_rows(foreign)}, "
            f"e.g. {frame.filter(foreign)['image_uri'].head(3).to_list()}"
        )
    root = resolve_uri(".", rules.image_root, rules.resolve_symlinks)
    locations = pl.Series(
        "location", [resolve_uri(uri, root, rules.resolve_symlinks) for uri in frame["image_uri"]], pl.String)
    frame = frame.with_columns(locations)
    if not rules.allow_outside_root:
        outside = ~pl.Series([is_within(location, root) for location in locations], dtype=pl.Boolean)
        if outside.any():
            examples = frame.filter(outside)["image_uri"].head(3).to_list()
            raise ManifestError(
                f"manifest {origin}: image_uri names a file outside the image root {root} in {_rows(outside)}, "
                f"e.g. {examples}; set the image root that holds them, or allow it "
                f"(--allow-outside-root, LEAKAGE_ALLOW_OUTSIDE_ROOT=1)"
            )
    same_file = frame["location"].is_duplicated()
    if same_file.any():
        groups = (frame.filter(same_file).group_by("location", maintain_order=True)
                  .agg("row", "image_uri").head(3).iter_rows())
        described = "; ".join(f"rows {rows} ({', '.join(map(repr, uris))}) are {location}"
                              for location, rows, uris in groups)
        raise ManifestError(
            f"manifest {origin}: column image_uri names the same file under different spellings in "
            f"{_rows(same_file)}: {described}"
        )
    return frame

