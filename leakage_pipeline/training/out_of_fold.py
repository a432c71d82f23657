"""Out-of-fold class probabilities: K models, each trained without one identity-grouped fold, predict that fold.

Every train/val image is scored by a model that never saw its identity, so a wrong label cannot be
"confirmed" by a model that memorised the same patient. Each fold's model is cached with a fingerprint
of everything it was trained from; a re-run with unchanged inputs retrains nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from leakage_pipeline.progress import ProgressReporter
from leakage_pipeline.storage.files import write_json
from leakage_pipeline.training.image_store import ImageStore
from leakage_pipeline.training.preprocessing import Preprocessing
from leakage_pipeline.training.settings import DEFAULT_FOLDS, ClassifierSettings

if TYPE_CHECKING:
    from leakage_pipeline.training.model_files import Classifier

FINGERPRINT_FILE = "fingerprint.json"


def grouped_folds(groups: list[str], labels: list[str], folds: int, seed: int) -> np.ndarray:
    """Each image's fold (0..folds-1): every image of a group in one fold, folds balanced per label.

    Groups go largest first (ties in a seeded random order) to the fold holding the fewest images of
    the group's majority label, then the fewest images overall.
    """
    if folds < 2:
        raise ValueError(f"out-of-fold predictions need at least 2 folds, not {folds}")
    table = pl.DataFrame({"group": groups, "label": labels}, schema={"group": pl.String, "label": pl.String})
    per_group = table.group_by("group").agg(size=pl.len(), label=pl.col("label").mode().sort().first())
    if per_group.height < folds:
        raise ValueError(f"{folds} folds need at least {folds} identities; found {per_group.height}")
    shuffled = per_group.sort("group").sample(fraction=1.0, shuffle=True, seed=seed)
    order = shuffled.with_row_index("tie").sort(["size", "tie"], descending=[True, False])
    per_label: dict[str, np.ndarray] = {}
    totals = np.zeros(folds, np.int64)
    fold_of: dict[str, int] = {}
    for group, size, label in order.select("group", "size", "label").iter_rows():
        counts = per_label.setdefault(label, np.zeros(folds, np.int64))
        fold = int(np.lexsort((totals, counts))[0])
        fold_of[group] = fold
        counts[fold] += size
        totals[fold] += size
    return np.array([fold_of[group] for group in groups], np.int64)


@dataclass(frozen=True)
class FoldInputs:
    """What the out-of-fold models train on: the images (train and val splits), their labels and identities."""

    table: pl.DataFrame  # location, patient_id, identity, label, split
    class_names: tuple[str, ...]
    image_size: int
    channels: int
    settings: ClassifierSettings
    folds: int = DEFAULT_FOLDS


def _fingerprint(inputs: FoldInputs, store: ImageStore, fold: int, assigned: pl.DataFrame) -> str:
    """Everything fold ``fold``'s model depends on: settings, shape, classes, and the content, label and fold
    of each image it trains or selects on (not those it holds out: their labels do not change it)."""
    rows = assigned.filter(pl.col("fold") != fold).join(store.index.select("location", "sha256"), on="location", how="left").select(
        "sha256", "label", "fold").sort("sha256", "label", "fold")
    digest = hashlib.sha256(json.dumps({
        "settings": asdict(inputs.settings), "size": inputs.image_size, "channels": inputs.channels,
        "classes": list(inputs.class_names), "folds": inputs.folds, "fold": fold,
    }, sort_keys=True).encode())
    digest.update(rows.write_csv().encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class FoldRun:
    fold: int
    trained: bool  # False: the cached model was reused
    train_images: int
    seconds: float
    images_per_second: float | None  # training throughput (None when reused)


def _labelled(images: np.ndarray, labels: list[str], class_index: dict[str, int]):
    from leakage_pipeline.training.trainer import LabelledImages

    return LabelledImages(images, np.array([class_index[label] for label in labels], np.int64))


def _fold_model(inputs: FoldInputs, store: ImageStore, assigned: pl.DataFrame, fold: int, model_dir: Path,
                log: Callable[[str], None]) -> tuple[Classifier, FoldRun]:
    """Fold ``fold``'s classifier: loaded when its fingerprint is unchanged, else trained on the other
    folds but the next one, which selects its epoch (the held-out fold never steers its own model)."""
    from leakage_pipeline.training.model_files import Classifier, save_model
    from leakage_pipeline.training.trainer import train_classifier

    fingerprint = _fingerprint(inputs, store, fold, assigned)
    marker = model_dir / FINGERPRINT_FILE
    started = time.perf_counter()
    if marker.exists() and json.loads(marker.read_text()).get("fingerprint") == fingerprint:
        log(f"fold {fold + 1}/{inputs.folds}: inputs unchanged, reusing the model in {model_dir}")
        return Classifier.load(model_dir, inputs.settings.device), FoldRun(fold, False, 0, 0.0, None)
    select = (fold + 1) % inputs.folds
    class_index = {name: i for i, name in enumerate(inputs.class_names)}
    train_rows = assigned.filter(~pl.col("fold").is_in([fold, select]))
    val_rows = assigned.filter(pl.col("fold") == select)
    train = _labelled(store.gather(train_rows["location"].to_list()), train_rows["label"].to_list(), class_index)
    val = _labelled(store.gather(val_rows["location"].to_list()), val_rows["label"].to_list(), class_index)
    preprocessing = Preprocessing.for_shape(inputs.image_size, inputs.channels).with_statistics(train.images)
    log(f"fold {fold + 1}/{inputs.folds}: training on {train_rows.height} images, selecting on fold {select + 1} "
        f"({val_rows.height} images)")
    progress = ProgressReporter(log, f"out-of-fold model {fold + 1}/{inputs.folds}")
    result = train_classifier(train, val, len(inputs.class_names), preprocessing, inputs.settings, log, progress)
    save_model(model_dir, result.model, inputs.settings.architecture, list(inputs.class_names), preprocessing)
    write_json({"fingerprint": fingerprint, "best_epoch": result.best_epoch, "history": result.history}, marker)
    run = FoldRun(fold, True, train_rows.height, time.perf_counter() - started, result.images_per_second)
    return Classifier.load(model_dir, inputs.settings.device), run


def out_of_fold_probabilities(
    inputs: FoldInputs, store: ImageStore, models_dir: Path, log: Callable[[str], None] = print,
) -> tuple[pl.DataFrame, list[FoldRun]]:
    """Every image of ``inputs.table`` with its fold and the probabilities of the model that held its fold out.

    Returns (location, patient_id, identity, split, label, fold, probabilities) and what each fold did.
    """
    table = inputs.table
    assigned = table.with_columns(fold=pl.Series(grouped_folds(
        table["identity"].to_list(), table["label"].to_list(), inputs.folds, inputs.settings.seed)))
    parts, runs = [], []
    for fold in range(inputs.folds):
        classifier, run = _fold_model(inputs, store, assigned, fold, models_dir / f"fold={fold}", log)
        runs.append(run)
        held_out = assigned.filter(pl.col("fold") == fold)
        images = store.gather(held_out["location"].to_list())
        probabilities = classifier.probabilities(images).astype(np.float32)
        parts.append(held_out.with_columns(
            probabilities=pl.Series(probabilities.tolist(), dtype=pl.List(pl.Float32))))
    return pl.concat(parts).sort("location"), runs
