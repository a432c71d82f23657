"""Does leakage move the metric? Test predictions in, a summary with patient-bootstrap intervals out.

Three rows a reviewer wants side by side: the leak-free model on the full test set, the same
model on the test set without the flagged near-duplicates, and the leaky (image-level split)
model on its own test split; then two differences with intervals and a plain-language verdict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from leakage_pipeline.training.metrics import (
    METRICS,
    BootstrapResult,
    Estimate,
    bootstrap_metrics,
    confusion_matrix,
    difference,
)

LEAK_FREE_FULL = "leak_free_full_test"
LEAK_FREE_CLEAN = "leak_free_without_flagged"
LEAKY_FULL = "leaky_full_test"
METRIC_TITLES = {"top1": "top-1", "top3": "top-3", "macro_f1": "macro F1", "macro_auc": "macro AUC"}


@dataclass(frozen=True)
class EvaluationInputs:
    leak_free: pl.DataFrame  # test predictions: location, patient_id, label_index, probabilities
    leaky: pl.DataFrame
    class_names: list[str]
    flagged_locations: set[str]  # test images with a trusted near-duplicate in train or val
    leaky_shared_patients: int  # patients the image-level split put in both train and test
    resamples: int = 1000
    seed: int = 0


def _arrays(predictions: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    labels = predictions["label_index"].to_numpy()
    probabilities = np.array(predictions["probabilities"].to_list(), dtype=np.float64).reshape(len(labels), -1)
    return labels, probabilities, predictions["patient_id"].to_numpy()


def _row(title: str, test_set: str, arrays: tuple[np.ndarray, np.ndarray, np.ndarray], keep: np.ndarray,
         result: BootstrapResult, num_classes: int) -> dict:
    labels, probabilities, patients = arrays
    return {
        "model": title, "test_set": test_set, "images": int(keep.sum()),
        "patients": int(len(np.unique(patients[keep]))),
        "metrics": {name: estimate.as_dict() for name, estimate in result.estimates.items()},
        "confusion_matrix": confusion_matrix(labels[keep], probabilities[keep].argmax(axis=1), num_classes).tolist(),
    }


def _moved(estimate: Estimate) -> bool:
    return bool(estimate.low > 0 or estimate.high < 0)


def _points(estimate: Estimate) -> str:
    return f"{estimate.value * 100:+.1f} points (95% CI {estimate.low * 100:+.1f} to {estimate.high * 100:+.1f})"


def verdict_text(inflation: Estimate, flagged_effect: Estimate | None, flagged: int, shared_patients: int) -> str:
    if _moved(inflation):
        direction = "inflates" if inflation.value > 0 else "lowers"
        first = (f"Leakage moved the metric: the image-level split (with {shared_patients} patient(s) in both train "
                 f"and test) {direction} top-1 by {_points(inflation)} against the patient-level split, beyond the "
                 f"interval.")
    else:
        first = (f"Leakage did not move the metric beyond the interval: image-level vs patient-level split "
                 f"differ by {_points(inflation)}.")
    if flagged_effect is None:
        second = ("No test image was flagged as a near-duplicate of a training image, so the cleaned test set "
                  "is the full one.")
    elif _moved(flagged_effect):
        second = (f"The {flagged} flagged test image(s) move the leak-free model's top-1 by {_points(flagged_effect)} "
                  f"(full minus cleaned test set): report the cleaned number.")
    else:
        second = (f"The {flagged} flagged test image(s) change the leak-free model's top-1 by "
                  f"{_points(flagged_effect)} "
                  f"(full minus cleaned test set), within the interval: the headline number stands.")
    return f"{first} {second}"


def evaluate(inputs: EvaluationInputs) -> dict:
    """The JSON-ready evaluation summary."""
    num_classes = len(inputs.class_names)
    free, leaky_arrays = _arrays(inputs.leak_free), _arrays(inputs.leaky)
    not_flagged = ~inputs.leak_free["location"].is_in(list(inputs.flagged_locations)).to_numpy()
    everything = np.ones(len(free[0]), bool)
    leaky_everything = np.ones(len(leaky_arrays[0]), bool)

    def run(arrays, keep, seed) -> BootstrapResult:
        return bootstrap_metrics(*arrays, keep=keep, resamples=inputs.resamples, seed=seed)

    full = run(free, everything, inputs.seed)
    clean = run(free, not_flagged, inputs.seed)  # same draws: paired
    leaky = run(leaky_arrays, leaky_everything, inputs.seed + 1)
    flagged = int((~not_flagged).sum())
    inflation = difference(leaky, full)
    flagged_effect = difference(full, clean) if flagged else None
    rows = {
        LEAK_FREE_FULL: _row("leak-free (patient-level split)", "full test set", free, everything, full, num_classes),
        LEAK_FREE_CLEAN: _row("leak-free (patient-level split)", "test set without flagged images", free,
                              not_flagged, clean, num_classes),
        LEAKY_FULL: _row("leaky (image-level split)", "its own test split", leaky_arrays, leaky_everything, leaky,
                         num_classes),
    }
    return {
        "class_names": inputs.class_names,
        "bootstrap": {"unit": "patient", "resamples": inputs.resamples, "confidence": 0.95},
        "rows": rows,
        "flagged_test_images_removed": flagged,
        "leaky_split_shared_patients": inputs.leaky_shared_patients,
        "differences": {
            "leaky_minus_leak_free_top1": {**inflation.as_dict(), "moved": _moved(inflation)},
            "full_minus_cleaned_top1": (
                {**flagged_effect.as_dict(), "moved": _moved(flagged_effect)} if flagged_effect else None),
        },
        "verdict": verdict_text(inflation, flagged_effect, flagged, inputs.leaky_shared_patients),
    }


def _cell(estimate: dict) -> str:
    if estimate["value"] is None:
        return "–"
    if estimate["low"] is None:
        return f"{estimate['value']:.3f}"
    return f"{estimate['value']:.3f} [{estimate['low']:.3f}, {estimate['high']:.3f}]"


def summary_markdown(summary: dict) -> str:
    """The leaky vs leak-free, full vs cleaned table with 95% patient-bootstrap intervals."""
    metrics = [m for m in METRICS if any(r["metrics"][m]["value"] is not None for r in summary["rows"].values())]
    header = ["model", "test set", "images", "patients"] + [METRIC_TITLES[m] for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in summary["rows"].values():
        cells = [row["model"], row["test_set"], str(row["images"]), str(row["patients"])]
        lines.append("| " + " | ".join(cells + [_cell(row["metrics"][m]) for m in metrics]) + " |")
    return "\n".join(lines)


def confusion_markdown(summary: dict, row_key: str) -> str:
    names = summary["class_names"]
    matrix = summary["rows"][row_key]["confusion_matrix"]
    lines = ["| true \\ predicted | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    lines += ["| " + name + " | " + " | ".join(map(str, counts)) + " |" for name, counts in zip(names, matrix,
                                                                                                 strict=True)]
    return "\n".join(lines)


def evaluation_markdown(summary: dict) -> str:
    parts = ["# Does leakage move the metric?", "", summary["verdict"], "", summary_markdown(summary), "",
             f"Intervals: 95% percentile bootstrap over patients ({summary['bootstrap']['resamples']} resamples). "
             f"{summary['flagged_test_images_removed']} flagged test image(s) removed for the cleaned row; the "
             f"image-level split put {summary['leaky_split_shared_patients']} patient(s) in both train and test."]
    for key, row in summary["rows"].items():
        parts += ["", f"## Confusion matrix: {row['model']}, {row['test_set']}", "", confusion_markdown(summary, key)]
    return "\n".join(parts) + "\n"
