"""Label issues: identity-grouped folds, the fold-model cache, cleanlab's flags, the taxonomy review and the
report section, and the assets' place in a dataset's definitions."""

from dataclasses import replace

import dagster as dg
import numpy as np
import polars as pl
import pytest

from leakage_pipeline.cli import main
from leakage_pipeline.defs.dataset import Dataset
from leakage_pipeline.defs.dataset_defs import build_dataset_defs, shared_resources
from leakage_pipeline.defs.dataset_step import asset_key
from leakage_pipeline.defs.settings import AuditSettings
from leakage_pipeline.training.image_store import ImageStore
from leakage_pipeline.training.label_issues import (
    find_label_issues,
    label_effect_on_test,
    label_issues_markdown,
    patient_context_counts,
    verdict_line,
    with_patient_context,
)
from leakage_pipeline.training.out_of_fold import FoldInputs, grouped_folds, out_of_fold_probabilities
from leakage_pipeline.training.probability_calibration import MIN_IMAGES_PER_CLASS, calibrate
from leakage_pipeline.training.settings import ClassifierSettings
from leakage_pipeline.training.taxonomy import review_taxonomy, taxonomy_markdown


def test_folds_keep_each_identity_whole_and_balance_labels():
    rng = np.random.default_rng(1)
    groups, labels = [], []
    for group in range(120):
        label = str(rng.choice(["a", "b", "c"], p=[0.6, 0.3, 0.1]))
        for _ in range(int(rng.integers(1, 9))):
            groups.append(f"id{group}")
            labels.append(label)
    folds = grouped_folds(groups, labels, 5, seed=0)
    table = pl.DataFrame({"group": groups, "label": labels, "fold": folds})
    assert table.group_by("group").agg(pl.col("fold").n_unique())["fold"].max() == 1  # no identity in two folds
    sizes = table.group_by("fold").len()["len"]
    assert sizes.len() == 5 and sizes.max() - sizes.min() <= 8  # at most one identity's worth apart
    per_label = table.group_by("label", "fold").len().group_by("label").agg(spread=pl.col("len").max() - pl.col("len").min())
    assert per_label["spread"].max() <= 8
    assert (grouped_folds(groups, labels, 5, seed=0) == folds).all()
    with pytest.raises(ValueError, match="at least 2 folds"):
        grouped_folds(groups, labels, 1, seed=0)
    with pytest.raises(ValueError, match="need at least 5 identities; found 3"):
        grouped_folds(["x", "y", "z"], ["a", "a", "b"], 5, seed=0)


def _bright_and_dark(patients: int = 30, per_patient: int = 3, size: int = 16) -> tuple[pl.DataFrame, ImageStore]:
    """Two classes a small CNN separates in a few epochs: bright images ("a") and dark ones ("b")."""
    rng = np.random.default_rng(0)
    rows, images = [], []
    for patient in range(patients):
        label = "ab"[patient % 2]
        for shot in range(per_patient):
            level = 190 if label == "a" else 60
            images.append(np.clip(rng.normal(level, 25, (3, size, size)), 0, 255).astype(np.uint8))
            rows.append({"location": f"/img/{patient}_{shot}.png", "patient_id": f"p{patient}",
                         "identity": f"p{patient}", "label": label, "split": "train"})
    table = pl.DataFrame(rows)
    index = table.select("location").with_columns(sha256=pl.col("location"), part=pl.lit(0, pl.Int64),
                                                   row=pl.int_range(pl.len(), dtype=pl.Int64))
    return table, ImageStore(index=index, parts=(np.stack(images),))


@pytest.mark.slow
def test_fold_models_are_cached_and_retrained_only_when_their_inputs_change(tmp_path):
    table, store = _bright_and_dark()
    settings = ClassifierSettings(epochs=8, patience=8, batch_size=8, device="cpu")
    inputs = FoldInputs(table=table, class_names=("a", "b"), image_size=16, channels=3, settings=settings, folds=3)
    logged: list[str] = []
    first, runs = out_of_fold_probabilities(inputs, store, tmp_path, logged.append)
    assert [run.trained for run in runs] == [True, True, True] and first.height == table.height
    assert first.group_by("identity").agg(pl.col("fold").n_unique())["fold"].max() == 1
    assert (np.asarray(first["probabilities"].to_list()).argmax(axis=1) == (first["label"] == "b").to_numpy()).mean() > 0.9

    again, runs = out_of_fold_probabilities(inputs, store, tmp_path, logged.append)
    assert not any(run.trained for run in runs) and sum("inputs unchanged" in line for line in logged) == 3
    assert again["probabilities"].to_list() == first["probabilities"].to_list()

    # One wrong label in a patient whose other images keep the majority: the folds are unchanged, and only
    # the models that train or select on that image retrain; the one that holds it out is reused.
    location = table["location"][0]
    relabelled = replace(inputs, table=table.with_columns(
        label=pl.when(pl.col("location") == location).then(pl.lit("b")).otherwise("label")))
    _, runs = out_of_fold_probabilities(relabelled, store, tmp_path, logged.append)
    held_out = first.filter(pl.col("location") == location)["fold"][0]
    assert [run.trained for run in runs] == [fold != held_out for fold in range(3)]


def _scored(rng: np.random.Generator, images: int, flip_share: float) -> tuple[pl.DataFrame, set[str]]:
    """Confident probabilities of the true class ("x" or "y", sometimes "rare"; two images per patient) with some
    labels flipped."""
    true = rng.choice(["x", "y", "rare"], images // 2, p=[0.5, 0.45, 0.05]).repeat(2)  # a class per patient
    names = ["rare", "x", "y"]
    probabilities = np.full((images, 3), 0.05)
    probabilities[np.arange(images), [names.index(t) for t in true]] = 0.9
    given = true.copy()
    flipped = rng.choice(images, int(flip_share * images), replace=False)
    given[flipped] = np.where(true[flipped] == "x", "y", "x")
    locations = [f"/img/{i}.png" for i in range(images)]
    train = [i < images * 0.7 for i in range(images)]
    frame = pl.DataFrame({"location": locations, "patient_id": [f"p{i // 2}" for i in range(images)],
                          "split": ["train" if t else "test" for t in train], "label": given.tolist(),
                          "fold": [i // 2 % 5 if t else None for i, t in enumerate(train)],
                          "probabilities": probabilities.tolist()}, schema_overrides={"fold": pl.Int64})
    return frame, {locations[i] for i in flipped}


def test_label_issues_find_the_flips_and_the_report_section_says_what_they_do_to_top1():
    scored, flipped = _scored(np.random.default_rng(3), 400, 0.05)
    issues, noise, not_calibrated_because = find_label_issues(scored, ["rare", "x", "y"])
    assert issues.columns == ["location", "patient_id", "split", "given_label", "suggested_label", "label_quality",
                              "is_label_issue", "patient_context", "cleanlab_issue"] and not_calibrated_because is None
    assert set(issues.filter("is_label_issue")["location"]) == flipped
    # Each patient has two images: where a flip changes one, the other carries the label the models suggest;
    # where both are flipped, the patient's label is wrong as a whole.
    both = {location for location in flipped if scored["location"][int(location[5:-4]) ^ 1] in flipped}
    context = dict(issues.filter("is_label_issue").select("location", "patient_context").iter_rows())
    assert both and context == {location: "patient_looks_like_suggested" if location in both
                                else "label_differs_from_patient" for location in flipped}
    assert issues.filter(pl.col("location").is_in(list(flipped)))["label_quality"].max() < \
        issues.filter(~pl.col("location").is_in(list(flipped)))["label_quality"].min()
    assert noise.shape == (3, 3) and np.allclose(noise.sum(axis=0), 1)

    test = scored.filter(pl.col("split") == "test")
    effect = label_effect_on_test(issues, test, ["rare", "x", "y"], resamples=200, seed=0)
    wrong = len(flipped & set(test["location"]))
    train_flips = len(flipped) - wrong
    assert effect["likely_wrong"] == wrong and effect["test_images"] == test.height
    assert effect["cleanlab_issues"] == issues.filter(pl.col("split") == "test")["cleanlab_issue"].sum() >= wrong
    assert effect["share"]["low"] < wrong / test.height < effect["share"]["high"]
    assert effect["top1_without_issues"]["value"] == 1.0 and effect["top1_all"]["value"] == 1 - wrong / test.height
    assert effect["label_differs_from_patient"] == len((flipped - both) & set(test["location"]))
    markdown = label_issues_markdown(issues, noise, ["rare", "x", "y"], effect, ["train", "test"], "montage.png", None)
    assert verdict_line(effect) in markdown and f"{wrong} of {test.height} test images" in markdown
    assert f"{effect['label_differs_from_patient']} of them carry a label their patient's other images do not" in markdown
    assert f"| {len(flipped - both)} | `label_differs_from_patient`" in markdown and "Probabilities are calibrated" in markdown
    assert "| train | x |" in markdown and "| test | y |" in markdown  # counts per split and class, in split order
    assert f"Confident learning finds {effect['cleanlab_issues']} test labels wrong or ambiguous" in markdown
    assert markdown.index("| train |") < markdown.index("| test |")
    assert f"Out-of-fold top-1 on train and val (the given label is the models' first choice): {1 - train_flips / 280:.1%}" \
        in markdown
    assert "| given \\ true | rare | x | y |" in markdown and "![worst label issues](montage.png)" in markdown


def _look_alikes(rng: np.random.Generator, images: int) -> tuple[np.ndarray, np.ndarray]:
    """Two look-alike classes (a model tells them apart 75% of the time) whose model always says 0.99."""
    labels = rng.integers(0, 2, images)
    right = rng.random(images) < 0.75
    called = np.where(right, labels, 1 - labels)
    probabilities = np.full((images, 2), 0.01)
    probabilities[np.arange(images), called] = 0.99
    return probabilities, labels


def test_calibration_maps_an_overconfident_model_to_held_out_frequencies_without_an_image_calibrating_itself():
    probabilities, labels = _look_alikes(np.random.default_rng(0), 2000)
    folds = np.arange(2000) % 5
    folds[-200:] = -1  # scored by another model: mapped by a fit on every fold
    calibrated = calibrate(probabilities, labels, folds, ["a", "b"])
    assert calibrated.not_calibrated_because is None
    called = calibrated.probabilities[np.arange(2000), probabilities.argmax(axis=1)]
    assert np.allclose(called, 0.75, atol=0.04)  # the model is right 75% of the time, not 99%
    assert np.allclose(calibrated.probabilities.sum(axis=1), 1)
    # Fold 0's images are mapped by a fit on the other folds: changing fold 0's labels leaves them as they were.
    relabelled = labels.copy()
    relabelled[folds == 0] = 1 - relabelled[folds == 0]
    again = calibrate(probabilities, relabelled, folds, ["a", "b"])
    assert np.array_equal(again.probabilities[folds == 0], calibrated.probabilities[folds == 0])
    assert not np.array_equal(again.probabilities[folds == 1], calibrated.probabilities[folds == 1])


def test_calibration_is_refused_with_its_reason_where_a_fit_would_lack_a_class():
    probabilities, labels = _look_alikes(np.random.default_rng(1), 200)
    folds = np.arange(200) % 4
    labels[:MIN_IMAGES_PER_CLASS] = 2  # a rare third class, all but one of its images in fold 0
    labels[1] = 0
    folds[:MIN_IMAGES_PER_CLASS] = 0
    probabilities = np.hstack([probabilities, np.full((200, 1), 0.01)])
    calibrated = calibrate(probabilities, labels, folds, ["a", "b", "rare"])
    assert calibrated.not_calibrated_because == (
        f"the out-of-fold predictions without fold 1 has fewer than {MIN_IMAGES_PER_CLASS} images of rare (0)")
    assert np.allclose(calibrated.probabilities, probabilities / probabilities.sum(axis=1, keepdims=True))


def test_each_flag_says_what_its_patients_other_images_say():
    def image(location: str, patient: str, given: str, suggested: str, flagged: bool) -> dict:
        return {"location": location, "patient_id": patient, "split": "train", "given_label": given,
                "suggested_label": suggested, "label_quality": 0.01 if flagged else 0.9, "is_label_issue": flagged}

    rows = pl.DataFrame([
        image("flip", "p1", "b", "a", True), image("p1-2", "p1", "a", "a", False), image("p1-3", "p1", "a", "a", False),
        image("odd", "p2", "a", "b", True), image("p2-2", "p2", "a", "b", True), image("p2-3", "p2", "a", "a", False),
        image("alone", "p3", "a", "b", True), image("p3-2", "p3", "a", "a", False), image("p3-3", "p3", "a", "a", False),
        image("single", "p4", "a", "b", True), image("fine", "p5", "a", "a", False),
    ])
    context = dict(with_patient_context(rows).select("location", "patient_context").iter_rows())
    assert context == {"flip": "label_differs_from_patient", "p1-2": None, "p1-3": None,
                       "odd": "patient_looks_like_suggested", "p2-2": "patient_looks_like_suggested", "p2-3": None,
                       "alone": "image_differs_from_patient", "p3-2": None, "p3-3": None, "single": "only_image",
                       "fine": None}
    counts = patient_context_counts(with_patient_context(rows))
    assert counts == {"label_differs_from_patient": 1, "patient_looks_like_suggested": 2,
                      "image_differs_from_patient": 1, "only_image": 1}


def test_taxonomy_review_names_the_confused_pair_the_other_bucket_and_the_small_class():
    rows = []
    def add(true: str, predicted: str, count: int):
        names = ["a", "b", "misc", "tiny"]
        rows.extend({"label": true, "probabilities": [0.9 if n == predicted else 0.1 / 3 for n in names]}
                    for _ in range(count))
    add("a", "a", 60), add("a", "b", 25), add("a", "misc", 15)
    add("b", "b", 70), add("b", "a", 15), add("b", "misc", 15)
    add("misc", "misc", 80)
    add("tiny", "tiny", 7), add("tiny", "misc", 3)
    issues = pl.DataFrame({"given_label": ["a", "b"], "suggested_label": ["b", "a"], "is_label_issue": [True, True]})
    review = review_taxonomy(pl.DataFrame(rows), issues, ["a", "b", "misc", "tiny"])
    top = review["confused_pairs"][0]
    assert top["classes"] == ["a", "b"] and top["rate_a_as_b"] == 0.25 and top["rate_b_as_a"] == 0.15
    assert top["suggested_relabels"] == 2
    assert [bucket["class"] for bucket in review["other_buckets"]] == ["misc"]
    assert [small["class"] for small in review["too_small_to_learn"]] == ["tiny"]
    markdown = taxonomy_markdown(review, "confusion.png")
    assert "| a | b | 25.0% | 15.0% | 20.0% | 2 |" in markdown and "- misc: takes from a, b, tiny" in markdown
    assert "- tiny: 10 images" in markdown and "![out-of-fold confusion matrix](confusion.png)" in markdown


def test_a_dataset_with_label_issues_gets_the_three_assets_in_its_training_group(tmp_path):
    settings = AuditSettings(manifest_path=str(tmp_path / "m.csv"), output_dir=str(tmp_path / "out"))

    def definitions(dataset: Dataset) -> dg.Definitions:
        return dg.Definitions.merge(build_dataset_defs(dataset, audit=settings), dg.Definitions(resources=shared_resources()))

    plain = definitions(Dataset(name="plain")).resolve_asset_graph()
    assert not any(key.path[-1] == "label_issues" for key in plain.get_all_asset_keys())
    dataset = Dataset(name="labelled", training={"label_issues": True})
    graph = definitions(dataset).resolve_asset_graph()
    chain = {name: graph.get(asset_key(dataset, name)) for name in ("out_of_fold_predictions", "label_issues",
                                                                       "taxonomy_review")}
    assert {node.group_name for node in chain.values()} == {"labelled_training"}
    assert {asset_key(dataset, "leak_free_model"), asset_key(dataset, "leak_free_audit")} <= \
        chain["out_of_fold_predictions"].parent_keys
    assert chain["label_issues"].parent_keys == {asset_key(dataset, "out_of_fold_predictions")}
    assert chain["taxonomy_review"].parent_keys == {asset_key(dataset, "label_issues")}
    job = definitions(dataset).resolve_job_def("labelled_training")
    assert asset_key(dataset, "taxonomy_review") in job.asset_layer.executable_asset_keys


def test_label_issues_without_training_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as refused:
        main(["audit", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "out"), "--label-issues"])
    assert refused.value.code == 2 and "--label-issues needs --train" in capsys.readouterr().err
