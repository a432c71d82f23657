"""What the report and matching steps read back of earlier steps: hashes, audited images, same-subject results."""

import polars as pl

from leakage_pipeline.defs.dataset_step import Step
from leakage_pipeline.storage.files import read_json, read_parquet
from leakage_pipeline.storage.output_files import OutputFiles


def load_hashes(files: OutputFiles, splits: list[str]) -> pl.DataFrame:
    """The current hashes of every split."""
    return pl.concat([read_parquet(files.image_hashes(split)) for split in splits
                      if files.image_hashes(split).exists()])


def load_audited_images(step: Step, assignments: pl.DataFrame | None = None) -> pl.DataFrame:
    """Split assignments (default: the audited split's) joined with each image's hash row."""
    if assignments is None:
        assignments = read_parquet(step.files.split_assignments)
    return assignments.join(load_hashes(step.files, step.splits), on="location", how="left", maintain_order="left")


def read_same_subject(files: OutputFiles) -> tuple[pl.DataFrame | None, dict | None]:
    """The stage's pairs and summary for the report, or (None, None) when it has not run here."""
    if not files.same_subject_summary.exists():
        return None, None
    return read_parquet(files.same_subject_pairs), read_json(files.same_subject_summary)
