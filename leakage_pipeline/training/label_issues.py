"""Likely wrong labels by confident learning (cleanlab) on out-of-sample probabilities, and what they do to top-1.

Train/val images are scored by their out-of-fold models, test images by the leak-free model (which
never trained on them), and the probabilities calibrated (``probability_calibration``). Each image gets
cleanlab's label-quality score, the label its probabilities suggest and whether it is a likely label
issue; each flag what its patient's other images say about it; per class the estimated noise matrix; for
the test set the share of likely issues (Wilson interval) and the leak-free model's top-1 without them.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from leakage_pipeline.audit.report import wilson_interval
from leakage_pipeline.markdown_tables import markdown_table
from leakage_pipeline.training.metrics import bootstrap_metrics
from leakage_pipeline.training.probability_calibration import calibrate

ISSUE_COLUMNS = ("location", "patient_id", "split", "given_label", "suggested_label", "label_quality", "is_label_issue",
                 "patient_context", "cleanlab_issue")

# What a flagged image's patient says about it (its other scored images, any split; a majority decides):
PATIENT_CONTEXT = {
    "label_differs_from_patient": "the patient's other images carry the suggested label: most likely this image's "
                                  "label is wrong",
    "patient_looks_like_suggested": "the patient's other images carry the same label but look like the suggested "
                                    "class too: the patient's label is wrong, or the patient is atypical of the class "
                                    "(a look-alike)",
    "image_differs_from_patient": "the patient's other images carry the same label and look like it: this image "
                                  "alone looks like another class",
    "only_image": "no other image of the patient was scored",
}


# A likely label issue (a flag for review) is one cleanlab finds whose given label the models also find
# implausible: where classes are hard to tell apart, cleanlab reads the models' confusion as label noise and
# finds the ambiguous images by the hundred (on the demo 574 of 3,046 train/val images, 80 of 82 plants among
# them); an image whose given label gets under this calibrated probability is one the models are confident
# is something else. The bar costs recall where labels are very noisy: calibrated on labels 10% wrong, a
# wrong label's probability nears 0.1 (on 2,000 Kermany X-rays, 50 of 200 flips flagged, 173 found by
# cleanlab), so the share cleanlab finds (``cleanlab_issue``), not the flags, bounds what labels do to top-1.
MAX_LABEL_QUALITY = 0.1


def find_label_issues(scored: pl.DataFrame, class_names: list[str],
                      max_label_quality: float = MAX_LABEL_QUALITY) -> tuple[pl.DataFrame, np.ndarray, str | None]:
    """``scored`` (location, patient_id, split, label, fold: null where scored by the leak-free model,
    probabilities) -> one row per image (ISSUE_COLUMNS), the noise matrix P(given label | true label) (rows:
    given, columns: true), both cleanlab's estimates on calibrated probabilities, and why the probabilities
    were left uncalibrated (None when they were calibrated). ``cleanlab_issue``: found by cleanlab (its
    estimate of the wrong or ambiguous labels); ``is_label_issue``, a flag for review: found by cleanlab and
    a label quality (the given label's calibrated probability) under ``max_label_quality``."""
    from cleanlab.count import estimate_joint
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores

    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[label] for label in scored["label"].to_list()], np.int64)
    calibrated = calibrate(np.asarray(scored["probabilities"].to_list(), np.float64), labels,
                           scored["fold"].fill_null(-1).to_numpy(), class_names)
    probabilities = calibrated.probabilities
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
        cleanlab_issue=pl.Series(issues, dtype=pl.Boolean),
    )
    return with_patient_context(rows).select(ISSUE_COLUMNS), noise, calibrated.not_calibrated_because


def with_patient_context(rows: pl.DataFrame) -> pl.DataFrame:
    """Each flagged image's ``patient_context`` (a key of PATIENT_CONTEXT; null where not flagged), from the
    given and suggested labels of its patient's other images."""
    flagged = rows.filter("is_label_issue").select("location", "patient_id", "suggested_label")
    others = flagged.join(rows.select("patient_id", other="location", other_given="given_label",
                                      other_suggested="suggested_label"), on="patient_id").filter(
        pl.col("other") != pl.col("location"))
    votes = others.group_by("location").agg(
        others=pl.len(), carry_suggested=(pl.col("other_given") == pl.col("suggested_label")).sum(),
        look_suggested=(pl.col("other_suggested") == pl.col("suggested_label")).sum())
    context = flagged.join(votes, on="location", how="left").select("location", patient_context=(
        pl.when(pl.col("others").is_null()).then(pl.lit("only_image"))
        .when(2 * pl.col("carry_suggested") >= pl.col("others")).then(pl.lit("label_differs_from_patient"))
        .when(2 * pl.col("look_suggested") >= pl.col("others")).then(pl.lit("patient_looks_like_suggested"))
        .otherwise(pl.lit("image_differs_from_patient"))))
    return rows.join(context, on="location", how="left", maintain_order="left")


def label_effect_on_test(issues: pl.DataFrame, test_predictions: pl.DataFrame, class_names: list[str],
                      resamples: int, seed: int) -> dict:
    """The share of test images flagged for review and the share cleanlab finds (each Wilson 95%), and the
    leak-free model's top-1 on the test set with and without the flagged images (patient-bootstrap 95%,
    paired: the same patient draws)."""
    merged = test_predictions.select("location", "patient_id", "label", "probabilities").join(
        issues.select("location", "is_label_issue", "patient_context", "cleanlab_issue"), on="location", how="inner",
        maintain_order="left")
    total, flagged, found = merged.height, int(merged["is_label_issue"].sum()), int(merged["cleanlab_issue"].sum())
    differs = int((merged["patient_context"] == "label_differs_from_patient").sum())
    if not total:
        return {"test_images": 0, "likely_wrong": 0, "label_differs_from_patient": 0, "cleanlab_issues": 0,
                "share": None, "cleanlab_share": None, "top1_all": None, "top1_without_issues": None}
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[label] for label in merged["label"].to_list()], np.int64)
    probabilities = np.asarray(merged["probabilities"].to_list(), np.float64)
    patients = merged["patient_id"].to_numpy()
    keep = ~merged["is_label_issue"].to_numpy()

    def top1(mask: np.ndarray) -> dict:
        return bootstrap_metrics(labels, probabilities, patients, keep=mask, resamples=resamples,
                                 seed=seed).estimates["top1"].as_dict()

    def share(count: int) -> dict:
        low, high = wilson_interval(count, total)
        return {"value": count / total, "low": low, "high": high}

    return {"test_images": total, "likely_wrong": flagged, "label_differs_from_patient": differs,
            "cleanlab_issues": found, "share": share(flagged), "cleanlab_share": share(found),
            "top1_all": top1(np.ones(total, bool)), "top1_without_issues": top1(keep) if keep.any() else None}


def _percent(estimate: dict | None) -> str:
    if not estimate:
        return "n/a"
    return f"{estimate['value']:.1%} (95% CI {estimate['low']:.1%}-{estimate['high']:.1%})"


def verdict_line(effect: dict) -> str:
    """The verdict's label line: the test images flagged for review, how far wrong test labels could move top-1
    (the share cleanlab finds: wrong labels and look-alikes alike, so an upper estimate), and top-1 without the
    flagged images."""
    if not effect["test_images"]:
        return "Labels: no test image was scored, so nothing can be said about wrong test labels."
    return (f"Labels: {effect['likely_wrong']} of {effect['test_images']} test images, {_percent(effect['share'])}, "
            f"are flagged for label review (the models confidently call them another class: a wrong label, or a "
            f"look-alike; {effect['label_differs_from_patient']} of them carry a label their patient's other images "
            f"do not). Confident learning finds {effect['cleanlab_issues']} test labels wrong or ambiguous, "
            f"{_percent(effect['cleanlab_share'])}, so wrong labels could move top-1 by up to about that much; the "
            f"leak-free model's top-1 is {_percent(effect['top1_all'])} on the whole test set and "
            f"{_percent(effect['top1_without_issues'])} without the flagged images.")


def counts_per_split_and_class(issues: pl.DataFrame, split_order: list[str]) -> pl.DataFrame:
    """Images, flags and cleanlab's finds per split and given label, in split order."""
    rank = {split: number for number, split in enumerate(split_order)}
    return issues.group_by("split", "given_label").agg(
        images=pl.len(), likely_issues=pl.col("is_label_issue").sum(), cleanlab_issues=pl.col("cleanlab_issue").sum(),
    ).with_columns(order=pl.col("split").replace_strict(rank, default=len(rank))).sort(
        "order", "given_label").drop("order")


def patient_context_counts(issues: pl.DataFrame) -> dict[str, int]:
    """Flags per patient context, every context listed (0 where none)."""
    counts = dict(issues.filter("is_label_issue").group_by("patient_context").len().iter_rows())
    return {context: counts.get(context, 0) for context in PATIENT_CONTEXT}


def label_issues_markdown(issues: pl.DataFrame, noise: np.ndarray, class_names: list[str], effect: dict,
                          split_order: list[str], montage_name: str | None, not_calibrated_because: str | None) -> str:
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
        "", "Probabilities are calibrated before flagging (matrix scaling fitted on other folds' held-out predictions)."
        if not_calibrated_because is None else f"Probabilities are not calibrated: {not_calibrated_because}; "
        "flags in look-alike classes are then more frequent.", "",
        "### What each flagged image's patient says", "",
        markdown_table(["flags", "patient context"], [[count, f"`{context}`: {PATIENT_CONTEXT[context]}"]
                                                      for context, count in patient_context_counts(issues).items()]),
        "",
        "### Likely label issues per split and class", "",
        markdown_table(["split", "given label", "images", "flagged for review", "found by cleanlab"], counts.rows()), "",
        "### Estimated noise: P(given label | true label)", "",
        markdown_table(["given \\ true", *class_names],
                       [[name, *(f"{value:.3f}" for value in row)] for name, row in zip(class_names, noise, strict=True)]),
        "", "### Worst examples", "",
        markdown_table(["location", "split", "given", "suggested", "label quality", "patient context"],
                       [[r["location"], r["split"], r["given_label"], r["suggested_label"], f"{r['label_quality']:.3f}",
                         r["patient_context"]] for r in worst.iter_rows(named=True)]),
    ]
    if montage_name:
        lines += ["", f"![worst label issues]({montage_name})"]
    return "\n".join(lines) + "\n"
