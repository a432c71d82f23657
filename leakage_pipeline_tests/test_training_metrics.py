"""Evaluation metrics against scikit-learn, and the bootstrap that resamples patients."""

import numpy as np
import polars as pl
import pytest
from sklearn import metrics as sk

from leakage_pipeline.training.evaluation import LEAK_FREE_CLEAN, LEAKY_FULL, EvaluationInputs, evaluate
from leakage_pipeline.training.metrics import (
    bootstrap_metrics,
    classification_metrics,
    confusion_matrix,
    patient_resamples,
)


def _fixed_predictions(seed: int, n: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes)) + 1.5 * np.eye(classes)[labels]
    logits[: n // 10] = np.round(logits[: n // 10])  # some tied scores
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


@pytest.mark.parametrize(("classes", "seed"), [(2, 0), (3, 1), (5, 2), (5, 3)])
def test_metrics_equal_scikit_learn(classes, seed):
    labels, probabilities = _fixed_predictions(seed, 300, classes)
    ours = classification_metrics(labels, probabilities)
    predicted = probabilities.argmax(axis=1)
    assert ours["top1"] == pytest.approx(sk.accuracy_score(labels, predicted))
    assert ours["macro_f1"] == pytest.approx(sk.f1_score(labels, predicted, average="macro"))
    expected_auc = (sk.roc_auc_score(labels, probabilities[:, 1]) if classes == 2
                    else sk.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro"))
    assert ours["macro_auc"] == pytest.approx(expected_auc)
    if classes > 3:
        assert ours["top3"] == pytest.approx(sk.top_k_accuracy_score(labels, probabilities, k=3))
    else:
        assert np.isnan(ours["top3"])
    np.testing.assert_array_equal(confusion_matrix(labels, predicted, classes),
                                  sk.confusion_matrix(labels, predicted, labels=list(range(classes))))


def test_macro_f1_with_a_class_never_predicted_or_seen():
    labels = np.array([0, 0, 1, 1, 1])
    predicted = np.array([0, 1, 1, 1, 0])
    probabilities = np.eye(4)[predicted]
    assert classification_metrics(labels, probabilities)["macro_f1"] == pytest.approx(
        sk.f1_score(labels, predicted, average="macro"))


def test_bootstrap_draws_whole_patients_with_replacement():
    patients = np.array(["a", "b", "a", "c", "c", "c", "d", "b"])
    sizes = {p: int((patients == p).sum()) for p in set(patients)}
    repeated_patient_seen = False
    for sample in patient_resamples(patients, 200, seed=1):
        drawn = patients[sample]
        for patient in set(drawn):
            count = int((drawn == patient).sum())
            assert count % sizes[patient] == 0  # every image of a drawn patient, each time drawn
            # a patient's images appear together, whole: same indices once per draw
            assert sorted(sample[drawn == patient].tolist()) == sorted(
                np.where(patients == patient)[0].tolist() * (count // sizes[patient]))
            repeated_patient_seen |= count > sizes[patient]
        assert len(set(drawn)) <= 4
    assert repeated_patient_seen


def test_patient_bootstrap_is_wider_than_image_bootstrap_for_correlated_images():
    # 10 patients x 30 images; each patient is all right or all wrong: 10 independent facts, not 300.
    rng = np.random.default_rng(0)
    patients = np.repeat(np.arange(10), 30)
    correct = np.repeat(rng.random(10) < 0.6, 30)
    labels = np.zeros(300, int)
    probabilities = np.where(correct[:, None], [[0.9, 0.1]], [[0.1, 0.9]])
    by_patient = bootstrap_metrics(labels, probabilities, patients, resamples=400).estimates["top1"]
    by_image = bootstrap_metrics(labels, probabilities, np.arange(300), resamples=400).estimates["top1"]
    assert (by_patient.high - by_patient.low) > 3 * (by_image.high - by_image.low)
    assert by_patient.low <= by_patient.value <= by_patient.high


def _predictions(labels, probabilities, patients, prefix):
    return pl.DataFrame({
        "location": [f"{prefix}{i}" for i in range(len(labels))], "patient_id": patients.astype(str),
        "label_index": labels, "probabilities": probabilities.tolist(),
    })


def test_evaluation_calls_an_inflated_leaky_score_and_a_harmless_flagged_set():
    rng = np.random.default_rng(4)
    patients = np.repeat(np.arange(60), 4)
    labels = np.repeat(rng.integers(0, 3, 60), 4)
    honest = np.where(rng.random(240)[:, None] < 0.55, np.eye(3)[labels], np.eye(3)[(labels + 1) % 3]) * 0.8 + 0.2 / 3
    leaky = np.eye(3)[labels] * 0.8 + 0.2 / 3  # memorised: always right
    free = _predictions(labels, honest, patients, "t")
    summary = evaluate(EvaluationInputs(
        leak_free=free, leaky=_predictions(labels, leaky, patients, "l"), class_names=["a", "b", "c"],
        flagged_locations={"t0", "t1", "t2", "t3"}, leaky_shared_patients=50, resamples=300,
    ))
    assert summary["differences"]["leaky_minus_leak_free_top1"]["moved"]
    assert summary["rows"][LEAKY_FULL]["metrics"]["top1"]["value"] == 1.0
    assert summary["rows"][LEAK_FREE_CLEAN]["images"] == 236
    assert summary["rows"][LEAK_FREE_CLEAN]["patients"] == 59
    assert summary["rows"][LEAKY_FULL]["metrics"]["top3"]["value"] is None  # three classes: no top-3
    assert "Leakage moved the metric" in summary["verdict"] and "within the interval" in summary["verdict"]
