"""Does leakage move the metric? Test predictions in, a summary with patient-bootstrap intervals out.

Each model is scored on its own test split, and both on the same test images: the leak-free test
images the leaky split left in test, which neither model trained on although the leaky model saw
other images of their patients. The difference on those shared images, with an interval from a
paired bootstrap over patients (the same patient draws for both models), is the leak's effect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from leakage_pipeline.markdown_tables import markdown_table
from leakage_pipeline.training.metrics import (
    METRICS,
    BootstrapResult,
    Estimate,
    bootstrap_metrics,
    confusion_matrix,
    difference,
)

LEAK_FREE_TEST = "leak_free_own_test"
LEAKY_TEST = "leaky_own_test"
LEAK_FREE_SHARED = "leak_free_shared_test"
LEAKY_SHARED = "leaky_shared_test"
LEAK_FREE_TITLE = "leak-free (identities whole)"
LEAKY_TITLE = "leaky (test patients' images in train)"
METRIC_TITLES = {"top1": "top-1", "top3": "top-3", "macro_f1": "macro F1", "macro_auc": "macro AUC"}


@dataclass(frozen=True)
class EvaluationInputs:
    leak_free: pl.DataFrame  # test predictions: location, patient_id, label_index, probabilities
    leaky: pl.DataFrame
    class_names: list[str]
    leaky_shared_patients: int  # patients the leaky split put in both train and test
    resamples: int = 1000
    seed: int = 0


Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # labels, probabilities, patients


def _arrays(predictions: pl.DataFrame, probabilities: str = "probabilities") -> Arrays:
    labels = predictions["label_index"].to_numpy()
    values = np.array(predictions[probabilities].to_list(), dtype=np.float64).reshape(len(labels), -1)
    return labels, values, predictions["patient_id"].to_numpy()


def _row(title: str, test_set: str, arrays: Arrays, result: BootstrapResult, num_classes: int) -> dict:
    labels, probabilities, patients = arrays
    return {
        "model": title, "test_set": test_set, "images": len(labels), "patients": int(len(np.unique(patients))),
        "metrics": {name: estimate.as_dict() for name, estimate in result.estimates.items()},
        "confusion_matrix": confusion_matrix(labels, probabilities.argmax(axis=1), num_classes).tolist(),
    }


def _moved(estimate: Estimate) -> bool:
    return bool(estimate.low > 0 or estimate.high < 0)


def _points(estimate: Estimate) -> str:
    return f"{estimate.value * 100:+.1f} points (95% CI {estimate.low * 100:+.1f} to {estimate.high * 100:+.1f})"


def verdict_text(effect: Estimate | None, shared_images: int, shared_patients: int, leaky_patients: int) -> str:
    if effect is None:
        return ("No test image was left out of the leaky model's training, so the two models cannot be compared on "
                "the same images.")
    where = (f"On the same {shared_images} test images ({shared_patients} patients), which neither model trained on "
             f"but whose patients' other images the leaky model saw ({leaky_patients} patients in its train and test), "
             f"the leaky model's top-1 minus the leak-free model's is {_points(effect)}")
    if _moved(effect):
        return f"{where}: leakage moved the metric{' up' if effect.value > 0 else ' down'}, beyond the interval."
    return f"{where}: leakage did not move the metric beyond the interval."


def evaluate(inputs: EvaluationInputs) -> dict:
    """The JSON-ready evaluation summary."""
    num_classes = len(inputs.class_names)
    shared = inputs.leak_free.join(
        inputs.leaky.select("location", leaky_probabilities="probabilities"), on="location", maintain_order="left")
    free_own, leaky_own = _arrays(inputs.leak_free), _arrays(inputs.leaky)
    free_shared, leaky_shared = _arrays(shared), _arrays(shared, "leaky_probabilities")

    def run(arrays: Arrays, seed: int) -> BootstrapResult:
        return bootstrap_metrics(*arrays, resamples=inputs.resamples, seed=seed)

    sets = {
        LEAK_FREE_TEST: (LEAK_FREE_TITLE, "its own test split", free_own, inputs.seed),
        LEAKY_TEST: (LEAKY_TITLE, "its own test split", leaky_own, inputs.seed + 1),
    }
    if shared.height:
        # One seed over one patient list: the same draws for both models, so their difference is paired.
        sets |= {
            LEAK_FREE_SHARED: (LEAK_FREE_TITLE, "shared test images", free_shared, inputs.seed + 2),
            LEAKY_SHARED: (LEAKY_TITLE, "shared test images", leaky_shared, inputs.seed + 2),
        }
    results = {key: run(arrays, seed) for key, (_, _, arrays, seed) in sets.items()}
    effect = difference(results[LEAKY_SHARED], results[LEAK_FREE_SHARED]) if shared.height else None
    shared_patients = int(len(np.unique(free_shared[2])))
    return {
        "class_names": inputs.class_names,
        "bootstrap": {"unit": "patient", "resamples": inputs.resamples, "confidence": 0.95},
        "rows": {key: _row(title, test_set, arrays, results[key], num_classes)
                 for key, (title, test_set, arrays, _) in sets.items()},
        "shared_test_images": shared.height,
        "leaky_split_shared_patients": inputs.leaky_shared_patients,
        "leak_effect_top1": {**effect.as_dict(), "moved": _moved(effect)} if effect else None,
        "verdict": verdict_text(effect, shared.height, shared_patients, inputs.leaky_shared_patients),
    }


def _cell(estimate: dict) -> str:
    if estimate["value"] is None:
        return "–"
    if estimate["low"] is None:
        return f"{estimate['value']:.3f}"
    return f"{estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"


def summary_markdown(summary: dict) -> str:
    """Each model on its own test split and both on the shared test images, with 95% patient-bootstrap intervals."""
    metrics = [m for m in METRICS if any(r["metrics"][m]["value"] is not None for r in summary["rows"].values())]
    header = ["model", "test set", "images", "patients"] + [METRIC_TITLES[m] for m in metrics]
    return markdown_table(header, [[row["model"], row["test_set"], row["images"], row["patients"],
                                    *(_cell(row["metrics"][m]) for m in metrics)] for row in summary["rows"].values()])


def confusion_markdown(summary: dict, row_key: str) -> str:
    names = summary["class_names"]
    matrix = summary["rows"][row_key]["confusion_matrix"]
    return markdown_table(["true \\ predicted", *names],
                          [[name, *counts] for name, counts in zip(names, matrix, strict=True)])


def evaluation_markdown(summary: dict) -> str:
    parts = ["# Does leakage move the metric?", "", summary["verdict"], "", summary_markdown(summary), "",
             f"Intervals: 95% percentile bootstrap over patients ({summary['bootstrap']['resamples']} resamples), "
             "paired on the shared test images. The leaky split moved about half of each test patient's images "
             f"into training (as many training images into test), putting {summary['leaky_split_shared_patients']} "
             "patient(s) in both train and test."]
    for key, row in summary["rows"].items():
        parts += ["", f"## Confusion matrix: {row['model']}, {row['test_set']}", "", confusion_markdown(summary, key)]
    return "\n".join(parts) + "\n"
