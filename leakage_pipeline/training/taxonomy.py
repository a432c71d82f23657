"""Taxonomy review from the out-of-fold confusion matrix: the class pairs confused most, classes that
act as an "other" bucket, and classes too small to learn.

Rates are normalised by the true class's images (row shares), so a large class does not hide a
small one's confusion. Suggested relabels (from label issues) are counted per pair beside them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from leakage_pipeline.markdown_tables import markdown_table
from leakage_pipeline.training.metrics import confusion_matrix


@dataclass(frozen=True)
class TaxonomyThresholds:
    top_pairs: int = 10  # confused pairs listed
    bucket_inflow: float = 0.10  # a class takes at least this share of another class's images ...
    bucket_sources: float = 0.5  # ... for at least this share of the other classes: an "other" bucket
    min_class_images: int = 30  # fewer training images than this: too small to learn
    # below this recall (as a multiple of chance, 1/classes) a class is not being learned
    min_recall_over_chance: float = 1.0


def review_taxonomy(scored: pl.DataFrame, issues: pl.DataFrame, class_names: list[str],
                    thresholds: TaxonomyThresholds = TaxonomyThresholds()) -> dict:
    """``scored``: out-of-fold rows (label, probabilities); ``issues``: label issues (given/suggested labels)."""
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.array([index[label] for label in scored["label"].to_list()], np.int64)
    predicted = np.asarray(scored["probabilities"].to_list()).argmax(axis=1)
    n = len(class_names)
    matrix = confusion_matrix(labels, predicted, n)
    sizes = matrix.sum(axis=1)
    rates = matrix / np.maximum(sizes[:, None], 1)
    relabels = issues.filter("is_label_issue").group_by("given_label", "suggested_label").len()
    relabel_count = {(g, s): c for g, s, c in relabels.iter_rows()}
    pairs = []
    for a in range(n):
        for b in range(a + 1, n):
            pairs.append({
                "classes": [class_names[a], class_names[b]], "rate_a_as_b": float(rates[a, b]),
                "rate_b_as_a": float(rates[b, a]), "mean_rate": float((rates[a, b] + rates[b, a]) / 2),
                "suggested_relabels": relabel_count.get((class_names[a], class_names[b]), 0)
                + relabel_count.get((class_names[b], class_names[a]), 0),
            })
    pairs.sort(key=lambda pair: (-pair["mean_rate"], pair["classes"]))
    buckets = []
    for j in range(n):
        sources = [class_names[i] for i in range(n) if i != j and sizes[i] and rates[i, j] >= thresholds.bucket_inflow]
        if n > 2 and len(sources) >= max(2, thresholds.bucket_sources * (n - 1)):
            buckets.append({"class": class_names[j], "takes_from": sources})
    chance = 1 / n
    small = [{"class": class_names[i], "images": int(sizes[i]), "recall": float(rates[i, i])} for i in range(n)
             if sizes[i] < thresholds.min_class_images or rates[i, i] < thresholds.min_recall_over_chance * chance]
    return {"class_names": class_names, "confusion_matrix": matrix.tolist(), "images_per_class": sizes.tolist(),
            "recall": np.diag(rates).tolist(), "confused_pairs": pairs[:thresholds.top_pairs],
            "other_buckets": buckets, "too_small_to_learn": small, "thresholds": thresholds.__dict__}


def taxonomy_markdown(review: dict, picture_name: str | None) -> str:
    t = review["thresholds"]
    lines = ["## Taxonomy review (out-of-fold confusion)", "",
             "### Most-confused class pairs (share of each true class predicted as the other)", "",
             markdown_table(["A", "B", "A as B", "B as A", "mean", "suggested relabels"],
                            [[*p["classes"], f"{p['rate_a_as_b']:.1%}", f"{p['rate_b_as_a']:.1%}",
                              f"{p['mean_rate']:.1%}", p["suggested_relabels"]] for p in review["confused_pairs"]]),
             "", f"### \"Other\" buckets (take at least {t['bucket_inflow']:.0%} of the images of at least "
             f"{t['bucket_sources']:.0%} of the other classes)", ""]
    lines += [f"- {b['class']}: takes from {', '.join(b['takes_from'])}" for b in review["other_buckets"]] or ["none"]
    lines += ["", f"### Too small to learn (under {t['min_class_images']} images, or recall below chance)", ""]
    lines += [f"- {s['class']}: {s['images']} images, out-of-fold recall {s['recall']:.1%}"
              for s in review["too_small_to_learn"]] or ["none"]
    if picture_name:
        lines += ["", f"![out-of-fold confusion matrix]({picture_name})"]
    return "\n".join(lines) + "\n"
