"""Training and evaluation as assets: image stores -> leak-free and leaky models -> evaluation.

Both models train in their own process through Dagster Pipes (``training_process``), so the
same job can later run in a GPU pod; its logs and metadata come back to this run. Both train on
the leak-free split (every identity whole), the leaky one after the leak a careless split makes;
they sit downstream of the leak-free split's audit, whose blocking check stops them if it leaks.
"""

import sys
from pathlib import Path

import dagster as dg
import polars as pl

from leakage_pipeline.audit.splitting import leaky_split, shared_patients
from leakage_pipeline.defs.assets import image_hashes, leak_free_audit, split_partitioned_asset
from leakage_pipeline.defs.output_files import OutputFiles, write_json, write_parquet, write_text
from leakage_pipeline.defs.settings import SPLIT_NAMES, AuditSettings, TrainingSettings
from leakage_pipeline.progress import ProgressReporter
from leakage_pipeline.training.confusion_image import write_confusion_matrix
from leakage_pipeline.training.evaluation import EvaluationInputs, evaluate, evaluation_markdown, summary_markdown
from leakage_pipeline.training.image_store import build_store, open_stores
from leakage_pipeline.training.model_files import class_names
from leakage_pipeline.training.preprocessing import Preprocessing
from leakage_pipeline.training.training_job import PREDICTIONS_FILE, TrainingJob

GROUP = "training"
LEAK_FREE = "leak_free"
LEAKY = "leaky"
TRAIN_SPLIT, VAL_SPLIT, TEST_SPLIT = SPLIT_NAMES[0], SPLIT_NAMES[1], SPLIT_NAMES[-1]
SPLIT_TABLE = "split.parquet"
TRAINING_PROCESS = [sys.executable, "-m", "leakage_pipeline.defs.training_process"]


def _store_dirs(files: OutputFiles, training: TrainingSettings) -> list[Path]:
    return [files.training_images(split, training.image_size, training.channels) for split in SPLIT_NAMES]


@split_partitioned_asset(group_name=GROUP, deps=[image_hashes], kinds={"numpy"})
def training_images(
    context: dg.AssetExecutionContext, audit: AuditSettings, training: TrainingSettings
) -> dg.MaterializeResult:
    """Every readable image of the split, decoded and resized once into a uint8 array store."""
    files = OutputFiles(audit.output_dir)
    shape = Preprocessing.for_shape(training.image_size, training.channels)
    per_split = {}
    for split in context.partition_keys:
        hashes = pl.read_parquet(files.image_hashes(split), columns=["location", "sha256", "status"])
        built = build_store(hashes, files.training_images(split, training.image_size, training.channels), shape,
                            workers=training.decode_workers,
                            progress=ProgressReporter(context.log.info, f"decoding {split} for training"))
        per_split[split] = {"images": built.images, "decoded": built.decoded, "reused": built.reused,
                            "excluded": built.excluded}
        context.log.info(f"split {split}: {built.images} images stored ({built.decoded} decoded, "
                         f"{built.reused} reused), excluded {built.excluded or 'none'}")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": sum(s["images"] for s in per_split.values()),
        "decoded": sum(s["decoded"] for s in per_split.values()),
        "excluded": sum(n for s in per_split.values() for n in s["excluded"].values()),
        "per_split": dg.MetadataValue.json(per_split),
        "shape": f"{training.channels} x {training.image_size} x {training.image_size} uint8",
    })


def _stored_assignments(assignments: pl.DataFrame, files: OutputFiles, training: TrainingSettings) -> pl.DataFrame:
    """The split ``assignments`` of the images that are in the training image stores (readable ones)."""
    stored = open_stores(_store_dirs(files, training)).index.select("location")
    return assignments.join(stored, on="location", how="semi").select(
        "location", "patient_id", "label", "split")


def _train_through_pipes(
    context: dg.AssetExecutionContext, pipes: dg.PipesSubprocessClient, files: OutputFiles,
    training: TrainingSettings, name: str, table: pl.DataFrame, metadata: dict,
) -> dg.MaterializeResult:
    if len(SPLIT_NAMES) < 3:
        raise dg.Failure(f"training needs train, validation and test splits; LEAKAGE_SPLITS has {SPLIT_NAMES}")
    model_dir = files.model_dir(name)
    split_table = write_parquet(table, model_dir / SPLIT_TABLE)
    classes = sorted(table["label"].unique().to_list())  # both tables hold the same images, split differently
    job = TrainingJob(
        split_table=str(split_table), store_dirs=tuple(map(str, _store_dirs(files, training))),
        class_names=tuple(classes),
        image_size=training.image_size, channels=training.channels, train_split=TRAIN_SPLIT,
        val_split=VAL_SPLIT, test_split=TEST_SPLIT, model_dir=str(model_dir), settings=training.train_settings(),
    )
    result = pipes.run(context=context, command=TRAINING_PROCESS, extras={"job": job.to_dict()})
    reported = result.get_materialize_result()
    return dg.MaterializeResult(metadata={**(reported.metadata or {}), **metadata})


def _leak_free_table(files: OutputFiles, training: TrainingSettings) -> pl.DataFrame:
    return _stored_assignments(pl.read_parquet(files.leak_free.split_assignments), files, training)


@dg.asset(group_name=GROUP, deps=[training_images, leak_free_audit], kinds={"pytorch"})
def leak_free_model(
    context: dg.AssetExecutionContext, audit: AuditSettings, training: TrainingSettings,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """The model trained on the leak-free split's train images and selected on its val images."""
    files = OutputFiles(audit.output_dir)
    table = _leak_free_table(files, training)
    return _train_through_pipes(context, pipes_subprocess_client, files, training, LEAK_FREE, table, {
        "split": "leak-free (every identity in one split)", "images_per_split": dg.MetadataValue.json(
            dict(table.group_by("split").len().sort("split").iter_rows())),
    })


# Downstream of the leak-free audit too: the contrast is only trained beside a leak-free model to compare with.
@dg.asset(group_name=GROUP, deps=[training_images, leak_free_audit], kinds={"pytorch"})
def leaky_model(
    context: dg.AssetExecutionContext, audit: AuditSettings, training: TrainingSettings,
    pipes_subprocess_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """The same model after the leak a careless split makes: about half of each test patient's images
    in train (as many train images moved to test), split sizes unchanged."""
    files = OutputFiles(audit.output_dir)
    table = leaky_split(_leak_free_table(files, training), list(SPLIT_NAMES), seed=training.seed)
    shared = shared_patients(table, TRAIN_SPLIT, TEST_SPLIT)
    context.log.info(f"the leaky split puts {shared} patient(s) in both {TRAIN_SPLIT} and {TEST_SPLIT}")
    return _train_through_pipes(context, pipes_subprocess_client, files, training, LEAKY, table, {
        "split": "leaky (test patients' images in train)", "patients_in_train_and_test": shared,
        "images_per_split": dg.MetadataValue.json(dict(table.group_by("split").len().sort("split").iter_rows())),
    })


@dg.asset(group_name=GROUP, deps=[leak_free_model, leaky_model], kinds={"json", "markdown"})
def model_evaluation(
    context: dg.AssetExecutionContext, audit: AuditSettings, training: TrainingSettings
) -> dg.MaterializeResult:
    """Leaky vs leak-free on the same test images (paired patient bootstrap), and each on its own test split."""
    files = OutputFiles(audit.output_dir)
    leaky_dir, leak_free_dir = files.model_dir(LEAKY), files.model_dir(LEAK_FREE)
    summary = evaluate(EvaluationInputs(
        leak_free=pl.read_parquet(leak_free_dir / PREDICTIONS_FILE),
        leaky=pl.read_parquet(leaky_dir / PREDICTIONS_FILE),
        class_names=class_names(leak_free_dir),
        leaky_shared_patients=shared_patients(pl.read_parquet(leaky_dir / SPLIT_TABLE), TRAIN_SPLIT, TEST_SPLIT),
        resamples=training.bootstrap_resamples, seed=training.seed,
    ))
    out = files.evaluation_dir
    write_json(summary, out / "evaluation.json")
    markdown = evaluation_markdown(summary)
    write_text(markdown, out / "evaluation.md")
    for key, row in summary["rows"].items():
        write_confusion_matrix(row["confusion_matrix"], summary["class_names"], f"{row['model']}, {row['test_set']}",
                               out / f"confusion_{key}.png")
    context.log.info(summary["verdict"])
    effect = summary["leak_effect_top1"]
    return dg.MaterializeResult(metadata={
        "verdict": summary["verdict"],
        "summary": dg.MetadataValue.md(summary_markdown(summary)),
        "evaluation": dg.MetadataValue.md(markdown),
        **{f"top1_{key}": row["metrics"]["top1"]["value"] for key, row in summary["rows"].items()},
        "shared_test_images": summary["shared_test_images"],
        "leak_effect_top1": effect["value"] if effect else None,
        "leakage_moved_metric": effect["moved"] if effect else False,
        "path": dg.MetadataValue.path(str(out / "evaluation.json")),
    })


TRAINING_ASSETS = [training_images, leak_free_model, leaky_model, model_evaluation]
