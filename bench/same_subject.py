"""The same-subject stage against perceptual hashes on the demo's planted re-shots, and its cost.

Builds the demo dataset (once) and audits it in a fresh output directory, then reads the planted
ground truth (``planted.json``: each re-shot's source patient; copies and the re-enrolled patient
map to theirs) and prints, for hashes and for the matcher side by side: recall at rank 1 and 5
(the source patient among a re-shot's nearest earlier-split images: by pHash distance, by
embedding cosine, and after verification by inliers) and precision / recall at the threshold each
one uses (the report's trusted hash radii; the calibrated inlier threshold). Precision is over
every accepted pair of every val and test image, recall over the re-shots. Then the stage's CPU
seconds per step, their projection to 1M images and each feature's bytes per image
(``bench/same_subject_cost.py``).

``--ham DIR`` audits HAM10000 photos split by lesion (see ``bench/ham_lesions.py``): recall of the
re-photographed lesions and precision, hashes and matcher side by side, with the stage's wall time, images/s,
CPU seconds per step and the projection to 1M images.
``--ukbench DIR`` adds a verification-only check on real photographs (every pair of its images,
same photo or not), ``--kermany DIR`` a full audit of that chest X-ray set (slow: minutes).

    python -m bench.same_subject [--dir .bench_same_subject] [--ham ../shared/datasets/ham10000-train [--ham-only]]
                                 [--ukbench ../shared/datasets/ukbench-dups]
                                 [--kermany ../shared/datasets/kermany-cxr-224]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl

from bench.same_subject_cost import Projection, cost_report
from leakage_pipeline.audit.report import informative_trusted_pairs
from leakage_pipeline.defs.settings import AuditSettings
from leakage_pipeline.demo.synthetic_dataset import build_demo_dataset
from leakage_pipeline.runner import run_audit
from leakage_pipeline.storage.output_files import OutputFiles


def _identity_of(data_dir: Path, manifest: pl.DataFrame) -> dict[str, str]:
    """Each patient id's true subject: planted copies, the re-enrolled twin and the re-shots map to their source."""
    planted = json.loads((data_dir / "planted.json").read_text())
    patient_of_uri = dict(manifest.select("image_uri", "patient_id").iter_rows())
    truth = {pid: pid for pid in manifest["patient_id"].unique().to_list()}
    for copy in planted["exact_copies"] + planted["reencoded_copies"]:
        truth[patient_of_uri[copy["image_uri"]]] = patient_of_uri[copy["source"]]
    truth[planted["reenrolled_patient"]["second_id"]] = planted["reenrolled_patient"]["original"]
    for reshot in planted["reshots"]:
        truth[reshot["patient_id"]] = reshot["source_patient_id"]
    return truth


def _recall_at(ranked: dict[str, list[str]], sources: dict[str, str], k: int) -> float:
    return float(np.mean([sources[uri] in ranked.get(uri, [])[:k] for uri in sources]))


def _hash_rankings(images: pl.DataFrame, truth: dict[str, str], reshots: list[dict], split_order: list[str]):
    """Per re-shot, the true subjects of earlier-split images ordered by pHash distance (closest first)."""
    readable = images.filter(pl.col("status") == "ok")
    ranked = {}
    for reshot in reshots:
        earlier = readable.filter(pl.col("split").is_in(split_order[: split_order.index(reshot["split"])]))
        phash = readable.filter(pl.col("image_uri") == reshot["image_uri"])["phash"].item()
        distance = np.array([bin(phash ^ other).count("1") for other in earlier["phash"].to_list()])
        order = np.argsort(distance, kind="stable")
        ranked[reshot["image_uri"]] = [truth[earlier["patient_id"][int(i)]] for i in order[:5]]
    return ranked


def _demo_table(data_dir: Path, out: Path) -> tuple[list[list], dict]:
    manifest = pl.read_csv(data_dir / "manifest.csv", infer_schema=False)
    truth = _identity_of(data_dir, manifest)
    planted = json.loads((data_dir / "planted.json").read_text())
    reshots = planted["reshots"]
    sources = {r["image_uri"]: r["source_patient_id"] for r in reshots}
    files = OutputFiles(out)
    report = json.loads(files.report_json.read_text())
    split_order = report["splits"]
    images = pl.read_parquet(files.split_assignments).join(
        pl.concat([pl.read_parquet(files.image_hashes(s)) for s in split_order]), on="location", how="left")

    def true_pair(frame: pl.DataFrame) -> np.ndarray:
        return np.array([truth[q] == truth[r] for q, r in frame.select("query_patient_id", "reference_patient_id")
                         .iter_rows()], bool)

    # Hashes: the report's trusted pairs (sha256, or pHash/dHash within their trusted radius).
    trusted = report["trusted_radius"]
    hash_accepted = informative_trusted_pairs(pl.read_parquet(files.near_duplicate_pairs), trusted,
                                              report["blank_frames"]["min_detail"])
    hash_found = {q for q, ok in zip(hash_accepted["query_image_uri"].to_list(), true_pair(hash_accepted)) if ok}
    hash_ranked = _hash_rankings(images, truth, reshots, split_order)

    same = pl.read_parquet(files.same_subject_pairs)
    same = same.with_columns(true_subject=pl.Series(true_pair(same)))
    by_cosine = {uri: [truth[p] for p in group.sort("rank")["reference_patient_id"].to_list()]
                 for (uri,), group in same.group_by("query_image_uri")}
    by_inliers = {uri: [truth[p] for p in group.sort(["inliers", "rank"], descending=[True, False])
                        ["reference_patient_id"].to_list()] for (uri,), group in same.group_by("query_image_uri")}
    accepted = same.filter(pl.col("accepted"))
    matcher_found = set(accepted.filter(pl.col("true_subject"))["query_image_uri"].to_list())
    summary = json.loads(files.same_subject_summary.read_text())
    threshold = summary["calibration"]["threshold"]

    def precision(frame: pl.DataFrame, flags) -> str:
        return f"{np.mean(flags):.3f} ({int(np.sum(flags))}/{len(flags)})" if frame.height else "– (0 pairs)"

    trusted_text = ", ".join(f"{n} ≤ {r}" for n, r in trusted.items() if r is not None) or "sha256 only"
    rows = [
        ["hashes (pHash distance)", _recall_at(hash_ranked, sources, 1), _recall_at(hash_ranked, sources, 5),
         f"trusted: sha256, {trusted_text}", precision(hash_accepted, true_pair(hash_accepted)),
         np.mean([u in hash_found for u in sources])],
        ["matcher: embedding cosine", _recall_at(by_cosine, sources, 1), _recall_at(by_cosine, sources, 5),
         "–", "–", "–"],
        ["matcher: + keypoint verification", _recall_at(by_inliers, sources, 1), _recall_at(by_inliers, sources, 5),
         f"≥ {threshold} inliers (calibrated)", precision(accepted, accepted["true_subject"].to_numpy()),
         np.mean([u in matcher_found for u in sources])],
    ]
    return rows, summary


def _table(headers: list[str], rows: list[list]) -> str:
    def cell(value) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


def _ukbench(directory: Path) -> str:
    """Every pair of the set's readable images: same photo (same group) or not, by inliers and by pHash."""
    import imagehash
    from PIL import Image

    from leakage_pipeline.same_subject.calibration import CalibrationSettings
    from leakage_pipeline.same_subject.geometric_verification import count_inliers, keypoints_of_bytes

    manifest = pl.read_csv(directory / "manifest.csv")
    items = []
    for path, group in manifest.select("image_path", "patient_id").iter_rows():
        try:
            data = (directory / path).read_bytes()
            with Image.open(directory / path) as image:
                phash = imagehash.phash(image.convert("RGB"))
            items.append((path, group, keypoints_of_bytes(data), phash))
        except Exception:  # the set holds corrupt and SVG files on purpose
            continue
    floor = CalibrationSettings().min_inliers
    rows = []
    same, inliers, distance = [], [], []
    for a, b in itertools.combinations(items, 2):
        same.append(a[1] == b[1])
        inliers.append(count_inliers(a[2], b[2]))
        distance.append(a[3] - b[3])
    same, inliers, distance = map(np.array, (same, inliers, distance))
    for name, accepted in (("pHash ≤ 8", distance <= 8), (f"inliers ≥ {floor} (the floor; no train split "
                                                            "to calibrate on)", inliers >= floor)):
        rows.append([name, f"{(accepted & same).sum()}/{accepted.sum()}", f"{(accepted & same).sum()}/{same.sum()}"])
    return (f"ukbench-dups: {len(items)} readable images, {len(same)} pairs, {same.sum()} of one photo\n\n"
            + _table(["criterion", "precision (true/accepted)", "recall (found/true)"], rows))


def _ham(ham_dir: Path, work: Path, fresh: bool, projection: Projection) -> None:
    """Audit the lesion split of ``ham_dir`` and print its table; ``fresh``: recompute every cached feature."""
    from bench.ham_lesions import lesion_scores, lesion_split_manifest

    out = work / "ham_out"
    if fresh:
        shutil.rmtree(out, ignore_errors=True)
    manifest = lesion_split_manifest(ham_dir, work / "ham_manifest.csv")
    start = time.perf_counter()
    run_audit(AuditSettings(manifest_path=str(work / "ham_manifest.csv"), output_dir=str(out), image_root="/",
                            columns="image_uri=image_path,patient_id=lesion_id,body_site=site"), log_level="CRITICAL")
    seconds = time.perf_counter() - start
    rows, summary = lesion_scores(manifest, out)
    counts = manifest.group_by("split").len().sort("split").iter_rows()
    print(f"\nham10000 by lesion ({', '.join(f'{s} {n}' for s, n in counts)}): audit {seconds:.0f} s, "
          f"same-subject stage {summary['cost']['total']['wall_seconds']:.0f} s "
          f"({'fresh' if fresh else 'cached features reused'})\n")
    print(_table(["method", "recall@1", "recall@5", "threshold", "precision (all accepted val/test pairs)",
                  "recall (queries with a train photo of their lesion)"], rows))
    calibration = summary["calibration"]
    print(f"\nCalibration (train): threshold {calibration['threshold']}, precision {calibration['precision']}, "
          f"estimated on the audited mix {calibration['audited_precision']}, {calibration['true_pairs']} same-lesion "
          f"and {calibration['false_pairs']} other pairs\n")
    print(cost_report(summary, OutputFiles(out).same_subject_dir, work / "ham_step_cost.json", projection))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=Path(".bench_same_subject"))
    parser.add_argument("--ham", type=Path, help="HAM10000 photos with lesion ids (manifest.csv)")
    parser.add_argument("--ham-only", action="store_true", help="skip the demo")
    parser.add_argument("--ham-cached", action="store_true", help="reuse the HAM run's cached features")
    parser.add_argument("--ukbench", type=Path)
    parser.add_argument("--kermany", type=Path)
    parser.add_argument("--hnsw-references", type=int, default=Projection.hnsw_references,
                        help="references in the HNSW search measurement (1M takes minutes to build)")
    args = parser.parse_args()
    projection = Projection(hnsw_references=args.hnsw_references)
    data_dir, out = args.dir / "data", args.dir / "out"
    if args.ham:
        _ham(args.ham, args.dir, fresh=not args.ham_cached, projection=projection)
        if args.ham_only:
            return
    if not (data_dir / "manifest.csv").exists():
        build_demo_dataset(data_dir)
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, so every cost is measured, none reused
    start = time.perf_counter()
    run_audit(AuditSettings(manifest_path=str(data_dir / "manifest.csv"), output_dir=str(out)), log_level="CRITICAL")
    print(f"demo audit with the same-subject stage: {time.perf_counter() - start:.0f} s\n")
    rows, summary = _demo_table(data_dir, out)
    calibration = summary["calibration"]
    print(f"Demo re-shots: {len(json.loads((data_dir / 'planted.json').read_text())['reshots'])} "
          f"(val and test; a third under the same patient id)\n")
    print(_table(["method", "recall@1", "recall@5", "threshold", "precision (all val/test pairs)", "recall (re-shots)"],
                 rows))
    print(f"\nCalibration (train): threshold {calibration['threshold']}, precision {calibration['precision']}, "
          f"recall {calibration['recall']}, {calibration['true_pairs']} same-patient and "
          f"{calibration['false_pairs']} other pairs\n")
    print(cost_report(summary, OutputFiles(out).same_subject_dir, args.dir / "demo_step_cost.json", projection))
    if args.ukbench:
        print("\n" + _ukbench(args.ukbench))
    if args.kermany:
        kermany_out = args.dir / "kermany_out"
        start = time.perf_counter()
        run_audit(AuditSettings(manifest_path=str(args.kermany / "manifest.csv"), output_dir=str(kermany_out),
                                columns="image_uri=image_path"), log_level="CRITICAL")
        report = json.loads(OutputFiles(kermany_out).report_json.read_text())
        section = report["same_subject"]
        print(f"\nkermany-cxr-224 ({time.perf_counter() - start:.0f} s): {json.dumps(section, indent=1)}")
        print(f"verdict per reason: {report['verdict']['per_reason']}")


if __name__ == "__main__":
    main()
