"""``leakage-pipeline``: run the audit from scripts and cron, or the embedded demo.

Exit codes: 0 when the audit ran (whatever it found, leakage included), 2 when it could not
(bad manifest, bad arguments, unreadable output directory), with the reason on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import dagster as dg

from leakage_pipeline.audit.manifest import ManifestError
from leakage_pipeline.audit.report_markdown import threshold_markdown
from leakage_pipeline.audit.splitting import SPLIT_POLICIES
from leakage_pipeline.defs.settings import DEFAULT_DEMO_DIR, AuditSettings
from leakage_pipeline.runner import AuditFailed, AuditOutcome, run_audit

EXIT_RAN = 0
EXIT_COULD_NOT_RUN = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="leakage-pipeline", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    audit = commands.add_parser("audit", help="audit a manifest for train/test leakage")
    audit.add_argument("--manifest", required=True, help="CSV or Parquet manifest")
    audit.add_argument("--image-root", help="folder (or gs:// prefix) that relative image URIs are under; "
                                            "default: the manifest's folder")
    audit.add_argument("--out", required=True, help="output directory (also the hash cache)")
    audit.add_argument("--split-policy", choices=SPLIT_POLICIES, default="keep")
    audit.add_argument("--max-radius", type=int, default=8, help="largest Hamming radius to match (default 8)")
    audit.add_argument("--columns", default="",
                       help="canonical=manifest column names, e.g. image_uri=path,patient_id=pid,label=dx")
    audit.add_argument("--seed", type=int, default=0, help="seed of the patient-level split assignment")
    audit.add_argument("--workers", type=int, default=2, help="hashing threads")

    demo = commands.add_parser("demo", help="build the synthetic demo dataset and audit it")
    demo.add_argument("--dir", type=Path, default=DEFAULT_DEMO_DIR, help="where the demo data and report go")
    for command in (audit, demo):
        command.add_argument("--verbose", action="store_true", help="show Dagster's run log")
    return parser


def _summary(outcome: AuditOutcome) -> str:
    report = json.loads(outcome.files.report_json.read_text())
    lines = [threshold_markdown(report), "", report["verdict"]["text"]]
    if outcome.training_blocked:
        lines.append("Training is blocked: the split check failed (patients span splits).")
    lines.append(f"Report: {outcome.files.report_markdown.resolve()}")
    return "\n".join(lines)


def _audit(settings: AuditSettings, verbose: bool) -> int:
    try:
        settings.column_mapping()  # a malformed --columns fails here, before any work
        outcome = run_audit(settings, log_level="INFO" if verbose else "CRITICAL")
    except (AuditFailed, ManifestError) as error:
        print(f"leakage-pipeline: the audit could not run: {error}", file=sys.stderr)
        return EXIT_COULD_NOT_RUN
    print(_summary(outcome))
    return EXIT_RAN


def main(argv: list[str] | None = None) -> int:
    # A script's user cannot act on Dagster's notice that single-run backfills are in beta.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    args = _parser().parse_args(argv)
    if args.command == "audit":
        return _audit(AuditSettings(
            manifest_path=args.manifest, output_dir=args.out, image_root=args.image_root,
            columns=args.columns, split_policy=args.split_policy, max_radius=args.max_radius,
            seed=args.seed, hash_workers=args.workers,
        ), args.verbose)
    from leakage_pipeline.demo.synthetic_dataset import build_demo_dataset

    data_dir = args.dir / "data"
    manifest = data_dir / "manifest.csv"
    if not manifest.exists():
        print(f"building the demo dataset in {data_dir} ...", flush=True)
        build_demo_dataset(data_dir)
    return _audit(AuditSettings(manifest_path=str(manifest), output_dir=str(args.dir / "out")), args.verbose)


if __name__ == "__main__":
    sys.exit(main())
