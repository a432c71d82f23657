"""The audit as software-defined assets: manifest -> split -> hash -> match -> report.

Each asset calls the plain-Python core, writes its own file under the output directory and
returns a MaterializeResult whose metadata is what a person wants to see in the UI.
"""

import itertools
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

import dagster as dg
import polars as pl
from upath import UPath

from leakage_pipeline.audit.image_hashing import STALE_SCHEMA, STATUSES, hash_images
from leakage_pipeline.audit.image_source import check_gcs_reachable
from leakage_pipeline.audit.integrity import check_split_integrity
from leakage_pipeline.audit.leak_free_split import leak_free_split as leak_free_split_of
from leakage_pipeline.audit.manifest import add_locations, load_manifest
from leakage_pipeline.audit.matching import cross_split_pairs, split_pairs
from leakage_pipeline.audit.montage import montage_examples, write_montage
from leakage_pipeline.audit.report import AuditReport, ReportSettings, build_report
from leakage_pipeline.audit.report_markdown import report_markdown, threshold_markdown
from leakage_pipeline.audit.splitting import MOVED_WITH_IDENTITY, POLICY_ASSIGN, POLICY_KEEP, assign_splits, keep_splits
from leakage_pipeline.defs.audit_inputs import load_audited_images, load_hashes, read_same_subject
from leakage_pipeline.defs.dataset import Dataset
from leakage_pipeline.defs.dataset_step import Step, dataset_asset, dataset_asset_per_split
from leakage_pipeline.defs.metadata import markdown_metadata, montage_preview, rounded
from leakage_pipeline.defs.same_subject_assets import same_subject_pairs
from leakage_pipeline.progress import ProgressReporter
from leakage_pipeline.same_subject.geometric_verification import inlier_lines
from leakage_pipeline.storage.files import read_json, read_parquet, remove_tree, write_json, write_parquet, write_text
from leakage_pipeline.storage.output_files import OutputFiles

GROUP = "audit"
# A run with this tag set to "true" verifies the hash cache, whatever its settings say.
VERIFY_CACHE_TAG = "leakage/verify_cache"


def manifest(step: Step) -> dg.MaterializeResult:
    """The image manifest, validated, with each image's canonical location; an object store it
    needs is checked to answer before any work starts."""
    frame = add_locations(load_manifest(step.audit.manifest_path, step.audit.column_mapping(), step.splits),
                          step.audit.location_rules(), step.audit.manifest_path)
    check_gcs_reachable(frame["location"].unique().to_list())
    path = write_parquet(frame, step.files.manifest)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": frame.height,
        "patients": frame["patient_id"].n_unique(),
        "labels": dg.MetadataValue.json(dict(frame.group_by("label").len().sort("label").iter_rows())),
        "source": dg.MetadataValue.path(step.audit.manifest_path),
        "path": dg.MetadataValue.path(str(path)),
        "preview": markdown_metadata(frame.drop("location"), 10),
    })


def split_assignments(step: Step) -> dg.MaterializeResult:
    """Each image's split: the manifest's own (policy keep) or assigned per patient (policy assign)."""
    files = step.files
    frame = read_parquet(files.manifest)
    if step.audit.split_policy == POLICY_KEEP:
        assigned = keep_splits(frame)
    elif step.audit.split_policy == POLICY_ASSIGN:
        ledger = (
            read_parquet(files.split_assignments, columns=["patient_id", "split"])
            if files.split_assignments.exists() else None
        )
        assigned = assign_splits(frame, step.audit.split_plan(tuple(step.splits)), ledger)
    else:
        raise dg.Failure(f"unknown split policy {step.audit.split_policy!r}; use {POLICY_KEEP!r} or {POLICY_ASSIGN!r}")
    path = write_parquet(assigned, files.split_assignments)
    per_split = assigned.group_by("split").agg(
        pl.len().alias("images"), pl.col("patient_id").n_unique().alias("patients")
    ).sort("split")
    step.log.info(f"split policy {step.audit.split_policy}: {dict(per_split.select('split', 'images').iter_rows())}")
    return dg.MaterializeResult(metadata={
        "policy": step.audit.split_policy,
        "dagster/row_count": assigned.height,
        "per_split": markdown_metadata(per_split),
        "path": dg.MetadataValue.path(str(path)),
    })


def split_integrity(step: Step) -> dg.MaterializeResult:
    """Patients, case ids and files that cross splits, found from the manifest alone."""
    files = step.files
    findings = check_split_integrity(read_parquet(files.split_assignments))
    tables = findings.tables()
    write_json({name: table.to_dicts() for name, table in tables.items()}, files.split_integrity)
    return dg.MaterializeResult(metadata={
        **{name: table.height for name, table in tables.items() if name != "counts"},
        "patients_spanning_splits_examples": markdown_metadata(findings.patients_spanning_splits),
        "counts": markdown_metadata(findings.counts, 60),
        "path": dg.MetadataValue.path(str(files.split_integrity)),
    })


def _previous_hashes(step: Step, split: str) -> pl.DataFrame | None:
    """Last finished hashes of the split plus any chunks a killed run left behind. A cache file that
    cannot be read (truncated, overwritten) is only a cache: its images are hashed again."""
    files = step.files
    sources = [files.image_hashes(split)] if files.image_hashes(split).exists() else []
    progress = files.hash_progress(split)
    if progress.exists():
        sources += sorted(progress.glob("*.parquet"))
    frames = []
    for source in sources:
        try:
            frames.append(read_parquet(source))
        except (pl.exceptions.PolarsError, OSError) as error:
            step.log.warning(f"hash cache {source} is unreadable ({type(error).__name__}: {error}); "
                             "its images are hashed again")
    return pl.concat(frames, how="diagonal_relaxed") if frames else None


def _chunk_writer(folder: UPath, run_token: str) -> Callable[[pl.DataFrame], None]:
    """Writes each finished chunk of a hashing run as the next numbered checkpoint in ``folder``."""
    numbers = itertools.count()

    def checkpoint(chunk: pl.DataFrame) -> None:
        write_parquet(chunk, folder / f"chunk-{run_token}-{next(numbers):06d}.parquet")

    return checkpoint


def _verifies_cache(step: Step) -> bool:
    return step.audit.verify_cache or step.context.run.tags.get(VERIFY_CACHE_TAG) == "true"


def hash_split(step: Step, split: str) -> dict:
    """sha256, pHash and dHash of every image of one split; unchanged images are reused from the last run."""
    files = step.files
    locations = read_parquet(files.split_assignments).filter(pl.col("split") == split)["location"].to_list()
    in_progress = files.hash_progress(split)
    in_progress.mkdir(parents=True, exist_ok=True)
    run_token = secrets.token_hex(4)  # this run's checkpoint names never collide with another's
    run = hash_images(locations, _previous_hashes(step, split), workers=step.audit.hash_workers,
                      checkpoint=_chunk_writer(in_progress, run_token), mode=step.audit.hash_mode,
                      verify=_verifies_cache(step), progress=ProgressReporter(step.log.info, f"hashing {split}"))
    write_parquet(run.hashes, files.image_hashes(split))
    remove_tree(in_progress)
    step.log.info(f"split {split}: {len(locations)} images, hashed {run.hashed}, reused {run.reused}")
    return {"rows": run.hashes.height, "hashed": run.hashed, "reused": run.reused,
            "status_counts": dict.fromkeys(STATUSES, 0) | dict(run.hashes.group_by("status").len().iter_rows()),
            "stale": run.stale.with_columns(split=pl.lit(split)).to_dicts()}


def image_hashes(step: Step, summaries: dict[str, dict]) -> dg.MaterializeResult:
    """sha256, pHash and dHash of every image in the split; unchanged images are reused from the last run.

    With ``verify_cache`` (or the run tag ``leakage/verify_cache=true``) every image is hashed again and each cached hash that was stale is
    reported (metadata and ``image_hashes/stale_cached_hashes.json``).
    """
    files = step.files
    verifies = _verifies_cache(step)
    for split, summary in summaries.items():  # each split partition shows its own counts in the UI
        stale = pl.DataFrame(summary["stale"], schema={**STALE_SCHEMA, "split": pl.String})
        step.context.add_asset_metadata({
            "dagster/row_count": summary["rows"], "hashed": summary["hashed"], "reused": summary["reused"],
            "status_counts": dg.MetadataValue.json(summary["status_counts"]),
            "path": dg.MetadataValue.path(str(files.image_hashes(split))),
            **({"stale_cached_hashes": stale.height, "stale_examples": markdown_metadata(stale, 10)} if verifies else {}),
        }, partition_key=split)
    verification = {}
    if verifies:
        stale = [entry for summary in summaries.values() for entry in summary["stale"]]
        write_json({"verified_at": datetime.now(UTC).isoformat(timespec="seconds"), "splits": list(summaries),
                    "stale_count": len(stale), "stale": stale}, files.stale_cached_hashes)
        if stale:
            step.log.warning(f"{len(stale)} cached hash(es) were stale; they are replaced now")
        verification = {"verification": dg.MetadataValue.path(str(files.stale_cached_hashes))}
    status_counts = {status: sum(summary["status_counts"][status] for summary in summaries.values())
                     for status in STATUSES}
    step.log.info(f"hashed {sum(s['hashed'] for s in summaries.values())}, "
                  f"reused {sum(s['reused'] for s in summaries.values())} in split(s) {', '.join(summaries)}: "
                  f"{status_counts}")
    return dg.MaterializeResult(metadata={**verification, "hash_mode": step.audit.hash_mode})


def near_duplicate_pairs(step: Step) -> dg.MaterializeResult:
    """Every cross-split pair with equal bytes or a pHash/dHash distance within the max radius."""
    files = step.files
    images = load_audited_images(step)
    pairs = cross_split_pairs(images, step.splits, step.audit.max_radius, ProgressReporter(step.log.info, "matching"))
    path = write_parquet(pairs, files.near_duplicate_pairs)
    per_pair = {
        f"{q} vs {r}": pairs.filter((pl.col("query_split") == q) & (pl.col("reference_split") == r)).height
        for q, r in split_pairs(step.splits)
    }
    step.log.info(f"{pairs.height} cross-split pairs within radius {step.audit.max_radius}: {per_pair}")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": pairs.height,
        "max_radius": step.audit.max_radius,
        "pairs_per_split_pair": dg.MetadataValue.json(per_pair),
        "exact_byte_copies": int(pairs["sha256_equal"].sum()),
        "path": dg.MetadataValue.path(str(path)),
    })


def _write_report(audit_report: AuditReport, images: pl.DataFrame, files: OutputFiles, step: Step) -> int:
    """Write the report files of one audited split; return how many montage examples were drawn."""
    report = audit_report.report
    write_json(report, files.report_json)
    write_text(report_markdown(report), files.report_markdown)
    write_json(audit_report.flagged.filter(pl.col("split") == step.dataset.test_split).to_dicts(),
               files.flagged_test_images)
    return write_montage(montage_examples(audit_report.reasons, images, step.audit.montage_per_reason), files.montage,
                         inlier_lines=inlier_lines)


def _report_metadata(report: dict, files: OutputFiles, drawn: int) -> dict:
    verdict = report["verdict"]
    return {
        "verdict": verdict["text"],
        "verdict_status": verdict["status"],
        "leaked_test_images": verdict["leaked_test_images"],
        "leaked_test_share": rounded(verdict["leaked_share"]),
        "test_images_read": f"{verdict['test_images_read']} of {verdict['test_images']}",
        "leaked_test_images_per_reason": dg.MetadataValue.json(verdict["per_reason"]),
        "leak_reason_overlap": dg.MetadataValue.json(verdict["reason_overlap"]),
        "flagged_images": report["flagged"]["count"],
        "patients_spanning_splits": verdict["patients_spanning_splits"],
        "patient_ids_given": report["patient_ids_given"],
        "coincidental_hashes": ", ".join(report["coincidental_hashes"]) or "none",
        "thresholds": dg.MetadataValue.md(threshold_markdown(report)),
        "report": dg.MetadataValue.md(report_markdown(report)),
        "montage_examples": drawn,
        "montage": dg.MetadataValue.md(montage_preview(files.montage, "leak montage")),
        "report_dir": dg.MetadataValue.path(str(files.report_dir)),
    }


def leakage_report(step: Step) -> dg.MaterializeResult:
    """The audit's answer: coverage, thresholds, label agreement, identities, every leaked image with its
    reasons, a montage per reason, and the verdict."""
    return _audit_and_report(step, leak_free=False)


def _audit_and_report(step: Step, leak_free: bool) -> dg.MaterializeResult:
    """Audit one split and write its report. The audited split (``leak_free`` False) uses the pairs and same-subject
    results of the earlier steps and writes the identities; the leak-free split is matched here and judged with the
    audited split's trusted radii."""
    files = step.files.leak_free if leak_free else step.files
    # Split integrity is recomputed from the assignments (cheap, reads no image) rather than parsed back from JSON.
    assignments = read_parquet(files.split_assignments)
    images = load_audited_images(step, assignments)
    if leak_free:
        pairs = cross_split_pairs(images, step.splits, step.audit.max_radius,
                                  ProgressReporter(step.log.info, "matching the leak-free split"))
        write_parquet(pairs, files.near_duplicate_pairs)
        trusted = read_json(step.files.report_json)["trusted_radius"]
        settings = ReportSettings(radii=step.audit.report_settings().radii, trusted_radius=trusted)
        same_subject = (None, None)
    else:
        pairs, settings = read_parquet(files.near_duplicate_pairs), step.audit.report_settings()
        same_subject = read_same_subject(files)
    audit_report = build_report(images, pairs, check_split_integrity(assignments), step.splits, settings, *same_subject)
    if not leak_free:
        write_parquet(audit_report.identities, files.identities)
    drawn = _write_report(audit_report, images, files, step)
    step.log.info(("leak-free split: " if leak_free else "") + audit_report.report["verdict"]["text"])
    return dg.MaterializeResult(metadata=_report_metadata(audit_report.report, files, drawn))


def leak_free_split(step: Step) -> dg.MaterializeResult:
    """The audited split with every identity whole (linked patient ids together), where the leak-free
    model trains; stable as data grows."""
    files = step.files
    ledger_path = files.leak_free.split_assignments
    ledger = read_parquet(ledger_path, columns=["patient_id", "split"]) if ledger_path.exists() else None
    result = leak_free_split_of(
        read_parquet(files.split_assignments), load_hashes(files, step.splits), read_parquet(files.identities),
        step.splits, read_json(files.report_json)["trusted_radius"],
        step.audit.report_settings().min_detail, ledger,
    )
    split = result.assignments
    path = write_parquet(split, ledger_path)
    moved = split.filter(pl.col("split_source") == MOVED_WITH_IDENTITY)
    step.log.info(f"leak-free split: {moved.height} image(s) moved to keep their identity in one split "
                     f"({result.rounds} placement round(s))")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": split.height,
        "images_moved": moved.height,
        "placement_rounds": result.rounds,
        "per_split": markdown_metadata(split.group_by("split").agg(
            pl.len().alias("images"), pl.col("identity").n_unique().alias("identities")).sort("split")),
        "path": dg.MetadataValue.path(str(path)),
    })


def leak_free_audit(step: Step) -> dg.MaterializeResult:
    """The leak-free split audited like any split, with the trusted radii of the audited split's report
    (so that what linked identities there is judged the same way here)."""
    return _audit_and_report(step, leak_free=True)


def build_audit_assets(dataset: Dataset) -> list[dg.AssetsDefinition]:
    """The dataset's audit: manifest -> split -> hash (per split partition) -> match (hashes, and the
    same subject photographed again) -> report -> leak-free split."""
    def asset(body, **spec):
        return dataset_asset(dataset, body, group=GROUP, **spec)

    return [
        asset(manifest, kinds={"polars", "parquet"}, reads_storage=True),
        asset(split_assignments, deps=["manifest"], kinds={"polars", "parquet"}),
        asset(split_integrity, deps=["split_assignments"], kinds={"polars", "json"}),
        dataset_asset_per_split(dataset, hash_split, image_hashes, group=GROUP, after="split_assignments",
                                kinds={"pillow", "parquet"}),
        asset(near_duplicate_pairs, deps=["image_hashes", "split_assignments"], kinds={"numba", "parquet"}),
        asset(same_subject_pairs, deps=["image_hashes", "split_assignments"],
              kinds={"torch", "faiss", "opencv", "parquet"}),
        asset(leakage_report, deps=["near_duplicate_pairs", "split_integrity", "image_hashes", "same_subject_pairs"],
              kinds={"json", "markdown"}),
        asset(leak_free_split, deps=["leakage_report"], kinds={"polars", "parquet"}),
        asset(leak_free_audit, deps=["leak_free_split", "image_hashes"], kinds={"json", "markdown"}),
    ]
