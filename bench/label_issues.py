"""Do the label-issue flags find planted wrong labels on real images? Precision, recall and cross-validation cost.

For each set, a subsample of whole patients (lesions) is decoded once; for each noise rate a seeded
share of its images gets another class (uniformly among the others), the out-of-fold models of the
pipeline (folds grouped by patient, the pipeline's own code) score every image, and cleanlab flags
likely label issues. Printed: the planted flips flagged (recall), the flags that are planted
(precision), how many images cleanlab finds before the label-quality bar and the plants among them (the
share that bounds the effect on top-1), the cross-validation's wall time and its training images/s, on
the device training picks.
``--demo DIR`` instead scores a built demo dataset (``DIR/manifest.csv``) against its own planted flips.

    python -m bench.label_issues [--images 800] [--epochs 8] [--rates 0.02,0.05,0.10] [--demo DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from leakage_pipeline.training.image_store import ImageStore
from leakage_pipeline.training.label_issues import find_label_issues
from leakage_pipeline.training.out_of_fold import FoldInputs, out_of_fold_probabilities
from leakage_pipeline.training.preprocessing import Preprocessing
from leakage_pipeline.training.settings import ClassifierSettings

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SETS = {  # name: (folder, patient column)
    "kermany-cxr-224": (SHARED / "kermany-cxr-224", "patient_id"),
    "ham10000-train": (SHARED / "ham10000-train", "lesion_id"),
}


def _subsample(manifest: pl.DataFrame, images: int, seed: int) -> pl.DataFrame:
    """Whole patients in a seeded random order until about ``images`` images."""
    patients = manifest.select("patient_id").unique().sort("patient_id").sample(fraction=1.0, shuffle=True, seed=seed)
    sizes = patients.join(manifest.group_by("patient_id").len(), on="patient_id", how="left", maintain_order="left")
    kept = sizes.filter(pl.col("len").cum_sum() <= images)["patient_id"]
    return manifest.filter(pl.col("patient_id").is_in(kept.implode()))


def _decode(rows: pl.DataFrame, size: int) -> ImageStore:
    preprocessing = Preprocessing.for_shape(size, 3)
    images = np.stack([preprocessing.bytes_to_array(Path(path).read_bytes()) for path in rows["location"]])
    index = rows.select("location").with_columns(sha256=pl.col("location"), part=pl.lit(0, pl.Int64),
                                                  row=pl.int_range(pl.len(), dtype=pl.Int64))
    return ImageStore(index=index, parts=(images,))


def _flip(rows: pl.DataFrame, rate: float, seed: int) -> tuple[pl.DataFrame, set[str]]:
    rng = np.random.default_rng(seed)
    classes = sorted(rows["label"].unique().to_list())
    labels = rows["label"].to_list()
    chosen = rng.choice(len(labels), round(rate * len(labels)), replace=False)
    for index in chosen:
        labels[index] = str(rng.choice([name for name in classes if name != labels[index]]))
    return rows.with_columns(label=pl.Series(labels)), set(rows["location"].gather(np.sort(chosen)).to_list())


def _score(rows: pl.DataFrame, store: ImageStore, planted: set[str], args) -> dict:
    settings = ClassifierSettings(epochs=args.epochs, patience=args.epochs, seed=args.seed)
    inputs = FoldInputs(table=rows.with_columns(identity=pl.col("patient_id"), split=pl.lit("train")),
                        class_names=tuple(sorted(rows["label"].unique().to_list())), image_size=args.size,
                        channels=3, settings=settings, folds=args.folds)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as models:
        scored, runs = out_of_fold_probabilities(inputs, store, Path(models), log=lambda _: None)
    seconds = time.perf_counter() - started
    issues, _, not_calibrated_because = find_label_issues(scored, list(inputs.class_names))
    if not_calibrated_because:
        print(f"not calibrated: {not_calibrated_because}")
    flagged = set(issues.filter("is_label_issue")["location"].to_list())
    found = set(issues.filter("cleanlab_issue")["location"].to_list())
    hits = len(flagged & planted)
    trained = sum(run.train_images for run in runs) * args.epochs
    return {"images": rows.height, "planted": len(planted), "flagged": len(flagged),
            "precision": hits / len(flagged) if flagged else float("nan"),
            "recall": hits / len(planted) if planted else float("nan"),
            "found": len(found), "found_recall": len(found & planted) / len(planted) if planted else float("nan"),
            "cv_seconds": seconds, "train_images_per_second": trained / seconds}


def _print(name: str, rate: str, result: dict) -> None:
    print(f"| {name} | {rate} | {result['images']} | {result['planted']} | {result['flagged']} | "
          f"{result['precision']:.2f} | {result['recall']:.2f} | {result['found']} | {result['found_recall']:.2f} | "
          f"{result['cv_seconds']:.0f} | "
          f"{result['train_images_per_second']:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=800, help="images per set (whole patients)")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--rates", default="0.02,0.05,0.10")
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo", type=Path, help="a built demo dataset's folder: score its planted flips instead")
    args = parser.parse_args()
    from leakage_pipeline.devices import pick_device

    print(f"device: {pick_device('auto')}, {args.size}px, small CNN, {args.epochs} epochs, {args.folds} folds")
    print("| set | flip rate | images | planted | flagged | precision | recall | found by cleanlab | its recall | CV s "
          "| train images/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    if args.demo:
        manifest = pl.read_csv(args.demo / "manifest.csv").with_columns(
            location=pl.lit(str(args.demo.resolve()) + "/") + pl.col("image_uri"))
        flips = json.loads((args.demo / "planted.json").read_text())["label_flips"]
        unreadable = json.loads((args.demo / "planted.json").read_text())["unreadable"]
        rows = manifest.filter(pl.col("image_uri") != unreadable).select("location", "patient_id", "label")
        planted = {str(args.demo.resolve()) + "/" + flip["image_uri"] for flip in flips}
        _print("demo", "planted", _score(rows, _decode(rows, args.size), planted, args))
        return
    for name in args.sets.split(","):
        folder, patient = SETS[name]
        manifest = pl.read_csv(folder / "manifest.csv").select(
            location=pl.lit(str(folder) + "/") + pl.col("image_path"), patient_id=pl.col(patient), label="label")
        rows = _subsample(manifest, args.images, args.seed)
        store = _decode(rows, args.size)
        for rate in map(float, args.rates.split(",")):
            flipped, planted = _flip(rows, rate, args.seed)
            _print(name, f"{rate:.0%}", _score(flipped, store, planted, args))


if __name__ == "__main__":
    main()
