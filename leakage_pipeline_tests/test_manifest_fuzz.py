"""Property-based manifest fuzzing: whatever the columns, names, types, encodings, null-likes and
duplicates, the audit either runs with a consistent answer or refuses naming the row or column."""

import csv
import io
import json
import re
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from leakage_pipeline.audit.image_hashing import HASH_SCHEMA
from leakage_pipeline.audit.manifest import (
    CANONICAL_COLUMNS,
    EXTRA_PREFIX,
    IDENTITY_CASE,
    IDENTITY_IMAGE,
    IDENTITY_PATIENT,
    NULL_LIKE_VALUES,
    REQUIRED_COLUMNS,
    ColumnMapping,
    LocationRules,
    ManifestError,
    add_locations,
    canonicalize,
    read_table,
)
from leakage_pipeline.cli import EXIT_COULD_NOT_RUN, EXIT_RAN, main
from leakage_pipeline_tests.conftest import write_image

SPLITS = ["train", "val", "test"]
IMAGES = [f"img{i}.png" for i in range(4)]
NAMES = st.one_of(
    st.sampled_from(["image_uri", "patient_id", "label", "split", "case_id", "vendor", "pid", "path",
                     *HASH_SCHEMA, "row", "location", "split_source", "identity_level", "extra__x"]),
    st.text(min_size=0, max_size=6),
)
CELLS = st.one_of(
    st.sampled_from([*IMAGES, "./img0.png", "../x.png", "/etc/passwd", *SPLITS, "holdout", "p1", "p2", "c1", "a", "b"]),
    st.sampled_from(["NaN", "nan", "None", "null", "NULL", "N/A", "NA", "-", "", "  "]),
    st.text(max_size=5),
)


# Plausible values per column, so many manifests are valid, each cell hostile now and then.
PLAUSIBLE = {"image_uri": IMAGES, "path": IMAGES, "patient_id": ["p1", "p2", "p3"], "pid": ["p1", "p2"],
             "label": ["a", "b"], "split": SPLITS, "case_id": ["c1", "c2", ""]}


def _cell(column: str, index: int, hostile: bool) -> st.SearchStrategy:
    if column in ("image_uri", "path"):
        plausible = st.just(IMAGES[index % len(IMAGES)] if index < len(IMAGES) else f"new{index}.png")
    elif column in PLAUSIBLE:
        plausible = st.sampled_from(PLAUSIBLE[column])
    else:
        return CELLS
    return st.one_of(plausible, CELLS) if hostile else plausible


@st.composite
def manifests(draw):
    # Mostly a manifest that could be valid, with hostile extras; sometimes anything at all.
    base, mapping = draw(st.sampled_from([
        (["image_uri", "patient_id", "label", "split"], ""), (["path", "pid", "label"], "image_uri=path,patient_id=pid"),
        (["image_uri", "label", "case_id", "split"], ""), (["path", "label", "split"], "image_uri=path,patient_id=path"),
        ([], ""),
    ]))
    repeats = draw(st.sampled_from([False, False, False, True]))  # a header naming a column twice, now and then
    extras = st.lists(NAMES if repeats else NAMES.filter(lambda name: name not in base), min_size=0 if base else 1,
                      max_size=3, unique=not repeats)
    columns = base + draw(extras)
    count = draw(st.integers(min_value=0, max_value=6))
    hostile = draw(st.booleans())
    rows = [[draw(_cell(column, index, hostile)) for column in columns] for index in range(count)]
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-8-sig", "latin-1"]))
    mapping = draw(st.sampled_from([mapping, mapping, mapping, "patient_id=image_uri", "split=fold"]))
    return columns, rows, encoding, mapping


def _write_csv(directory: Path, columns, rows, encoding) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    path = directory / "m.csv"
    path.write_bytes(buffer.getvalue().encode(encoding, errors="replace"))
    return path


def _names_row_or_column(message: str, path: Path) -> bool:
    return (message.startswith(f"manifest {path}") or message.startswith("column mapping")) and bool(
        re.search(r"row|column|header|no data rows|could not be read", message))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_fuzzed_manifests_validate_consistently_or_name_the_problem(manifest):
    columns, rows, encoding, mapping = manifest
    with tempfile.TemporaryDirectory() as directory:
        path = _write_csv(Path(directory), columns, rows, encoding)
        try:
            raw = read_table(path)
            frame = add_locations(canonicalize(raw, ColumnMapping.parse(mapping), SPLITS, str(path)),
                                  LocationRules(image_root=directory), str(path))
        except ManifestError as error:
            assert _names_row_or_column(str(error), path), str(error)
            event("refused")
            return
    assert frame.height == raw.height == len(rows)
    assert frame["row"].to_list() == list(range(1, len(rows) + 1))
    for name in REQUIRED_COLUMNS:
        assert frame[name].null_count() == 0
        assert not frame[name].str.strip_chars().str.to_lowercase().is_in(NULL_LIKE_VALUES).any()
    assert set(frame["identity_level"]) <= {IDENTITY_PATIENT, IDENTITY_CASE, IDENTITY_IMAGE}
    assert frame["location"].is_unique().all()
    owned = {"row", *CANONICAL_COLUMNS, "identity_level", "location"}
    assert all(c.startswith(EXTRA_PREFIX) for c in frame.columns if c not in owned)
    event("valid")


@pytest.mark.slow
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests())
def test_fuzzed_manifests_through_the_cli_exit_0_with_a_consistent_report_or_2_with_a_reason(manifest):
    columns, rows, encoding, mapping = manifest
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        for i, name in enumerate(IMAGES):
            write_image(root / name, i)
        path = _write_csv(root, columns, rows, encoding)
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            code = main(["audit", "--manifest", str(path), "--out", str(root / "out"), "--columns", mapping,
                         "--split-policy", "assign", "--lock-wait", "0"])
        assert "Traceback" not in err.getvalue()
        if code == EXIT_COULD_NOT_RUN:
            message = err.getvalue()
            assert message.startswith("leakage-pipeline: the audit could not run: ")
            assert re.search(r"row|column|header|no data rows|could not be read", message), message
            event("refused")
            return
        assert code == EXIT_RAN
        report = json.loads((root / "out" / "report" / "leakage_audit.json").read_text())
        manifest_rows = pl.read_parquet(root / "out" / "manifest.parquet").height
        assert manifest_rows == len(rows)
        assert report["counts"]["images"] == manifest_rows == sum(report["counts"]["per_split"].values())
        event("audited")
