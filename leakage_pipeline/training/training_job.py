"""One training job: a split table and image stores in, a model and its test predictions out.

The job is plain data (:meth:`TrainingJob.to_dict`), so it runs the same in-process, in a
subprocess launched through Dagster Pipes, or in a GPU pod.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from leakage_pipeline.progress import ProgressReporter
from leakage_pipeline.storage.files import write_json, write_parquet
from leakage_pipeline.training.image_store import ImageStore, open_stores
from leakage_pipeline.training.preprocessing import Preprocessing
from leakage_pipeline.training.settings import TrainSettings

if TYPE_CHECKING:
    from leakage_pipeline.training.trainer import LabelledImages

PREDICTIONS_FILE = "test_predictions.parquet"
HISTORY_FILE = "history.json"


@dataclass(frozen=True)
class TrainingJob:
    split_table: str  # parquet: location, patient_id, label, split
    store_dirs: tuple[str, ...]
    class_names: tuple[str, ...]
    image_size: int
    channels: int
    train_split: str
    val_split: str
    test_split: str
    model_dir: str
    settings: TrainSettings

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingJob:
        return cls(**{**values, "store_dirs": tuple(values["store_dirs"]), "class_names": tuple(values["class_names"]),
                      "settings": TrainSettings(**values["settings"])})


def _labelled(
    table: pl.DataFrame, split: str, store: ImageStore, class_index: dict[str, int]
) -> tuple[pl.DataFrame, LabelledImages]:
    from leakage_pipeline.training.trainer import LabelledImages

    rows = table.filter(pl.col("split") == split)
    images = store.gather(rows["location"].to_list())
    labels = np.array([class_index[label] for label in rows["label"].to_list()], dtype=np.int64)
    return rows, LabelledImages(images, labels)


def run_training_job(job: TrainingJob, log: Callable[[str], None] = print) -> dict:
    """Train, save the model under ``job.model_dir``, predict the test split; return a summary.

    ``log`` gets the epoch log and, at a steady interval, the training's progress.
    """
    # torch loads here, in the training process, never where the job is only described.
    from leakage_pipeline.training.model_files import save_model
    from leakage_pipeline.training.trainer import DeviceImages, predict_probabilities, train_classifier

    store = open_stores([Path(d) for d in job.store_dirs])
    in_store = set(store.index["location"].to_list())
    table = pl.read_parquet(job.split_table).filter(pl.col("location").is_in(list(in_store)))
    class_index = {name: i for i, name in enumerate(job.class_names)}
    _, train = _labelled(table, job.train_split, store, class_index)
    _, val = _labelled(table, job.val_split, store, class_index)
    test_rows, test = _labelled(table, job.test_split, store, class_index)
    if not len(train.labels) or not len(val.labels):
        raise ValueError(f"training needs images in both {job.train_split!r} and {job.val_split!r}; "
                         f"found {len(train.labels)} and {len(val.labels)}")
    preprocessing = Preprocessing.for_shape(job.image_size, job.channels).with_statistics(train.images)
    log(f"training {job.settings.architecture} on {len(train.labels)} images, validating on {len(val.labels)}, "
        f"{len(job.class_names)} classes, {job.image_size}px x {job.channels} channel(s)")
    progress = ProgressReporter(log, f"training {Path(job.model_dir).name}")
    result = train_classifier(train, val, len(job.class_names), preprocessing, job.settings, log, progress)

    model_dir = Path(job.model_dir)
    save_model(model_dir, result.model, job.settings.architecture, list(job.class_names), preprocessing)
    write_json(result.history, model_dir / HISTORY_FILE)
    probabilities = predict_probabilities(result.model, DeviceImages(test.images, preprocessing, result.device))
    predictions = test_rows.select("location", "patient_id", "label").with_columns(
        label_index=pl.Series(test.labels),
        predicted=pl.Series([job.class_names[i] for i in probabilities.argmax(axis=1)], dtype=pl.String),
        probabilities=pl.Series(probabilities.astype(np.float32).tolist(), dtype=pl.List(pl.Float32)),
    )
    write_parquet(predictions, model_dir / PREDICTIONS_FILE)
    best = result.history[result.best_epoch - 1]
    return {
        "device": str(result.device), "architecture": job.settings.architecture,
        "train_images": len(train.labels), "val_images": len(val.labels), "test_images": len(test.labels),
        "epochs_run": len(result.history), "best_epoch": result.best_epoch,
        "val_macro_f1": best["val_macro_f1"], "val_top1": best["val_top1"],
        "images_per_second": result.images_per_second, "model_dir": str(model_dir),
    }
