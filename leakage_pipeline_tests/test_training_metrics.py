"""Evaluation metrics against scikit-learn, and the bootstrap that resamples patients."""

import numpy as np
import polars as pl
import pytest
from sklearn import metrics as sk

from leakage_pipeline.training.evaluation import (
    LEAK_FREE_SHARED,
    LEAKY_SHARED,
    LEAKY_TEST,
    EvaluationInputs,
    evaluate,
)
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


def test_evaluation_compares_both_models_on_the_shared_test_images_paired():
    rng = np.random.default_rng(4)
    patients = np.repeat(np.arange(60), 4)
    labels = np.repeat(rng.integers(0, 3, 60), 4)
    honest = np.where(rng.random(240)[:, None] < 0.55, np.eye(3)[labels], np.eye(3)[(labels + 1) % 3]) * 0.8 + 0.2 / 3
    memorised = np.eye(3)[labels] * 0.8 + 0.2 / 3  # always right
    free = _predictions(labels, honest, patients, "t")
    # The leaky model's test split shares the first 200 images with the leak-free one; 40 are its own.
    leaky = pl.concat([_predictions(labels[:200], memorised[:200], patients[:200], "t"),
                       _predictions(labels[:40], memorised[:40], patients[:40] + 100, "own")])
    summary = evaluate(EvaluationInputs(
        leak_free=free, leaky=leaky, class_names=["a", "b", "c"], leaky_shared_patients=50, resamples=300,
    ))
    assert summary["shared_test_images"] == 200
    assert summary["rows"][LEAK_FREE_SHARED]["images"] == summary["rows"][LEAKY_SHARED]["images"] == 200
    assert summary["rows"][LEAKY_SHARED]["patients"] == 50
    assert summary["rows"][LEAKY_TEST]["images"] == 240 and summary["rows"][LEAKY_TEST]["metrics"]["top1"]["value"] == 1.0
    effect = summary["leak_effect_top1"]
    shared_free_top1 = summary["rows"][LEAK_FREE_SHARED]["metrics"]["top1"]["value"]
    assert effect["value"] == pytest.approx(1.0 - shared_free_top1)
    assert effect["moved"] and effect["low"] > 0
    assert summary["rows"][LEAKY_TEST]["metrics"]["top3"]["value"] is None  # three classes: no top-3
    assert "On the same 200 test images (50 patients)" in summary["verdict"]
    assert "leakage moved the metric up, beyond the interval" in summary["verdict"]


def test_paired_interval_is_narrower_than_the_unpaired_one():
    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(80), 3)
    labels = rng.integers(0, 2, 240)
    base = rng.random(240) < 0.7
    flipped = base.copy()
    flipped[rng.choice(240, 12, replace=False)] = True  # the leaky model gets 12 more right, on the same images
    free = _predictions(labels, np.eye(2)[np.where(base, labels, 1 - labels)], patients, "t")
    leaky = _predictions(labels, np.eye(2)[np.where(flipped, labels, 1 - labels)], patients, "t")
    summary = evaluate(EvaluationInputs(leak_free=free, leaky=leaky, class_names=["a", "b"],
                                        leaky_shared_patients=0, resamples=400))
    effect = summary["leak_effect_top1"]
    free_row = summary["rows"][LEAK_FREE_SHARED]["metrics"]["top1"]
    assert effect["high"] - effect["low"] < (free_row["high"] - free_row["low"]) / 2
    assert effect["moved"]
