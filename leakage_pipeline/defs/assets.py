"""The audit as software-defined assets: manifest -> split -> hash -> match -> report.

Each asset calls the plain-Python core, writes its own file under the output directory and
returns a MaterializeResult whose metadata is what a person wants to see in the UI.
"""

import json
import secrets
import shutil
import warnings
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import polars as pl

from leakage_pipeline.audit.image_hashing import STATUSES, hash_images
from leakage_pipeline.audit.image_source import check_gcs_reachable
from leakage_pipeline.audit.integrity import check_split_integrity
from leakage_pipeline.audit.manifest import add_locations, load_manifest
from leakage_pipeline.audit.matching import cross_split_pairs, split_pairs
from leakage_pipeline.audit.montage import montage_examples, write_montage
from leakage_pipeline.audit.report import AuditReport, ReportSettings, build_report
from leakage_pipeline.audit.report_markdown import report_markdown, threshold_markdown
from leakage_pipeline.atomic_files import write_json, write_parquet, write_text
from leakage_pipeline.audit.leak_free_split import leak_free_split as leak_free_split_of
from leakage_pipeline.audit.splitting import MOVED_WITH_IDENTITY, POLICY_ASSIGN, POLICY_KEEP, assign_splits, keep_splits
from leakage_pipeline.defs.output_files import OutputFiles
from leakage_pipeline.defs.settings import SPLIT_NAMES, AuditSettings

split_partitions = dg.StaticPartitionsDefinition(list(SPLIT_NAMES))
GROUP = "leakage_audit"


def split_partitioned_asset(**kwargs):
    """``@dg.asset`` partitioned by split, every selected split in one run (a single-run backfill).

    Single-run backfills are a beta Dagster feature this pipeline relies on knowingly, so its
    notice is silenced here rather than shown to every user at import.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return dg.asset(partitions_def=split_partitions, backfill_policy=dg.BackfillPolicy.single_run(), **kwargs)


def _markdown_table(frame: pl.DataFrame, limit: int = 20) -> dg.MarkdownMetadataValue:
    head = frame.head(limit)
    lines = ["| " + " | ".join(head.columns) + " |", "|" + "---|" * len(head.columns)]
    lines += ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in head.iter_rows()]
    if frame.height > limit:
        lines.append(f"\n…and {frame.height - limit} more rows")
    return dg.MetadataValue.md("\n".join(lines))


@dg.asset(group_name=GROUP, kinds={"polars", "parquet"})
def manifest(audit: AuditSettings) -> dg.MaterializeResult:
    """The image manifest, validated, with each image's canonical location; an object store it
    needs is checked to answer before any work starts."""
    frame = add_locations(load_manifest(Path(audit.manifest_path), audit.column_mapping(), list(SPLIT_NAMES)),
                          audit.location_rules(), audit.manifest_path)
    check_gcs_reachable(frame["location"].unique().to_list())
    path = write_parquet(frame, OutputFiles(audit.output_dir).manifest)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": frame.height,
        "patients": frame["patient_id"].n_unique(),
        "labels": dg.MetadataValue.json(dict(frame.group_by("label").len().sort("label").iter_rows())),
        "source": dg.MetadataValue.path(audit.manifest_path),
        "path": dg.MetadataValue.path(str(path)),
        "preview": _markdown_table(frame.drop("location"), 10),
    })


@dg.asset(group_name=GROUP, deps=[manifest], kinds={"polars", "parquet"})
def split_assignments(context: dg.AssetExecutionContext, audit: AuditSettings) -> dg.MaterializeResult:
    """Each image's split: the manifest's own (policy keep) or assigned per patient (policy assign)."""
    files = OutputFiles(audit.output_dir)
    frame = pl.read_parquet(files.manifest)
    if audit.split_policy == POLICY_KEEP:
        assigned = keep_splits(frame)
    elif audit.split_policy == POLICY_ASSIGN:
        ledger = (
            pl.read_parquet(files.split_assignments, columns=["patient_id", "split"])
            if files.split_assignments.exists() else None
        )
        assigned = assign_splits(frame, audit.split_plan(), ledger)
    else:
        raise dg.Failure(f"unknown split policy {audit.split_policy!r}; use {POLICY_KEEP!r} or {POLICY_ASSIGN!r}")
    path = write_parquet(assigned, files.split_assignments)
    per_split = assigned.group_by("split").agg(
        pl.len().alias("images"), pl.col("patient_id").n_unique().alias("patients")
    ).sort("split")
    context.log.info(f"split policy {audit.split_policy}: {dict(per_split.select('split', 'images').iter_rows())}")
    return dg.MaterializeResult(metadata={
        "policy": audit.split_policy,
        "dagster/row_count": assigned.height,
        "per_split": _markdown_table(per_split),
        "path": dg.MetadataValue.path(str(path)),
    })


@dg.asset(group_name=GROUP, deps=[split_assignments], kinds={"polars", "json"})
def split_integrity(audit: AuditSettings) -> dg.MaterializeResult:
    """Patients, case ids and files that cross splits, found from the manifest alone."""
    files = OutputFiles(audit.output_dir)
    findings = check_split_integrity(pl.read_parquet(files.split_assignments))
    tables = findings.tables()
    write_json({name: table.to_dicts() for name, table in tables.items()}, files.split_integrity)
    return dg.MaterializeResult(metadata={
        **{name: table.height for name, table in tables.items() if name != "counts"},
        "patients_spanning_splits_examples": _markdown_table(findings.patients_spanning_splits),
        "counts": _markdown_table(findings.counts, 60),
        "path": dg.MetadataValue.path(str(files.split_integrity)),
    })


def _previous_hashes(files: OutputFiles, split: str) -> pl.DataFrame | None:
    """Last finished hashes of the split plus any chunks a killed run left behind."""
    sources = [files.image_hashes(split)] if files.image_hashes(split).exists() else []
    progress = files.hash_progress(split)
    if progress.exists():
        sources += sorted(progress.glob("*.parquet"))
    return pl.concat([pl.read_parquet(p) for p in sources], how="diagonal_relaxed") if sources else None


@split_partitioned_asset(group_name=GROUP, deps=[split_assignments], kinds={"pillow", "parquet"})
def image_hashes(context: dg.AssetExecutionContext, audit: AuditSettings) -> dg.MaterializeResult:
    """sha256, pHash and dHash of every image in the split; unchanged images are reused from the last run.

    With ``verify_cache`` every image is hashed again and each cached hash that was stale is
    reported (metadata and ``image_hashes/stale_cached_hashes.json``).
    """
    files = OutputFiles(audit.output_dir)
    assignments = pl.read_parquet(files.split_assignments)
    totals = {"hashed": 0, "reused": 0}
    status_counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
    stale_parts = []
    run_token = secrets.token_hex(4)  # this run's checkpoint names never collide with another's
    for split in context.partition_keys:
        locations = assignments.filter(pl.col("split") == split)["location"].to_list()
        progress = files.hash_progress(split)
        progress.mkdir(parents=True, exist_ok=True)
        chunk_number = 0

        def checkpoint(chunk: pl.DataFrame) -> None:
            nonlocal chunk_number
            write_parquet(chunk, progress / f"chunk-{run_token}-{chunk_number:06d}.parquet")
            chunk_number += 1

        run = hash_images(locations, _previous_hashes(files, split), workers=audit.hash_workers,
                          checkpoint=checkpoint, mode=audit.hash_mode, verify=audit.verify_cache)
        write_parquet(run.hashes, files.image_hashes(split))
        shutil.rmtree(progress, ignore_errors=True)
        totals["hashed"] += run.hashed
        totals["reused"] += run.reused
        stale_parts.append(run.stale.with_columns(split=pl.lit(split)))
        for status, count in run.hashes.group_by("status").len().iter_rows():
            status_counts[status] += count
        context.log.info(f"split {split}: {len(locations)} images, hashed {run.hashed}, reused {run.reused}")
    verification = {}
    if audit.verify_cache:
        stale = pl.concat(stale_parts)
        write_json({"verified_at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "splits": context.partition_keys, "stale_count": stale.height, "stale": stale.to_dicts()},
                   files.stale_cached_hashes)
        if stale.height:
            context.log.warning(f"{stale.height} cached hash(es) were stale; they are replaced now")
        verification = {"stale_cached_hashes": stale.height, "stale_examples": _markdown_table(stale, 10),
                        "verification": dg.MetadataValue.path(str(files.stale_cached_hashes))}
    return dg.MaterializeResult(metadata={
        **totals,
        **verification,
        "hash_mode": audit.hash_mode,
        "splits": ", ".join(context.partition_keys),
        "status_counts": dg.MetadataValue.json(status_counts),
        "dagster/row_count": sum(status_counts.values()),
        "paths": dg.MetadataValue.json([str(files.image_hashes(s)) for s in context.partition_keys]),
    })


def load_hashes(files: OutputFiles) -> pl.DataFrame:
    """The current hashes of every split."""
    return pl.concat([pl.read_parquet(files.image_hashes(split)) for split in SPLIT_NAMES
                      if files.image_hashes(split).exists()])


def load_audited_images(files: OutputFiles, assignments: pl.DataFrame | None = None) -> pl.DataFrame:
    """Split assignments (default: the audited split's) joined with each image's hash row."""
    if assignments is None:
        assignments = pl.read_parquet(files.split_assignments)
    return assignments.join(load_hashes(files), on="location", how="left", maintain_order="left")


@dg.asset(group_name=GROUP, deps=[image_hashes, split_assignments], kinds={"numba", "parquet"})
def near_duplicate_pairs(context: dg.AssetExecutionContext, audit: AuditSettings) -> dg.MaterializeResult:
    """Every cross-split pair with equal bytes or a pHash/dHash distance within the max radius."""
    files = OutputFiles(audit.output_dir)
    images = load_audited_images(files)
    pairs = cross_split_pairs(images, list(SPLIT_NAMES), audit.max_radius)
    path = write_parquet(pairs, files.near_duplicate_pairs)
    per_pair = {
        f"{q} vs {r}": pairs.filter((pl.col("query_split") == q) & (pl.col("reference_split") == r)).height
        for q, r in split_pairs(list(SPLIT_NAMES))
    }
    context.log.info(f"{pairs.height} cross-split pairs within radius {audit.max_radius}: {per_pair}")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": pairs.height,
        "max_radius": audit.max_radius,
        "pairs_per_split_pair": dg.MetadataValue.json(per_pair),
        "exact_byte_copies": int(pairs["sha256_equal"].sum()),
        "path": dg.MetadataValue.path(str(path)),
    })


def _write_report(audit_report: AuditReport, images: pl.DataFrame, files: OutputFiles, montage_per_reason: int) -> int:
    """Write the report files of one audited split; return how many montage examples were drawn."""
    report = audit_report.report
    write_json(report, files.report_json)
    write_text(report_markdown(report), files.report_markdown)
    write_json(audit_report.flagged.filter(pl.col("split") == SPLIT_NAMES[-1]).to_dicts(), files.flagged_test_images)
    return write_montage(montage_examples(audit_report.reasons, images, montage_per_reason), files.montage)


def _report_metadata(report: dict, files: OutputFiles, drawn: int) -> dict:
    verdict = report["verdict"]
    return {
        "verdict": verdict["text"],
        "verdict_status": verdict["status"],
        "leaked_test_images": verdict["leaked_test_images"],
        "leaked_test_share": verdict["leaked_share"],
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
        "report_dir": dg.MetadataValue.path(str(files.report_dir)),
    }


@dg.asset(group_name=GROUP, deps=[near_duplicate_pairs, split_integrity, image_hashes, "same_subject_pairs"],
          kinds={"json", "markdown"})
def leakage_report(context: dg.AssetExecutionContext, audit: AuditSettings) -> dg.MaterializeResult:
    """The audit's answer: coverage, thresholds, label agreement, identities, every leaked image with its
    reasons, a montage per reason, and the verdict."""
    files = OutputFiles(audit.output_dir)
    images = load_audited_images(files)
    pairs = pl.read_parquet(files.near_duplicate_pairs)
    # Recomputed from the assignments (cheap, reads no image) rather than parsed back from JSON.
    findings = check_split_integrity(pl.read_parquet(files.split_assignments))
    from leakage_pipeline.defs.same_subject_assets import read_same_subject  # that module imports this one

    audit_report = build_report(images, pairs, findings, list(SPLIT_NAMES), audit.report_settings(),
                                *read_same_subject(files))
    write_parquet(audit_report.identities, files.identities)
    drawn = _write_report(audit_report, images, files, audit.montage_per_reason)
    context.log.info(audit_report.report["verdict"]["text"])
    return dg.MaterializeResult(metadata=_report_metadata(audit_report.report, files, drawn))


@dg.asset(group_name=GROUP, deps=[leakage_report], kinds={"polars", "parquet"})
def leak_free_split(context: dg.AssetExecutionContext, audit: AuditSettings) -> dg.MaterializeResult:
    """The audited split with every identity whole (linked patient ids together), where the leak-free
    model trains; stable as data grows."""
    files = OutputFiles(audit.output_dir)
    ledger_path = files.leak_free.split_assignments
    ledger = pl.read_parquet(ledger_path, columns=["patient_id", "split"]) if ledger_path.exists() else None
    result = leak_free_split_of(
        pl.read_parquet(files.split_assignments), load_hashes(files), pl.read_parquet(files.identities),
        list(SPLIT_NAMES), json.loads(files.report_json.read_text())["trusted_radius"],
        audit.report_settings().min_detail, ledger,
    )
    split = result.assignments
    path = write_parquet(split, ledger_path)
    moved = split.filter(pl.col("split_source") == MOVED_WITH_IDENTITY)
    context.log.info(f"leak-free split: {moved.height} image(s) moved to keep their identity in one split "
                     f"({result.rounds} placement round(s))")
    return dg.MaterializeResult(metadata={
        "dagster/row_count": split.height,
        "images_moved": moved.height,
        "placement_rounds": result.rounds,
        "per_split": _markdown_table(split.group_by("split").agg(
            pl.len().alias("images"), pl.col("identity").n_unique().alias("identities")).sort("split")),
        "path": dg.MetadataValue.path(str(path)),
    })


@dg.asset(group_name=GROUP, deps=[leak_free_split, image_hashes], kinds={"json", "markdown"})
def leak_free_audit(context: dg.AssetExecutionContext, audit: AuditSettings) -> dg.MaterializeResult:
    """The leak-free split audited like any split, with the trusted radii of the audited split's report
    (so that what linked identities there is judged the same way here)."""
    files = OutputFiles(audit.output_dir)
    split = pl.read_parquet(files.leak_free.split_assignments)
    images = load_audited_images(files, split)
    pairs = cross_split_pairs(images, list(SPLIT_NAMES), audit.max_radius)
    write_parquet(pairs, files.leak_free.near_duplicate_pairs)
    trusted = json.loads(files.report_json.read_text())["trusted_radius"]
    settings = ReportSettings(radii=audit.report_settings().radii, trusted_radius=trusted)
    audit_report = build_report(images, pairs, check_split_integrity(split), list(SPLIT_NAMES), settings)
    drawn = _write_report(audit_report, images, files.leak_free, audit.montage_per_reason)
    context.log.info(f"leak-free split: {audit_report.report['verdict']['text']}")
    return dg.MaterializeResult(metadata=_report_metadata(audit_report.report, files.leak_free, drawn))


AUDIT_ASSETS = [manifest, split_assignments, split_integrity, image_hashes, near_duplicate_pairs, leakage_report,
                leak_free_split, leak_free_audit]
