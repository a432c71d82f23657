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
    assert frame.columns[:7] == ["row", "image_uri", "patient_id", "label", "split", "case_id", "vendor"]
    assert frame["site"].to_list() == ["x"] * 3
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
