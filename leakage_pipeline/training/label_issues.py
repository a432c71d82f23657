"""Likely wrong labels by confident learning (cleanlab) on out-of-sample probabilities, and what they do to top-1.

Train/val images are scored by their out-of-fold models, test images by the leak-free model (which
never trained on them). Each image gets cleanlab's label-quality score, the label its probabilities
suggest and whether it is a likely label issue; per class the estimated noise matrix; for the test
set the share of likely issues (Wilson interval) and the leak-free model's top-1 with them removed.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from leakage_pipeline.audit.report import wilson_interval
from leakage_pipeline.markdown_tables import markdown_table
from leakage_pipeline.training.metrics import bootstrap_metrics

ISSUE_COLUMNS = ("location", "patient_id", "split", "given_label", "suggested_label", "label_quality", "is_label_issue")


# A likely label issue is one cleanlab flags whose given label the models also find implausible: where classes
# are hard to tell apart, cleanlab reads the models' confusion as label noise and flags the ambiguous images
# by the hundred (on the demo, 395 of 909 at 6% precision); an image whose given label gets under this
# probability is one the models are confident is something else.
MAX_LABEL_QUALITY = 0.1


def find_label_issues(scored: pl.DataFrame, class_names: list[str],
                      max_label_quality: float = MAX_LABEL_QUALITY) -> tuple[pl.DataFrame, np.ndarray]:
    """``scored`` (location, patient_id, split, label, probabilities) -> one row per image (ISSUE_COLUMNS) and
    the noise matrix P(given label | true label) (rows: given, columns: true), both cleanlab's estimates.
    A likely label issue is flagged by cleanlab and has a label quality (the given label's probability) under
    ``max_label_quality``."""
    from cleanlab.count import estimate_joint
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores

    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[label] for label in scored["label"].to_list()], np.int64)
    probabilities = np.asarray(scored["probabilities"].to_list(), np.float64)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    # One process: the same flags on any machine, and no worker pool forked inside a Dagster step.
    issues = cleanlab_issues(labels, probabilities, filter_by="prune_by_noise_rate", n_jobs=1)
    quality = get_label_quality_scores(labels, probabilities, method="self_confidence")
    joint = estimate_joint(labels, probabilities)  # P(given, true)
    noise = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-12)
    names = np.array(class_names)
    rows = scored.select("location", "patient_id", "split", given_label="label").with_columns(
        suggested_label=pl.Series(names[probabilities.argmax(axis=1)].tolist(), dtype=pl.String),
        label_quality=pl.Series(quality, dtype=pl.Float64),
        is_label_issue=pl.Series(issues & (quality < max_label_quality), dtype=pl.Boolean),
    )
    return rows.select(ISSUE_COLUMNS), noise


def label_effect_on_test(issues: pl.DataFrame, test_predictions: pl.DataFrame, class_names: list[str],
                      resamples: int, seed: int) -> dict:
    """The share of test images with a likely wrong label (Wilson 95%), and the leak-free model's top-1 on
    the test set with and without them (patient-bootstrap 95%, paired: the same patient draws)."""
    merged = test_predictions.select("location", "patient_id", "label", "probabilities").join(
        issues.select("location", "is_label_issue"), on="location", how="inner", maintain_order="left")
    total, flagged = merged.height, int(merged["is_label_issue"].sum())
    if not total:
        return {"test_images": 0, "likely_wrong": 0, "share": None, "top1_all": None, "top1_without_issues": None}
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[label] for label in merged["label"].to_list()], np.int64)
    probabilities = np.asarray(merged["probabilities"].to_list(), np.float64)
    patients = merged["patient_id"].to_numpy()
    keep = ~merged["is_label_issue"].to_numpy()

    def top1(mask: np.ndarray) -> dict:
        return bootstrap_metrics(labels, probabilities, patients, keep=mask, resamples=resamples,
                                 seed=seed).estimates["top1"].as_dict()

    low, high = wilson_interval(flagged, total)
    return {"test_images": total, "likely_wrong": flagged, "share": {"value": flagged / total, "low": low, "high": high},
            "top1_all": top1(np.ones(total, bool)), "top1_without_issues": top1(keep) if keep.any() else None}


def _percent(estimate: dict | None) -> str:
    if not estimate:
        return "n/a"
    return f"{estimate['value']:.1%} (95% CI {estimate['low']:.1%}-{estimate['high']:.1%})"


def verdict_line(effect: dict) -> str:
    """The verdict's label line: how far wrong test labels could move top-1 at most (every flag is counted as a
    wrong label, though look-alike classes are flagged too), and top-1 without them."""
    if not effect["test_images"]:
        return "Labels: no test image was scored, so nothing can be said about wrong test labels."
    return (f"Labels: {effect['likely_wrong']} of {effect['test_images']} test images, {_percent(effect['share'])}, "
            f"are flagged for label review (the out-of-fold models confidently call them another class: a wrong "
            f"label, or a look-alike class), so wrong labels could move top-1 by at most about that much; the leak-free "
            f"model's top-1 is {_percent(effect['top1_all'])} on the whole test set and "
            f"{_percent(effect['top1_without_issues'])} without them.")


def counts_per_split_and_class(issues: pl.DataFrame, split_order: list[str]) -> pl.DataFrame:
    """Images and likely issues per split and given label, in split order."""
    rank = {split: number for number, split in enumerate(split_order)}
    return issues.group_by("split", "given_label").agg(
        images=pl.len(), likely_issues=pl.col("is_label_issue").sum(),
    ).with_columns(order=pl.col("split").replace_strict(rank, default=len(rank))).sort(
        "order", "given_label").drop("order")


def label_issues_markdown(issues: pl.DataFrame, noise: np.ndarray, class_names: list[str], effect: dict,
                          split_order: list[str], montage_name: str | None) -> str:
    counts = counts_per_split_and_class(issues, split_order)
    worst = issues.filter("is_label_issue").sort("label_quality").head(10)
    scored_out_of_fold = issues.filter(pl.col("split") != split_order[-1])
    agreement = (scored_out_of_fold["given_label"] == scored_out_of_fold["suggested_label"]).mean()
    lines = [
        "## Label issues (confident learning on out-of-fold probabilities)", "", verdict_line(effect), "",
        "Train and val images are scored by models that never saw their identity (folds grouped by identity), "
        "test images by the leak-free model.", "",
        f"Out-of-fold top-1 on train and val (the given label is the models' first choice): {agreement or 0:.1%}. "
        "Flags are only as good as these models: where it is low, many flags are the models' errors, not wrong labels.",
        "",
        "### Likely label issues per split and class", "",
        markdown_table(["split", "given label", "images", "likely issues"], counts.rows()), "",
        "### Estimated noise: P(given label | true label)", "",
        markdown_table(["given \\ true", *class_names],
                       [[name, *(f"{value:.3f}" for value in row)] for name, row in zip(class_names, noise, strict=True)]),
        "", "### Worst examples", "",
        markdown_table(["location", "split", "given", "suggested", "label quality"],
                       [[r["location"], r["split"], r["given_label"], r["suggested_label"], f"{r['label_quality']:.3f}"]
                        for r in worst.iter_rows(named=True)]),
    ]
    if montage_name:
        lines += ["", f"![worst label issues]({montage_name})"]
    return "\n".join(lines) + "\n"
