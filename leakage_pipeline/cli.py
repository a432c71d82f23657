"""``leakage-pipeline``: audit (and train) from scripts and cron, predict, serve, or run the demo.

Exit codes: 0 when the audit ran (whatever it found, leakage included), 2 when it could not
(bad manifest, bad arguments, unreadable output directory), with the reason on stderr.
``predict`` exits 2 when the model or any image could not be read (the others are still printed).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import ValidationError

from leakage_pipeline.audit.manifest import ManifestError
from leakage_pipeline.audit.perceptual_hash import HASH_MODE_EXACT, HASH_MODES
from leakage_pipeline.audit.report_markdown import threshold_markdown
from leakage_pipeline.audit.splitting import MOVED_WITH_IDENTITY, SPLIT_POLICIES
from leakage_pipeline.defs.dataset import DATASETS_DIR, describe_problems, load_dataset
from leakage_pipeline.defs.settings import AuditSettings, TrainingSettings
from leakage_pipeline.progress import ProgressDisplay, ProgressReporter
from leakage_pipeline.runner import AuditFailed, AuditOutcome, run_audit
from leakage_pipeline.storage.files import read_json, read_parquet
from leakage_pipeline.storage.locations import UnsupportedLocation, check_location
from leakage_pipeline.storage.output_lock import OutputLocked
from leakage_pipeline.training.evaluation import summary_markdown
from leakage_pipeline.training.model_files import Classifier, ModelFileError
from leakage_pipeline.training.serving import DEFAULT_MAX_UPLOAD_BYTES, serve
from leakage_pipeline.training.settings import ARCHITECTURES

EXIT_RAN = 0
EXIT_COULD_NOT_RUN = 2
TRAINING_DEFAULTS = TrainingSettings()
AUDIT_DEFAULTS = {name: field.default for name, field in AuditSettings.model_fields.items()}
# The demo's training settings are its dataset file's (defs/datasets/demo.yaml), like its data's place.
DEMO_DATASET = load_dataset(DATASETS_DIR / "demo.yaml")
DEMO_TRAINING = DEMO_DATASET.training_settings()
DEFAULT_DEMO_DIR = Path(".demo")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leakage-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    audit = commands.add_parser("audit", help="audit a manifest for train/test leakage")
    audit.add_argument("--manifest", required=True, help="CSV or Parquet manifest")
    audit.add_argument("--image-root", help="folder (or gs:// prefix) that relative image URIs are under; "
                                            "default: the manifest's folder")
    audit.add_argument("--out", required=True, help="output directory (also the hash cache)")
    audit.add_argument("--split-policy", choices=SPLIT_POLICIES, default="keep")
    audit.add_argument("--max-radius", type=int, default=AUDIT_DEFAULTS["max_radius"],
                       help=f"largest Hamming radius to match (default {AUDIT_DEFAULTS['max_radius']})")
    audit.add_argument("--columns", default="",
                       help="canonical=manifest column names, e.g. image_uri=path,patient_id=pid,label=dx")
    audit.add_argument("--seed", type=int, default=0, help="seed of the patient-level split assignment")
    audit.add_argument("--workers", type=int, default=2, help="hashing threads")
    audit.add_argument("--hash-mode", choices=HASH_MODES, default=HASH_MODE_EXACT,
                       help="exact (default): bit-identical to imagehash; fast: JPEGs decoded at reduced scale, "
                            "hashes within a few bits of the exact ones")
    audit.add_argument("--allow-outside-root", action="store_true",
                       help="accept image URIs that name files outside the image root (refused by default)")
    audit.add_argument("--resolve-symlinks", action="store_true",
                       help="follow symlinks, so a link and its target are one image")
    audit.add_argument("--verify", action="store_true",
                       help="re-hash every image and report any cached hash that was stale "
                            "(in image_hashes/stale_cached_hashes.json)")
    audit.add_argument("--lock-wait", type=float, default=AUDIT_DEFAULTS["lock_wait_seconds"],
                       help="seconds to wait while another run holds the output directory "
                            f"(default {AUDIT_DEFAULTS['lock_wait_seconds']:g})")
    audit.add_argument("--no-same-subject", action="store_true",
                       help="skip the same-subject stage (a learned matcher with keypoint verification)")
    audit.add_argument("--train", action="store_true",
                       help="also train the leak-free and the leaky model and evaluate both (skipped when a "
                            "patient spans splits)")
    audit.add_argument("--image-size", type=int, default=TRAINING_DEFAULTS.image_size,
                       help=f"training image side in pixels (default {TRAINING_DEFAULTS.image_size})")
    audit.add_argument("--channels", type=int, choices=(1, 3), default=TRAINING_DEFAULTS.channels,
                       help="1 for grayscale, 3 for RGB")
    audit.add_argument("--architecture", choices=ARCHITECTURES, default=TRAINING_DEFAULTS.architecture)
    audit.add_argument("--epochs", type=int, default=TRAINING_DEFAULTS.epochs,
                       help="most epochs; early stopping on val may end sooner")
    audit.add_argument("--device", default=TRAINING_DEFAULTS.device, help="auto (CUDA when present), cpu, cuda or cuda:N")
    audit.add_argument("--initial-weights", help="a state dict file to start training from")

    demo = commands.add_parser("demo", help="build the synthetic demo dataset, audit it, train and evaluate")
    demo.add_argument("--dir", type=Path, default=DEFAULT_DEMO_DIR, help="where the demo data and report go")
    demo.add_argument("--no-train", action="store_true", help="audit only")
    for command in (audit, demo):
        command.add_argument("--verbose", action="store_true", help="show Dagster's run log")

    predict = commands.add_parser("predict", help="print each image's predicted class and probabilities as JSON")
    predict.add_argument("images", nargs="+", type=Path)
    predict.add_argument("--model", type=Path, required=True, help="a model directory (model.pt, preprocessing.json)")
    predict.add_argument("--device", default="auto")

    serve = commands.add_parser("serve", help="serve a model over HTTP: GET /health, POST /predict")
    serve.add_argument("--model", type=Path, required=True, help="a model directory (model.pt, preprocessing.json)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_BYTES / 2**20)
    return parser


def _summary(outcome: AuditOutcome, trained: bool) -> str:
    files = outcome.files
    report = read_json(files.report_json)
    leak_free = read_json(files.leak_free.report_json)
    moved = read_parquet(files.leak_free.split_assignments).filter(
        pl.col("split_source") == MOVED_WITH_IDENTITY).height
    lines = [threshold_markdown(report), "", report["verdict"]["text"], "",
             f"Leak-free split ({moved} image(s) moved to keep each identity in one split): "
             f"{leak_free['flagged']['count']} flagged image(s), "
             f"{leak_free['split_integrity']['patients_spanning_splits']['count']} patient(s) in more than one split."]
    if outcome.training_blocked:
        lines.append("Training is blocked: the leak-free split still leaks.")
    lines += [f"Report: {files.report_markdown}",
              f"Leak-free split's report: {files.leak_free.report_markdown}"]
    evaluation = files.evaluation_json
    if trained and not outcome.training_blocked:
        summary = read_json(evaluation)
        lines += ["", summary_markdown(summary), "", summary["verdict"],
                  f"Evaluation: {files.evaluation_markdown}",
                  f"Models: {files.training_dir}/{{leak_free,leaky}}"]
    return "\n".join(lines)


def _audit(settings: AuditSettings, verbose: bool, training: TrainingSettings | None = None) -> int:
    try:
        settings.column_mapping()  # a malformed --columns or location fails here, before any work
        for uri in (settings.manifest_path, settings.output_dir, settings.image_root or ""):
            check_location(uri)
        # Progress goes to stderr, so stdout stays the summary alone; --verbose shows it in Dagster's log.
        with ProgressDisplay(sys.stderr) as display:
            outcome = run_audit(settings, log_level="INFO" if verbose else "CRITICAL", training=training,
                                progress=None if verbose else display)
    except (AuditFailed, ManifestError, OutputLocked, UnsupportedLocation) as error:
        print(f"leakage-pipeline: the audit could not run: {error}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    print(_summary(outcome, trained=training is not None))
    return EXIT_RAN


def _predict(images: list[Path], model_dir: Path, device: str) -> int:
    try:
        classifier = Classifier.load(model_dir, device)
    except ModelFileError as error:
        print(f"leakage-pipeline: cannot load the model in {model_dir}: {error}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    results, failed = [], 0
    for path in images:
        try:
            results.append({"image": str(path), **classifier.predict_bytes(path.read_bytes())})
        # Whatever one file does to a decoder (missing, no image, over the pixel cap, a codec's own
        # error) is that image's result; the others are still predicted and printed.
        except Exception as error:
            failed += 1
            results.append({"image": str(path), "error": f"{type(error).__name__}: {error}"})
    print(json.dumps(results, indent=2))
    return EXIT_COULD_NOT_RUN if failed else EXIT_RAN


def _demo(directory: Path, train: bool, verbose: bool) -> int:
    """Audit the team's split as delivered, build and audit the leak-free split, and train and
    evaluate the leak-free and the leaky model on it."""
    from leakage_pipeline.demo.synthetic_dataset import build_demo_dataset

    data_dir = directory / "data"
    manifest = data_dir / "manifest.csv"
    if not manifest.exists():
        print(f"building the demo dataset in {data_dir} ...", flush=True)
        with ProgressDisplay(sys.stderr) as display:
            build_demo_dataset(data_dir, progress=ProgressReporter(display, "building the demo dataset"))
    print("== the team's split, as delivered" + (", then both models trained on the CPU ==" if train else " =="),
          flush=True)
    return _audit(AuditSettings(manifest_path=str(manifest), output_dir=str(directory / "out")), verbose,
                  DEMO_TRAINING if train else None)


def main(argv: list[str] | None = None) -> int:
    # A script's user cannot act on Dagster's notice that its Pipes message reader is a preview.
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)
    args = _parser().parse_args(argv)
    if args.command == "audit":
        try:  # the settings' own ranges (a negative radius, no workers) are the arguments' too
            training = TrainingSettings(
                image_size=args.image_size, channels=args.channels, architecture=args.architecture, epochs=args.epochs,
                device=args.device, initial_weights=args.initial_weights, seed=args.seed,
            ) if args.train else None
            settings = AuditSettings(
                manifest_path=args.manifest, output_dir=args.out, image_root=args.image_root,
                columns=args.columns, split_policy=args.split_policy, max_radius=args.max_radius,
                seed=args.seed, hash_workers=args.workers, hash_mode=args.hash_mode,
                allow_outside_root=args.allow_outside_root, resolve_symlinks=args.resolve_symlinks,
                verify_cache=args.verify, lock_wait_seconds=args.lock_wait, same_subject=not args.no_same_subject,
            )
        except ValidationError as error:
            print(f"leakage-pipeline: bad argument: {describe_problems(error)}", file=sys.stderr)
            return EXIT_COULD_NOT_RUN
        return _audit(settings, args.verbose, training)
    if args.command == "predict":
        return _predict(args.images, args.model, args.device)
    if args.command == "serve":
        try:
            serve(args.model, host=args.host, port=args.port, max_upload_bytes=int(args.max_upload_mb * 2**20))
        except ModelFileError as error:
            print(f"leakage-pipeline: cannot load the model in {args.model}: {error}", file=sys.stderr)
            return EXIT_COULD_NOT_RUN
        return EXIT_RAN
    return _demo(args.dir, train=not args.no_train, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
