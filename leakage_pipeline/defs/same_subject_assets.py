"""The same-subject stage as an asset: ``same_subject_pairs`` beside hash matching, read by the report.

The core is :mod:`leakage_pipeline.same_subject` (plain Python); torch, faiss and cv2 load only
when the asset runs, never when Dagster loads the code location.
"""

import dagster as dg
import polars as pl

from leakage_pipeline.defs.audit_inputs import load_audited_images
from leakage_pipeline.defs.dataset_step import Step
from leakage_pipeline.defs.metadata import markdown_metadata
from leakage_pipeline.storage.files import write_json, write_parquet


def same_subject_pairs(step: Step) -> dg.MaterializeResult:
    """Val and test images that show a training (or val) subject photographed again, under any patient id:
    the top-K neighbours by a learned embedding, verified by keypoints and RANSAC, accepted above an inlier
    threshold calibrated on the training split. Skipped (and said so) when turned off or when training has
    too few images or repeated patients to calibrate."""
    from dataclasses import replace

    from leakage_pipeline.same_subject.matcher import SKIPPED, MatcherSettings, run_same_subject

    files = step.files
    settings = replace(MatcherSettings(), enabled=step.audit.same_subject, workers=step.audit.hash_workers)
    run = run_same_subject(load_audited_images(step), step.splits, files.local_copy(files.same_subject_dir),
                           settings, log=step.log.info)
    path = write_parquet(run.pairs, files.same_subject_pairs)
    write_json(run.summary, files.same_subject_summary)
    summary = run.summary
    if summary["status"] == SKIPPED:
        step.log.info(f"same-subject stage skipped: {summary['reason']}")
        return dg.MaterializeResult(metadata={"status": SKIPPED, "reason": summary["reason"],
                                              "dagster/row_count": 0, "path": dg.MetadataValue.path(str(path))})
    calibration = {k: v for k, v in summary["calibration"].items() if k != "curve"}
    step.log.info(f"same subject: {summary['accepted_pairs']} of {summary['candidate_pairs']} candidate pairs "
                     f"accepted at >= {calibration['threshold']} inliers")
    accepted = run.pairs.filter(pl.col("accepted"))
    return dg.MaterializeResult(metadata={
        "status": summary["status"],
        "reason": summary["reason"] or "",
        "dagster/row_count": run.pairs.height,
        "accepted_pairs": summary["accepted_pairs"],
        "review_pairs": summary["review_pairs"],
        "inlier_threshold": calibration["threshold"] if calibration["threshold"] is not None else -1,
        "calibration": dg.MetadataValue.json(calibration),
        "embedded": summary["embedded"], "embeddings_reused": summary["embeddings_reused"],
        "keypoints_extracted": summary["keypoints_extracted"], "keypoints_reused": summary["keypoints_reused"],
        "model": dg.MetadataValue.json(summary["model"]),
        "cost": dg.MetadataValue.json(summary["cost"]),  # wall and CPU seconds per step, what each worked on
        "accepted_examples": markdown_metadata(accepted.select(
            "query_image_uri", "query_split", "query_patient_id", "reference_image_uri", "reference_patient_id",
            "cosine", "inliers"), 10),
        "path": dg.MetadataValue.path(str(path)),
    })
