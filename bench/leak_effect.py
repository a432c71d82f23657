"""The demo's leak effect over seeds: is the paired difference real, or one lucky seed?

Builds the demo dataset once, audits it once (later seeds reuse the hashes and image stores),
then for each seed trains the leak-free and the leaky model with the demo's training settings
(the seed drives the weights, the batch order, the leaky split and the bootstrap) and prints the
paired top-1 difference on the shared test images with its 95% interval.

    python -m bench.leak_effect [--seeds 5] [--dir .bench_leak_effect]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import dagster as dg

from leakage_pipeline.cli import DEMO_TRAINING
from leakage_pipeline.defs.settings import AuditSettings, TrainingSettings
from leakage_pipeline.demo.synthetic_dataset import build_demo_dataset
from leakage_pipeline.runner import run_audit
from leakage_pipeline.training.evaluation import LEAK_FREE_SHARED, LEAKY_SHARED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=Path(".bench_leak_effect"))
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)  # Dagster's notice about its Pipes reader
    manifest = args.dir / "data" / "manifest.csv"
    if not manifest.exists():
        build_demo_dataset(manifest.parent)
    settings = AuditSettings(manifest_path=str(manifest), output_dir=str(args.dir / "out"))

    print("| seed | shared test images | leak-free top-1 | leaky top-1 | leaky − leak-free (95% CI) | above 0 | s |")
    print("|---|---|---|---|---|---|---|")
    excluded = 0
    for seed in range(args.seeds):
        started = time.perf_counter()
        outcome = run_audit(settings, log_level="CRITICAL", training=TrainingSettings(**{**DEMO_TRAINING.model_dump(), "seed": seed}))
        summary = json.loads(outcome.files.evaluation_json.read_text())
        effect = summary["leak_effect_top1"]
        top1 = {key: summary["rows"][key]["metrics"]["top1"]["value"] for key in (LEAK_FREE_SHARED, LEAKY_SHARED)}
        excluded += effect["low"] > 0
        print(f"| {seed} | {summary['shared_test_images']} | {top1[LEAK_FREE_SHARED]:.3f} | {top1[LEAKY_SHARED]:.3f} | "
              f"{effect['value'] * 100:+.1f} ({effect['low'] * 100:+.1f} to {effect['high'] * 100:+.1f}) | "
              f"{'yes' if effect['low'] > 0 else 'no'} | {time.perf_counter() - started:.0f} |", flush=True)
    print(f"\nThe interval lies above zero on {excluded} of {args.seeds} seeds ({excluded / args.seeds:.0%}).")


if __name__ == "__main__":
    main()
