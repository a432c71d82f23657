"""Label issues as assets after training: out-of-fold predictions -> label issues -> taxonomy review.

Like the models, they refuse to start while the leak-free split's own audit still finds a leak: the
folds are grouped by identity on that split, so no model scores an image of a patient it trained on.
"""

from dataclasses import asdict

import dagster as dg
import numpy as np
import polars as pl

from leakage_pipeline.defs.checks import leak_free_split_problems
from leakage_pipeline.defs.dataset import Dataset
from leakage_pipeline.defs.dataset_step import AUDIT, TRAINING, Step, dataset_asset
from leakage_pipeline.defs.metadata import montage_preview, rounded
from leakage_pipeline.defs.training_assets import (
    GROUP,
    LEAK_FREE,
    _class_names,
    _leak_free_table,
    _store_dirs,
    _train_val_test,
)
from leakage_pipeline.storage.files import (
    download_tree,
    read_json,
    read_parquet,
    upload_tree,
    write_json,
    write_parquet,
    write_text,
)
from leakage_pipeline.training.confusion_image import write_confusion_matrix
from leakage_pipeline.training.image_store import open_stores
from leakage_pipeline.training.label_issue_montage import write_label_issue_montage
from leakage_pipeline.training.label_issues import (
    find_label_issues,
    label_effect_on_test,
    label_issues_markdown,
    patient_context_counts,
    verdict_line,
)
from leakage_pipeline.training.out_of_fold import FoldInputs, out_of_fold_probabilities
from leakage_pipeline.training.taxonomy import review_taxonomy, taxonomy_markdown

SUMMARY = "summary.json"
MONTAGE = "label_issues_montage.png"
CONFUSION = "confusion_out_of_fold.png"


def out_of_fold_predictions(step: Step) -> dg.MaterializeResult:
    """Every train/val image's class probabilities from a model that held out its identity's fold (K folds
    grouped by identity, the training's model and settings), beside the leak-free model's for the test images."""
    flagged, spanning = leak_free_split_problems(step.files)
    if flagged or spanning:
        raise dg.Failure(f"no out-of-fold predictions: the leak-free split still leaks ({flagged} flagged image(s), "
                         f"{spanning} patient(s) in more than one split); see its audit, leak_free_audit")
    files, training = step.files, step.training
    train, val, test = _train_val_test(step)
    table = _leak_free_table(step)
    identities = read_parquet(files.leak_free.split_assignments, columns=["location", "identity"])
    fold_table = table.filter(pl.col("split").is_in([train, val])).join(identities, on="location", how="left")
    inputs = FoldInputs(table=fold_table.with_columns(pl.col("identity").fill_null(pl.col("patient_id"))),
                        class_names=tuple(_class_names(table)), image_size=training.image_size,
                        channels=training.channels, settings=training.classifier_settings(),
                        folds=training.label_issue_folds)
    models_dir = files.local_copy(files.out_of_fold_dir)
    download_tree(files.out_of_fold_dir, models_dir)  # a fresh machine reuses the cached fold models
    scored, runs = out_of_fold_probabilities(inputs, open_stores(_store_dirs(step)), models_dir, step.log.info)
    test_rows = read_parquet(files.model_predictions(LEAK_FREE)).select(
        "location", "patient_id", "label", "probabilities").with_columns(split=pl.lit(test), fold=pl.lit(None, pl.Int64))
    columns = ["location", "patient_id", "split", "label", "fold", "probabilities"]
    predictions = pl.concat([scored.select(columns), test_rows.select(columns)])
    write_parquet(predictions, models_dir / files.out_of_fold_predictions.name)
    trained = [run for run in runs if run.trained]
    summary = {"class_names": list(inputs.class_names), "folds": inputs.folds, "runs": [asdict(run) for run in runs]}
    write_json(summary, models_dir / SUMMARY)
    upload_tree(models_dir, files.out_of_fold_dir)
    seconds = sum(run.seconds for run in trained)
    predicted = np.asarray(scored["probabilities"].to_list()).argmax(axis=1)
    top1 = float((np.array(inputs.class_names)[predicted] == scored["label"].to_numpy()).mean())
    return dg.MaterializeResult(metadata={
        "dagster/row_count": predictions.height, "folds": inputs.folds,
        "folds_trained": len(trained), "folds_reused": len(runs) - len(trained),
        "training_seconds": rounded(seconds, 1),
        "training_images_per_second": rounded(float(np.median([r.images_per_second for r in trained])), 1)
        if trained else None,
        "out_of_fold_top1": rounded(top1), "path": dg.MetadataValue.path(str(files.out_of_fold_predictions)),
    })


def label_issues(step: Step) -> dg.MaterializeResult:
    """Each image's label quality, suggested label and whether it is flagged for review (cleanlab on calibrated
    probabilities, with what its patient's other images say), the noise matrix, the share of the test set flagged
    and the share cleanlab finds, and top-1 without the flagged images."""
    files, training = step.files, step.training
    predictions = read_parquet(files.out_of_fold_predictions)
    class_names = read_json(files.out_of_fold_dir / SUMMARY)["class_names"]
    issues, noise, not_calibrated_because = find_label_issues(predictions, class_names)
    test = step.splits[-1]
    effect = label_effect_on_test(issues, predictions.filter(pl.col("split") == test), class_names,
                                  training.bootstrap_resamples, training.seed)
    write_parquet(issues, files.label_issues)
    montage = files.label_issues_dir / MONTAGE
    drawn = write_label_issue_montage(issues, montage)
    markdown = label_issues_markdown(issues, noise, class_names, effect, step.splits, MONTAGE, not_calibrated_because)
    write_text(markdown, files.label_issues_dir / "label_issues.md")
    # The page shows the montage as its own entry: the file link of the Markdown file would be a broken image there.
    page = label_issues_markdown(issues, noise, class_names, effect, step.splits, None, not_calibrated_because)
    verdict = verdict_line(effect)
    write_json({"verdict": verdict, "test_effect": effect, "class_names": class_names,
                "noise_matrix": noise.tolist(), "likely_issues": int(issues["is_label_issue"].sum()),
                "patient_context": patient_context_counts(issues), "not_calibrated_because": not_calibrated_because,
                "images": issues.height}, files.label_issues_dir / SUMMARY)
    step.log.info(verdict)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": issues.height, "verdict": verdict,
        "likely_issues": int(issues["is_label_issue"].sum()), "patient_context": patient_context_counts(issues),
        "calibrated": not_calibrated_because is None,
        "test_share_flagged": rounded(effect["share"]["value"]) if effect["share"] else None,
        "test_share_found_by_cleanlab": rounded(effect["cleanlab_share"]["value"]) if effect["cleanlab_share"] else None,
        "report": dg.MetadataValue.md(page), "montage_examples": drawn,
        "montage": dg.MetadataValue.md(montage_preview(montage, "worst label issues")),
        "path": dg.MetadataValue.path(str(files.label_issues)),
    })


def taxonomy_review(step: Step) -> dg.MaterializeResult:
    """From the out-of-fold confusion matrix: the class pairs confused most (both directions, per true
    class), classes acting as an "other" bucket, and classes too small to learn."""
    files = step.files
    predictions = read_parquet(files.out_of_fold_predictions)
    class_names = read_json(files.out_of_fold_dir / SUMMARY)["class_names"]
    out_of_fold = predictions.filter(pl.col("split") != step.splits[-1])
    review = review_taxonomy(out_of_fold, read_parquet(files.label_issues), class_names)
    picture = files.label_issues_dir / CONFUSION
    write_confusion_matrix(review["confusion_matrix"], class_names, "out-of-fold, train + val", picture)
    markdown = taxonomy_markdown(review, CONFUSION)
    page = taxonomy_markdown(review, None)  # the picture is the page's own entry, as for the label-issue montage
    write_json(review, files.label_issues_dir / "taxonomy_review.json")
    write_text(markdown, files.label_issues_dir / "taxonomy_review.md")
    return dg.MaterializeResult(metadata={
        "review": dg.MetadataValue.md(page),
        "confusion_matrix": dg.MetadataValue.md(montage_preview(picture, "out-of-fold confusion matrix")),
        "most_confused": " / ".join(review["confused_pairs"][0]["classes"]) if review["confused_pairs"] else None,
        "other_buckets": [bucket["class"] for bucket in review["other_buckets"]],
        "too_small_to_learn": [small["class"] for small in review["too_small_to_learn"]],
        "path": dg.MetadataValue.path(str(files.label_issues_dir / "taxonomy_review.json")),
    })


def build_label_issue_assets(dataset: Dataset) -> list[dg.AssetsDefinition]:
    """The dataset's out-of-fold predictions -> label issues -> taxonomy review, in its training group."""

    def asset(body, **spec):
        return dataset_asset(dataset, body, group=GROUP, resources=(AUDIT, TRAINING), **spec)

    return [
        asset(out_of_fold_predictions, deps=["training_images", "leak_free_audit", "leak_free_model"],
              kinds={"pytorch", "parquet"}),
        asset(label_issues, deps=["out_of_fold_predictions"], kinds={"parquet", "markdown"}),
        asset(taxonomy_review, deps=["label_issues"], kinds={"json", "markdown"}),
    ]
