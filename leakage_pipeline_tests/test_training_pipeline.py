"""Training assets end to end through Dagster and Pipes, on the small synthetic dataset, on CPU."""

import json

import dagster as dg
import pytest

from leakage_pipeline.defs.automation import audit_run_tags
from leakage_pipeline.defs.settings import AuditSettings, TrainingSettings, pipeline_resources
from leakage_pipeline.defs.training_assets import LEAK_FREE, LEAKY, TRAINING_ASSETS, leak_free_model
from leakage_pipeline.runner import run_audit
from leakage_pipeline.training.evaluation import LEAK_FREE_CLEAN, LEAK_FREE_FULL, LEAKY_FULL
from leakage_pipeline.training.model_files import MODEL_FILE, PREPROCESSING_FILE

TINY = TrainingSettings(image_size=16, epochs=2, batch_size=32, bootstrap_resamples=50)


def _metadata(outcome, asset: str) -> dict:
    """Metadata of the asset's (first partition's) materialization."""
    event = outcome.result.asset_materializations_for_node(asset)[0]
    return {key: value.value for key, value in event.metadata.items()}


@pytest.fixture(scope="module")
def trained(small_demo, tmp_path_factory):
    settings = AuditSettings(manifest_path=str(small_demo), output_dir=str(tmp_path_factory.mktemp("trained")),
                             split_policy="assign")
    return run_audit(settings, training=TINY), settings


def test_both_models_train_through_pipes_and_are_evaluated(trained):
    outcome, _ = trained
    assert not outcome.training_blocked
    files = outcome.files
    for name in (LEAK_FREE, LEAKY):
        assert (files.model_dir(name) / MODEL_FILE).exists() and (files.model_dir(name) / PREPROCESSING_FILE).exists()
    leak_free = _metadata(outcome, "leak_free_model")  # reported from the training process
    assert leak_free["device"] == "cpu" and leak_free["epochs_run"] == 2 and leak_free["images_per_second"] > 0
    assert _metadata(outcome, "leaky_model")["patients_in_train_and_test"] > 0

    summary = json.loads((files.evaluation_dir / "evaluation.json").read_text())
    assert set(summary["rows"]) == {LEAK_FREE_FULL, LEAK_FREE_CLEAN, LEAKY_FULL}
    full, clean = summary["rows"][LEAK_FREE_FULL], summary["rows"][LEAK_FREE_CLEAN]
    flagged_test = json.loads(files.flagged_test_images.read_text())
    assert full["images"] - clean["images"] == summary["flagged_test_images_removed"] == len(flagged_test)
    assert summary["bootstrap"] == {"unit": "patient", "resamples": 50, "confidence": 0.95}
    top1 = full["metrics"]["top1"]
    assert top1["low"] <= top1["value"] <= top1["high"]
    for key in summary["rows"]:
        assert (files.evaluation_dir / f"confusion_{key}.png").exists()
    assert (files.evaluation_dir / "evaluation.md").read_text().startswith("# Does leakage move the metric?")
    assert "verdict" in _metadata(outcome, "model_evaluation")


def test_rerun_decodes_no_image_again(trained):
    _, settings = trained
    again = run_audit(settings, training=TrainingSettings(**{**TINY.model_dump(), "epochs": 1}))
    assert _metadata(again, "training_images")["decoded"] == 0


def test_the_gate_stops_training_on_a_leaky_split(small_demo, tmp_path):
    settings = AuditSettings(manifest_path=str(small_demo), output_dir=str(tmp_path))  # a patient spans splits
    outcome = run_audit(settings, training=TINY)
    assert outcome.training_blocked
    assert not outcome.result.asset_materializations_for_node("leak_free_model")
    assert not (outcome.files.model_dir(LEAK_FREE) / MODEL_FILE).exists()

    # Launched on its own, without the report's blocking check, the asset refuses by itself.
    alone = dg.materialize([*TRAINING_ASSETS], selection=[leak_free_model],
                           resources=pipeline_resources(settings, TINY), tags=audit_run_tags(), raise_on_error=False)
    assert not alone.success
    (failure,) = [e for e in alone.all_events if e.is_step_failure]
    assert "not training: 1 patient(s) have images in more than one split" in str(failure.step_failure_data.error)
