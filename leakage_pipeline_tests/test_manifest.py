import re

import polars as pl
import pytest

from leakage_pipeline.audit.manifest import ColumnMapping, ManifestError, load_manifest
from leakage_pipeline_tests.conftest import write_manifest

SPLITS = ["train", "val", "test"]


def rows(n=3, **overrides):
    base = [{"path": f"img{i}.png", "pid": f"p{i}", "dx": "a", "split": "train", "site": "x"} for i in range(n)]
    for index, values in overrides.items():
        base[int(index[1:])].update(values)
    return base


MAPPING = ColumnMapping.parse("image_uri=path,patient_id=pid,label=dx")


def test_reads_csv_with_mapped_columns_and_carries_extras(tmp_path):
    frame = load_manifest(write_manifest(tmp_path / "m.csv", rows()), MAPPING, SPLITS)
    assert frame.columns == ["row", "image_uri", "patient_id", "label", "split", "case_id", "vendor", "age", "sex",
                             "body_site", "identity_level", "extra__site"]
    assert frame["extra__site"].to_list() == ["x"] * 3
    assert frame["row"].to_list() == [1, 2, 3]
    assert frame["case_id"].null_count() == 3


def test_reads_parquet_and_keeps_leading_zeros_in_csv(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("image_uri,patient_id,label\na.png,007,x\n")
    assert load_manifest(csv)["patient_id"].to_list() == ["007"]
    parquet = tmp_path / "m.parquet"
    pl.DataFrame(rows()).write_parquet(parquet)
    assert load_manifest(parquet, MAPPING, SPLITS).height == 3


def test_missing_column_is_named(tmp_path):
    path = write_manifest(tmp_path / "m.csv", [{"path": "a", "pid": "p"}])
    with pytest.raises(ManifestError, match=r"label \(looked for column 'dx'\).*Its columns are: path, pid"):
        load_manifest(path, MAPPING, SPLITS)


def test_null_patient_ids_name_their_rows(tmp_path):
    path = write_manifest(tmp_path / "m.csv", rows(4, r1={"pid": ""}, r3={"pid": None}))
    with pytest.raises(ManifestError, match=r"'pid' \(patient_id\) is empty in 2 row\(s\): 2, 4"):
        load_manifest(path, MAPPING, SPLITS)


def test_repeated_uri_is_an_error_with_rows(tmp_path):
    path = write_manifest(tmp_path / "m.csv", rows(3, r2={"path": "img0.png"}))
    with pytest.raises(ManifestError, match=r"repeats the same image in 2 row\(s\): 1, 3"):
        load_manifest(path, MAPPING, SPLITS)


def test_unknown_split_names_the_value_and_rows(tmp_path):
    path = write_manifest(tmp_path / "m.csv", rows(3, r1={"split": "holdout"}))
    with pytest.raises(ManifestError, match=r"unknown split name\(s\) \['holdout'\] in 1 row\(s\): 2"):
        load_manifest(path, MAPPING, SPLITS)


def test_bad_mapping_and_bad_file_type(tmp_path):
    with pytest.raises(ManifestError, match="unknown column 'patient'"):
        ColumnMapping.parse("patient=pid")
    with pytest.raises(ManifestError, match="not of the form"):
        ColumnMapping.parse("patient_id")
    (tmp_path / "m.xlsx").write_text("x")
    with pytest.raises(ManifestError, match="unsupported file type"):
        load_manifest(tmp_path / "m.xlsx")


@pytest.mark.parametrize("null_like", ["NaN", "nan", "None", "null", "NULL", "N/A", "NA", "-", " ", ""])
def test_null_like_patient_ids_are_missing_and_named(tmp_path, null_like):
    path = write_manifest(tmp_path / "m.csv", rows(4, r2={"pid": null_like}))
    with pytest.raises(ManifestError, match=r"'pid' \(patient_id\) is empty in 1 row\(s\): 3"):
        load_manifest(path, MAPPING, SPLITS)


def test_null_like_optional_values_are_not_given(tmp_path):
    frame = load_manifest(write_manifest(tmp_path / "m.csv", rows(2, r0={"split": "NaN"})), MAPPING, SPLITS)
    assert frame["split"].to_list() == [None, "train"]


def test_patient_ids_given_mean_patient_level_identity(tmp_path):
    frame = load_manifest(write_manifest(tmp_path / "m.csv", rows()), MAPPING, SPLITS)
    assert frame["identity_level"].to_list() == ["patient"] * 3


@pytest.mark.parametrize("patient_column", ["absent", "all null-like"])
def test_without_patient_ids_the_case_or_the_image_stands_in(tmp_path, patient_column):
    table = [{"path": f"img{i}.png", "dx": "a", "case": case} for i, case in enumerate(["c1", "", "c1"])]
    if patient_column == "all null-like":
        table = [{**row, "pid": value} for row, value in zip(table, ["", "NaN", "null"], strict=True)]
    mapping = ColumnMapping.parse("image_uri=path,label=dx,case_id=case"
                                  + (",patient_id=pid" if patient_column != "absent" else ""))
    frame = load_manifest(write_manifest(tmp_path / "m.csv", table), mapping, SPLITS)
    assert frame["patient_id"].to_list() == ["c1", "img1.png", "c1"]
    assert frame["identity_level"].to_list() == ["case", "image", "case"]
    assert frame.schema["identity_level"] == pl.String


def test_header_only_manifest_is_an_error(tmp_path):
    (tmp_path / "m.csv").write_text("image_uri,patient_id,label\n")
    with pytest.raises(ManifestError, match="has no data rows"):
        load_manifest(tmp_path / "m.csv")
    pl.DataFrame(schema={"image_uri": pl.String, "patient_id": pl.String, "label": pl.String}).write_parquet(
        tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="has no data rows"):
        load_manifest(tmp_path / "m.parquet")


def test_one_source_column_may_stand_for_two_canonical_names(tmp_path):
    path = write_manifest(tmp_path / "m.csv", rows())
    frame = load_manifest(path, ColumnMapping.parse("image_uri=path,patient_id=path,label=dx"), SPLITS)
    assert frame["patient_id"].to_list() == frame["image_uri"].to_list() == ["img0.png", "img1.png", "img2.png"]
    assert "extra__pid" in frame.columns and "extra__path" not in frame.columns


def test_a_mapping_to_a_missing_column_names_it(tmp_path):
    path = write_manifest(tmp_path / "m.csv", rows())
    for spec, named in [("image_uri=path,patient_id=patient,label=dx", "patient_id (looked for column 'patient')"),
                        ("image_uri=path,patient_id=pid,label=dx,split=fold", "split (looked for column 'fold')")]:
        with pytest.raises(ManifestError, match=re.escape(named)):
            load_manifest(path, ColumnMapping.parse(spec), SPLITS)


def test_nested_parquet_columns_are_named_or_carried(tmp_path):
    table = pl.DataFrame(rows()).with_columns(tags=pl.Series([["a"], ["b", "c"], []]),
                                              pid=pl.Series([[1], [2], [3]]))
    table.write_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ManifestError, match=r"column 'pid' \(patient_id\) holds List\(Int64\) values"):
        load_manifest(tmp_path / "bad.parquet", MAPPING, SPLITS)
    table.with_columns(pid=pl.Series([1, 2, 3])).write_parquet(tmp_path / "ok.parquet")
    frame = load_manifest(tmp_path / "ok.parquet", MAPPING, SPLITS)
    assert frame["patient_id"].to_list() == ["1", "2", "3"]
    assert frame["extra__tags"].to_list() == [["a"], ["b", "c"], []]


def test_a_repeated_header_is_an_error(tmp_path):
    (tmp_path / "m.csv").write_text("image_uri,patient_id,patient_id,label\na.png,p1,p2,x\n")
    with pytest.raises(ManifestError, match=r"\['patient_id'\] appear more than once"):
        load_manifest(tmp_path / "m.csv")
