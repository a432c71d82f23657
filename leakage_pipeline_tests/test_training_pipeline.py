"""Training assets end to end through Dagster and Pipes, on the small synthetic dataset, on CPU."""

import json

import polars as pl
import pytest

from leakage_pipeline.audit.leak_free_split import LeakFreeSplit
from leakage_pipeline.defs import assets
from leakage_pipeline.defs.settings import AuditSettings, TrainingSettings
from leakage_pipeline.defs.training_assets import LEAK_FREE, LEAKY
from leakage_pipeline.progress import parse_progress
from leakage_pipeline.runner import run_audit
from leakage_pipeline.training.evaluation import LEAK_FREE_SHARED, LEAK_FREE_TEST, LEAKY_SHARED, LEAKY_TEST
from leakage_pipeline.training.model_files import MODEL_FILE, PREPROCESSING_FILE

# Each test trains through Dagster and Pipes: minutes on two cores.
pytestmark = pytest.mark.slow

TINY = TrainingSettings(image_size=16, epochs=2, batch_size=32, bootstrap_resamples=50)


def _metadata(outcome, asset: str) -> dict:
    """Metadata of the asset's (first partition's) materialization."""
    event = outcome.materializations(asset)[0]
    return {key: value.value for key, value in event.metadata.items()}


@pytest.fixture(scope="module")
def progress_lines() -> list[str]:
    """The progress lines of the ``trained`` run's log."""
    return []


@pytest.fixture(scope="module")
def trained(small_demo, tmp_path_factory, progress_lines):
    # The team's split leaks (a patient spans splits); both models train on the leak-free split.
    settings = AuditSettings(manifest_path=str(small_demo), output_dir=str(tmp_path_factory.mktemp("trained")))
    outcome = run_audit(settings, training=TINY, progress=progress_lines.append)
    # Kept as first written: a later test retrains into the same folder.
    return outcome, settings, outcome.files.evaluation_json.read_text()


def test_both_models_train_through_pipes_and_are_evaluated(trained):
    outcome, _, _ = trained
    assert not outcome.training_blocked
    files = outcome.files
    for name in (LEAK_FREE, LEAKY):
        assert (files.model_dir(name) / MODEL_FILE).exists() and (files.model_dir(name) / PREPROCESSING_FILE).exists()
    leak_free = _metadata(outcome, "leak_free_model")  # reported from the training process
    assert leak_free["device"] == "cpu" and leak_free["epochs_run"] == 2 and leak_free["images_per_second"] > 0
    assert _metadata(outcome, "leaky_model")["patients_in_train_and_test"] > 0

    summary = json.loads(files.evaluation_json.read_text())
    assert set(summary["rows"]) == {LEAK_FREE_TEST, LEAKY_TEST, LEAK_FREE_SHARED, LEAKY_SHARED}
    leak_free_test = pl.read_parquet(files.model_split_table(LEAK_FREE).path).filter(pl.col("split") == "test")
    leaky_test = pl.read_parquet(files.model_split_table(LEAKY).path).filter(pl.col("split") == "test")
    shared = leak_free_test.join(leaky_test, on="location", how="semi").height
    assert 0 < shared < leak_free_test.height
    assert summary["shared_test_images"] == summary["rows"][LEAKY_SHARED]["images"] == shared
    assert summary["leak_effect_top1"]["low"] <= summary["leak_effect_top1"]["value"] <= summary["leak_effect_top1"]["high"]
    assert summary["bootstrap"] == {"unit": "patient", "resamples": 50, "confidence": 0.95}
    top1 = summary["rows"][LEAK_FREE_TEST]["metrics"]["top1"]
    assert top1["low"] <= top1["value"] <= top1["high"]
    for key in summary["rows"]:
        assert files.confusion_image(key).exists()
    assert files.evaluation_markdown.read_text().startswith("# Does leakage move the metric?")
    assert "verdict" in _metadata(outcome, "model_evaluation")


def test_each_training_images_partition_counts_its_own_split(trained):
    outcome, _, _ = trained
    counted = {event.partition: event.metadata["dagster/row_count"].value
               for event in outcome.materializations("training_images")}
    readable = {split: pl.read_parquet(outcome.files.image_hashes(split)).filter(pl.col("status") == "ok").height
                for split in ("train", "val", "test")}
    assert counted == readable and counted["train"] > counted["test"]


def test_training_progress_comes_back_through_pipes(trained, progress_lines):
    finished = {line.label: line for line in map(parse_progress, progress_lines) if line.finished}
    for name in (LEAK_FREE, LEAKY):  # written by the training subprocess, relayed by Pipes to the run log
        training = finished[f"training {name}"]
        assert training.unit == "images" and training.details.startswith(", epoch 2/2, ")
    assert {"decoding train for training", "decoding test for training"} <= finished.keys()


def test_rerun_decodes_no_image_again(trained):
    _, settings, _ = trained
    again = run_audit(settings, training=TrainingSettings(**{**TINY.model_dump(), "epochs": 1}))
    assert _metadata(again, "training_images")["decoded"] == 0


def test_the_same_seed_gives_the_same_evaluation(trained, tmp_path):
    _, settings, first_evaluation = trained
    again = run_audit(AuditSettings(manifest_path=settings.manifest_path, output_dir=str(tmp_path)), training=TINY)
    assert again.files.evaluation_json.read_text() == first_evaluation


def test_the_gate_stops_training_when_the_leak_free_split_still_leaks(small_demo, tmp_path, monkeypatch):
    # Sabotage the leak-free split: keep the team's leaky split as it is.
    monkeypatch.setattr(assets, "leak_free_split_of", lambda assignments, *args: LeakFreeSplit(
        assignments.with_columns(identity=pl.col("patient_id")), rounds=1))
    outcome = run_audit(AuditSettings(manifest_path=str(small_demo), output_dir=str(tmp_path)), training=TINY)
    assert outcome.training_blocked
    assert not outcome.materializations("leak_free_model")
    assert not (outcome.files.model_dir(LEAK_FREE) / MODEL_FILE).exists()
