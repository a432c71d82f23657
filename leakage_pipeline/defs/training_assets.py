"""Training and evaluation as assets: image stores -> leak-free and leaky models -> evaluation.

Both models train in their own process through Dagster Pipes (``training_process``), so the
same job can later run in a GPU pod; its logs and metadata come back to this run. Both train on
the leak-free split (every identity whole), the leaky one after the leak a careless split makes.
They refuse to start while the leak-free split's own audit still finds a leak.
"""

import sys
from pathlib import Path

import dagster as dg
import polars as pl
from upath import UPath

from leakage_pipeline.audit.splitting import leaky_split, shared_patients
from leakage_pipeline.defs.checks import leak_free_split_problems
from leakage_pipeline.defs.dataset import Dataset
from leakage_pipeline.defs.dataset_step import (
    AUDIT,
    PIPES_CLIENT,
    PIPES_K8S_CLIENT,
    TRAINING,
    TRAINING_POD,
    Step,
    dataset_asset,
    dataset_asset_per_split,
)
from leakage_pipeline.defs.metadata import rounded
from leakage_pipeline.progress import ProgressReporter
from leakage_pipeline.storage.files import (
    download_tree,
    read_parquet,
    upload_tree,
    write_json,
    write_parquet,
    write_text,
)
from leakage_pipeline.storage.locations import is_local
from leakage_pipeline.training.confusion_image import write_confusion_matrix
from leakage_pipeline.training.evaluation import EvaluationInputs, evaluate, evaluation_markdown, summary_markdown
from leakage_pipeline.training.image_store import build_store, open_stores
from leakage_pipeline.training.preprocessing import Preprocessing
from leakage_pipeline.training.training_job import TrainingJob

GROUP = "training"
LEAK_FREE = "leak_free"
LEAKY = "leaky"
TRAINING_PROCESS = [sys.executable, "-m", "leakage_pipeline.defs.training_process"]
TRAINING_POD_COMMAND = ["python", "-m", "leakage_pipeline.defs.training_process"]  # the image's Python


def _train_val_test(step: Step) -> tuple[str, str, str]:
    if len(step.splits) < 3:
        raise dg.Failure(f"training needs train, validation and test splits; dataset {step.dataset.name} has "
                         f"{step.splits}")
    return step.splits[0], step.splits[1], step.splits[-1]


def _store(step: Step, split: str) -> tuple[UPath, Path]:
    """The split's image store under the output root, and its local copy (read memory-mapped)."""
    stored = step.files.training_images(split, step.training.image_size, step.training.channels)
    return stored, step.files.local_copy(stored)


def _store_dirs(step: Step) -> list[Path]:
    """Each split's image store on local disk, copied from the output root when this machine has none."""
    local_dirs = []
    for split in step.splits:
        stored, local = _store(step, split)
        download_tree(stored, local)
        local_dirs.append(local)
    return local_dirs


def store_split(step: Step, split: str) -> dict:
    """Every readable image of one split, decoded and resized once into a uint8 array store."""
    files, training = step.files, step.training
    hashes = read_parquet(files.image_hashes(split), columns=["location", "sha256", "status"])
    stored, local = _store(step, split)
    download_tree(stored, local)  # a fresh machine reuses what an earlier run decoded
    built = build_store(hashes, local, Preprocessing.for_shape(training.image_size, training.channels),
                        workers=training.decode_workers,
                        progress=ProgressReporter(step.log.info, f"decoding {split} for training"))
    upload_tree(local, stored)
    step.log.info(f"split {split}: {built.images} images stored ({built.decoded} decoded, "
                  f"{built.reused} reused), excluded {built.excluded or 'none'}")
    return {"images": built.images, "decoded": built.decoded, "reused": built.reused, "excluded": built.excluded}


def training_images(step: Step, per_split: dict[str, dict]) -> dg.MaterializeResult:
    """Every readable image of the split, decoded and resized once into a uint8 array store."""
    training = step.training
    for split, summary in per_split.items():  # each split partition shows its own counts in the UI
        step.context.add_asset_metadata({
            "dagster/row_count": summary["images"], "decoded": summary["decoded"], "reused": summary["reused"],
            "excluded": sum(summary["excluded"].values()), "excluded_by_status": dg.MetadataValue.json(summary["excluded"]),
        }, partition_key=split)
    return dg.MaterializeResult(metadata={
        "shape": f"{training.channels} x {training.image_size} x {training.image_size} uint8",
    })


def _stored_assignments(assignments: pl.DataFrame, step: Step) -> pl.DataFrame:
    """The split ``assignments`` of the images that are in the training image stores (readable ones)."""
    stored = open_stores(_store_dirs(step)).index.select("location")
    return assignments.join(stored, on="location", how="semi").select(
        "location", "patient_id", "label", "split")


def _train_through_pipes(step: Step, name: str, table: pl.DataFrame, metadata: dict) -> dg.MaterializeResult:
    train, val, test = _train_val_test(step)
    flagged, spanning = leak_free_split_problems(step.files)
    if flagged or spanning:
        raise dg.Failure(f"not training {name}: the leak-free split still leaks ({flagged} flagged image(s), "
                         f"{spanning} patient(s) in more than one split); see its audit, leak_free_audit")
    files, pod = step.files, step.training_pod
    described = dict(class_names=tuple(_class_names(table)), image_size=step.training.image_size,
                     channels=step.training.channels, train_split=train, val_split=val, test_split=test,
                     settings=step.training.classifier_settings())
    if pod is None:  # a local process, on the local copies
        model_dir = files.local_copy(files.model_dir(name))
        split_table = write_parquet(table, files.local_copy(files.model_split_table(name)))
        job = TrainingJob(split_table=str(split_table.path), store_dirs=tuple(map(str, _store_dirs(step))),
                          model_dir=str(model_dir), **described)
        result = step.pipes.run(context=step.context, command=TRAINING_PROCESS, extras={"job": job.to_dict()})
        upload_tree(model_dir, files.model_dir(name))
    else:  # a pod, on the output root itself: it fetches what it reads and puts back its model
        if is_local(files.root):
            raise dg.Failure(f"training in a pod reads and writes the output root, so dataset {step.dataset.name} "
                             f"needs a gs:// output root, not {files.root}")
        write_parquet(table, files.model_split_table(name))
        job = TrainingJob(split_table=str(files.model_split_table(name)), model_dir=str(files.model_dir(name)),
                          store_dirs=tuple(str(_store(step, split)[0]) for split in step.splits), **described)
        result = step.pipes_k8s.run(context=step.context, image=pod.image, command=TRAINING_POD_COMMAND,
                                    namespace=pod.namespace, base_pod_spec=pod.pod_spec(),
                                    extras={"job": job.to_dict()})
    reported = result.get_materialize_result()
    return dg.MaterializeResult(metadata={**(reported.metadata or {}), **metadata})


def _class_names(table: pl.DataFrame) -> list[str]:
    """Both models' classes: their split tables hold the same images, split differently."""
    return sorted(table["label"].unique().to_list())


def _leak_free_table(step: Step) -> pl.DataFrame:
    return _stored_assignments(read_parquet(step.files.leak_free.split_assignments), step)


def leak_free_model(step: Step) -> dg.MaterializeResult:
    """The model trained on the leak-free split's train images and selected on its val images."""
    table = _leak_free_table(step)
    return _train_through_pipes(step, LEAK_FREE, table, {
        "split": "leak-free (every identity in one split)", "images_per_split": dg.MetadataValue.json(
            dict(table.group_by("split").len().sort("split").iter_rows())),
    })


def leaky_model(step: Step) -> dg.MaterializeResult:
    """The same model after the leak a careless split makes: about half of each test patient's images
    in train (as many train images moved to test), split sizes unchanged."""
    train, _, test = _train_val_test(step)
    table = leaky_split(_leak_free_table(step), step.splits, seed=step.training.seed)
    shared = shared_patients(table, train, test)
    step.log.info(f"the leaky split puts {shared} patient(s) in both {train} and {test}")
    return _train_through_pipes(step, LEAKY, table, {
        "split": "leaky (test patients' images in train)", "patients_in_train_and_test": shared,
        "images_per_split": dg.MetadataValue.json(dict(table.group_by("split").len().sort("split").iter_rows())),
    })


def model_evaluation(step: Step) -> dg.MaterializeResult:
    """Leaky vs leak-free on the same test images (paired patient bootstrap), and each on its own test split."""
    files, (train, _, test) = step.files, _train_val_test(step)
    leaky_table = read_parquet(files.model_split_table(LEAKY))
    summary = evaluate(EvaluationInputs(
        leak_free=read_parquet(files.model_predictions(LEAK_FREE)),
        leaky=read_parquet(files.model_predictions(LEAKY)),
        class_names=_class_names(leaky_table),
        leaky_shared_patients=shared_patients(leaky_table, train, test),
        resamples=step.training.bootstrap_resamples, seed=step.training.seed,
    ))
    write_json(summary, files.evaluation_json)
    markdown = evaluation_markdown(summary)
    write_text(markdown, files.evaluation_markdown)
    for key, row in summary["rows"].items():
        write_confusion_matrix(row["confusion_matrix"], summary["class_names"], f"{row['model']}, {row['test_set']}",
                               files.confusion_image(key))
    step.log.info(summary["verdict"])
    effect = summary["leak_effect_top1"]
    return dg.MaterializeResult(metadata={
        "verdict": summary["verdict"],
        "summary": dg.MetadataValue.md(summary_markdown(summary)),
        "evaluation": dg.MetadataValue.md(markdown),
        **{f"top1_{key}": rounded(row["metrics"]["top1"]["value"]) for key, row in summary["rows"].items()},
        "shared_test_images": summary["shared_test_images"],
        "leak_effect_top1": rounded(effect["value"]) if effect else None,
        "leakage_moved_metric": effect["moved"] if effect else False,
        "path": dg.MetadataValue.path(str(files.evaluation_json)),
    })


def build_training_assets(dataset: Dataset) -> list[dg.AssetsDefinition]:
    """The dataset's training: image stores (per split partition) -> both models -> their evaluation."""
    resources = (AUDIT, TRAINING, PIPES_CLIENT)
    if dataset.training_pod is not None:
        resources += (TRAINING_POD, PIPES_K8S_CLIENT)

    def asset(body, **spec):
        return dataset_asset(dataset, body, group=GROUP, resources=resources, **spec)

    return [
        dataset_asset_per_split(dataset, store_split, training_images, group=GROUP, after="image_hashes",
                                kinds={"numpy"}, resources=resources),
        asset(leak_free_model, deps=["training_images", "leak_free_audit"], kinds={"pytorch"}),
        # Downstream of the leak-free audit too: the contrast is only trained beside a leak-free model to compare with.
        asset(leaky_model, deps=["training_images", "leak_free_audit"], kinds={"pytorch"}),
        asset(model_evaluation, deps=["leak_free_model", "leaky_model"], kinds={"json", "markdown"}),
    ]
