"""No setting or path is silently wrong: a dataset YAML's unknown keys and out-of-range values, the command
line's bad arguments and output directories, foreign URI schemes and a corrupt hash cache each get a clear
answer naming what is wrong, and a path is taken as written."""

import os

import dagster as dg
import polars as pl
import pytest

from leakage_pipeline.audit.manifest import LocationRules, ManifestError, add_locations, load_manifest
from leakage_pipeline.cli import EXIT_COULD_NOT_RUN, main
from leakage_pipeline.defs.dataset import DatasetError, load_dataset
from leakage_pipeline.defs.settings import AuditSettings
from leakage_pipeline.runner import run_audit
from leakage_pipeline_tests.conftest import write_image, write_manifest

SPLITS = ["train", "train", "val", "test"]


def _dataset_file(tmp_path, text: str):
    path = tmp_path / "ward.yaml"
    path.write_text("name: ward\naudit:\n  manifest_path: m.csv\n  output_dir: out\n" + text)
    return path


@pytest.mark.parametrize("text, message", [
    ("  max_radus: 4\n", r"audit\.max_radus: unknown key; audit allows manifest_path, .*max_radius"),
    ("training:\n  epoch: 3\n", r"training\.epoch: unknown key; training allows image_size, .*epochs"),
    ("training:\n  workers: 0\n", r"training\.workers: unknown key; training allows .*decode_workers"),
    ("  max_radius: -3\n", r"audit\.max_radius: Input should be greater than or equal to 0 \(got -3\)"),
    ("  max_radius: 65\n", r"audit\.max_radius: Input should be less than or equal to 64"),
    ("  split_policy: maybe\n", r"audit\.split_policy: split_policy='maybe': expected one of keep, assign"),
    ("  hash_mode: quick\n", r"audit\.hash_mode: hash_mode='quick': expected one of exact, fast"),
    ("  split_fractions: [0.5, 0.6]\n", r"audit\.split_fractions: .*each at least 0, summing to 1"),
    ("training:\n  architecture: vgg\n", r"training\.architecture: .*expected one of small_cnn, resnet18"),
    ("training:\n  channels: 2\n", r"training\.channels: channels=2: expected 1 \(grayscale\) or 3 \(RGB\)"),
    ("training:\n  device: gpu\n", r"training\.device: device=.gpu.: expected auto, cpu, mps, cuda or cuda:N"),
    ("nightly_cron: '0 1 * * *'\n", r"nightly_cron: unknown key; the top level allows name, .*nightly_audit_cron"),
    ("new_data_interval_seconds: 0\n", r"new_data_interval_seconds: Input should be greater than or equal to 1"),
])
def test_a_dataset_yaml_refuses_unknown_keys_and_out_of_range_values_naming_file_and_key(tmp_path, text, message):
    path = _dataset_file(tmp_path, text)
    with pytest.raises(DatasetError, match=message) as raised:
        load_dataset(path)
    assert str(raised.value).startswith(f"dataset file {path}: ")


def test_a_value_from_the_environment_is_checked_when_a_run_starts(tmp_path, monkeypatch):
    path = _dataset_file(tmp_path, "  split_policy: {env: WARD_POLICY}\ntraining:\n  device: {env: WARD_DEVICE}\n")
    dataset = load_dataset(path)  # the variables need not exist where the definitions load
    assert isinstance(dataset.audit_settings().split_policy, dg.EnvVar)
    monkeypatch.setenv("WARD_POLICY", "maybe")  # as Dagster makes the resource when a run starts
    with pytest.raises(Exception, match="split_policy='maybe': expected one of keep, assign"):
        with dataset.audit_settings().process_config_and_initialize_cm():
            pass
    monkeypatch.setenv("WARD_POLICY", "assign")
    with dataset.audit_settings().process_config_and_initialize_cm() as settings:
        assert settings.split_policy == "assign"


def test_the_readme_lists_every_dataset_yaml_key_with_its_type():
    from leakage_pipeline.defs.dataset import Dataset
    from leakage_pipeline.defs.settings import TrainingSettings

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    section = readme.split("**Every key of a dataset YAML.**", 1)[1].split("\n\n", 1)[0]
    for model in (Dataset, AuditSettings, TrainingSettings):
        for key in model.model_fields:
            assert f"`{key}`" in section, f"README's dataset YAML keys lack {model.__name__}.{key}"


def _tiny(folder, names=("a.png", "b.png", "c.png", "d.png")):
    for index, name in enumerate(names):
        write_image(folder / name, index)
    rows = [{"image_uri": name, "patient_id": f"p{index}", "label": "x", "split": split}
            for index, (name, split) in enumerate(zip(names, SPLITS, strict=True))]
    return write_manifest(folder / "m.csv", rows)


@pytest.fixture
def tiny(tmp_path):
    """Four images: two in train, one in val, one in test."""
    return _tiny(tmp_path)


def _audit_cli(manifest, out, *extra) -> int:
    return main(["audit", "--manifest", str(manifest), "--out", str(out), "--no-same-subject", *extra])


@pytest.mark.parametrize("argument, message", [
    (("--max-radius", "-1"), "max_radius: Input should be greater than or equal to 0 (got -1)"),
    (("--max-radius", "65"), "max_radius: Input should be less than or equal to 64 (got 65)"),
    (("--workers", "0"), "hash_workers: Input should be greater than or equal to 1 (got 0)"),
    (("--lock-wait", "-5"), "lock_wait_seconds: Input should be greater than or equal to 0 (got -5.0)"),
])
def test_out_of_range_arguments_exit_2_with_the_range(tiny, tmp_path, capsys, argument, message):
    assert _audit_cli(tiny, tmp_path / "out", *argument) == EXIT_COULD_NOT_RUN
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_output_directory_that_is_a_file_or_read_only_exits_2_naming_it(tiny, tmp_path, capsys):
    a_file = tmp_path / "out.txt"
    a_file.write_text("mine")
    assert _audit_cli(tiny, a_file) == EXIT_COULD_NOT_RUN
    assert f"output directory {a_file} is a file, not a folder" in capsys.readouterr().err
    assert a_file.read_text() == "mine"
    read_only = "/sys/leakage-pipeline-out"  # sysfs refuses a new folder, whoever asks (root included)
    assert _audit_cli(tiny, read_only) == EXIT_COULD_NOT_RUN
    assert f"output directory {read_only} cannot be written" in capsys.readouterr().err


def test_a_manifest_where_the_audit_writes_is_refused_and_left_alone(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    inside = out / "manifest.parquet"
    pl.read_csv(tiny).write_parquet(inside)
    before = inside.read_bytes()
    assert _audit_cli(inside, out, "--image-root", str(tmp_path)) == EXIT_COULD_NOT_RUN
    assert f"the manifest {inside} is where the audit writes its own files" in capsys.readouterr().err
    assert inside.read_bytes() == before
    # Elsewhere in the output directory, under a name the audit never writes, it is only an input.
    kept = out / "my_manifest.parquet"
    inside.rename(kept)
    assert not AuditSettings(manifest_path=str(kept), output_dir=str(out)).check_storage()


@pytest.mark.parametrize("uri", ["file:///data/a.png", "s3://bucket/a.png", "gs:/bucket/a.png", "https://x/a.png"])
def test_rows_with_another_scheme_are_refused_before_any_work_naming_the_row(tmp_path, uri):
    manifest = write_manifest(tmp_path / "m.csv", [
        {"image_uri": "a.png", "patient_id": "p1", "label": "x", "split": "train"},
        {"image_uri": uri, "patient_id": "p2", "label": "x", "split": "test"}])
    frame = load_manifest(manifest)
    with pytest.raises(ManifestError, match=rf"neither a local path nor gs://bucket/object in 1 row\(s\): 2, e\.g\. \['{uri}'\]"):
        add_locations(frame, LocationRules(image_root=str(tmp_path)), str(manifest))


def _hashes(outcome) -> pl.DataFrame:
    return pl.concat([pl.read_parquet(outcome.files.image_hashes(split)) for split in ("train", "val", "test")])


def test_a_path_is_taken_as_written(tmp_path):
    names = ("a.png", " a.png", "b.png", "c.png ")  # legal file names: the spaces are theirs
    manifest = _tiny(tmp_path, names)
    frame = add_locations(load_manifest(manifest), LocationRules(image_root=str(tmp_path)), str(manifest))
    assert frame["image_uri"].to_list() == list(names)
    outcome = run_audit(AuditSettings(manifest_path=str(manifest), output_dir=str(tmp_path / "out"), same_subject=False))
    hashes = _hashes(outcome)
    assert hashes["status"].to_list() == ["ok"] * 4  # " a.png" and "c.png " were read, not "missing"
    assert hashes["sha256"].n_unique() == 4


def test_a_corrupt_hash_cache_is_named_and_rebuilt(tiny, tmp_path, capfd):
    settings = AuditSettings(manifest_path=str(tiny), output_dir=str(tmp_path / "out"), same_subject=False)
    first = run_audit(settings)
    cache = first.files.image_hashes("train")
    expected = pl.read_parquet(cache)
    cache.write_bytes(b"PAR1 not a parquet file at all PAR1")
    second = run_audit(settings)
    rebuilt = {event.partition: event.metadata["hashed"].value for event in second.materializations("image_hashes")}
    assert rebuilt == {"train": 2, "val": 0, "test": 0}  # the unreadable cache's images, hashed again
    assert pl.read_parquet(cache).equals(expected)
    assert f"hash cache {cache} is unreadable" in capfd.readouterr().err  # the run log names it


def test_owners_tags_code_references_and_retries_reach_the_assets(tmp_path):
    from leakage_pipeline.defs.dataset_defs import build_dataset_defs, shared_resources
    from leakage_pipeline.defs.dataset_step import IO_RETRY

    path = _dataset_file(tmp_path, "owners: [imaging@example.org, 'team:radiology']\ntags: {tier: gold}\n")
    definitions = dg.Definitions.merge(build_dataset_defs(load_dataset(path)), dg.Definitions(resources=shared_resources()))
    graph = definitions.resolve_asset_graph()
    for name in ("manifest", "image_hashes", "leakage_report", "training_images"):
        spec = graph.get(dg.AssetKey(["ward", name]))
        assert spec.owners == ["imaging@example.org", "team:radiology"] and spec.tags["tier"] == "gold"
        (reference, *_) = spec.metadata["dagster/code_references"].code_references
        assert os.path.exists(reference.file_path) and reference.line_number > 0
    audit = definitions.resolve_job_def("ward_audit")
    policies = {op.name: op.retry_policy for op in audit.graph.iterate_op_defs()}
    assert policies["ward__manifest"] == policies["ward_hash_split_test"] == IO_RETRY
    assert policies["ward__leakage_report"] is None
    bad = _dataset_file(tmp_path, "owners: [bob]\n")
    with pytest.raises(DatasetError, match=rf"dataset file {bad}: owners: Invalid owner 'bob'"):
        load_dataset(bad)
