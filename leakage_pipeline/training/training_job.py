"""One training job: a split table and image stores in, a model and its test predictions out.

The job is plain data (:meth:`TrainingJob.to_dict`), so it runs the same in-process, in a
subprocess launched through Dagster Pipes, or in a GPU pod.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from leakage_pipeline.progress import ProgressReporter
from leakage_pipeline.storage.files import download_tree, read_parquet, upload_tree, write_json, write_parquet
from leakage_pipeline.storage.locations import is_local, location
from leakage_pipeline.storage.output_files import PREDICTIONS_FILE
from leakage_pipeline.training.image_store import ImageStore, open_stores
from leakage_pipeline.training.preprocessing import Preprocessing
from leakage_pipeline.training.settings import ClassifierSettings

if TYPE_CHECKING:
    from leakage_pipeline.training.trainer import LabelledImages

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
    settings: ClassifierSettings

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingJob:
        return cls(**{**values, "store_dirs": tuple(values["store_dirs"]), "class_names": tuple(values["class_names"]),
                      "settings": ClassifierSettings(**values["settings"])})


@contextmanager
def on_local_disk(job: TrainingJob) -> Iterator[TrainingJob]:
    """``job`` with its files on local disk: a job whose stores, split table or model folder are on GCS
    (a training pod's) works on local copies in a temporary folder, and its model folder is put back
    under ``job.model_dir`` when the block ends without an error. A local job is itself."""
    if all(is_local(location(path)) for path in (job.split_table, job.model_dir, *job.store_dirs)):
        yield job
        return
    with tempfile.TemporaryDirectory(prefix="leakage-training-") as scratch:
        local_stores = []
        for number, store in enumerate(job.store_dirs):
            local_stores.append(Path(scratch) / "stores" / str(number))
            download_tree(store, local_stores[-1])
        split_table = Path(scratch) / "split.parquet"
        write_parquet(read_parquet(job.split_table), split_table)
        model_dir = Path(scratch) / "model"
        yield replace(job, split_table=str(split_table), store_dirs=tuple(map(str, local_stores)),
                      model_dir=str(model_dir))
        upload_tree(model_dir, job.model_dir)


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
    table = read_parquet(job.split_table).filter(pl.col("location").is_in(list(in_store)))
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
