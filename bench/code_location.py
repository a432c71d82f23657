"""What loading the code location costs, and what a run that changes nothing costs beyond its work.

1. Import time and peak memory of ``leakage_pipeline.definitions`` (every process Dagster starts
   for a step, a sensor tick or the code server pays it), for this checkout and, side by side, for
   an earlier commit (default: the last one before the code location was made light).
2. A demo audit run with the multiprocess executor (one process per step) after a first run, so
   nothing changed: its wall time against the sum of its steps' compute time.

    python -m bench.code_location [--before 550fc72] [--repeats 3] [--dir .bench_code_location]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import dagster as dg

ROOT = Path(__file__).resolve().parents[1]
# Loads the definitions in a fresh interpreter; prints seconds, peak RSS in MB, and whether torch and numba loaded.
_PROBE = """
import resource, sys, time
started = time.perf_counter()
import leakage_pipeline.definitions as module
defs = module.defs() if callable(module.defs) else module.defs
defs.resolve_asset_graph()
seconds = time.perf_counter() - started
peak_mb = int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024
print(seconds, peak_mb, 'torch' in sys.modules, 'numba' in sys.modules)
"""


def _load_cost(source: Path, repeats: int) -> tuple[float, float, bool, bool]:
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", _PROBE], cwd=source, env={"PYTHONPATH": str(source), "PATH": ""},
                             capture_output=True, text=True, check=True).stdout.split()
        runs.append((float(out[0]), float(out[1]), out[2] == "True", out[3] == "True"))
    return (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs), runs[0][2], runs[0][3])


def _checkout(commit: str, into: Path) -> Path:
    archive = into / "source.tar"
    subprocess.run(["git", "archive", "-o", str(archive), commit, "leakage_pipeline"], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into


def audit_job_multiprocess():
    """The demo dataset's audit job with one process per step (``reconstructable`` needs a module function)."""
    from leakage_pipeline.defs.dataset import DATASETS_DIR, load_dataset
    from leakage_pipeline.defs.dataset_defs import build_dataset_defs, shared_resources

    dataset = load_dataset(DATASETS_DIR / "demo.yaml")
    defs = dg.Definitions.merge(build_dataset_defs(dataset), dg.Definitions(
        resources=shared_resources(), executor=dg.multiprocess_executor.configured({"max_concurrent": 2})))
    return defs.resolve_job_def(f"{dataset.name}_audit")


def _no_change_run(directory: Path) -> tuple[float, float, int]:
    """(wall seconds, summed step compute seconds, steps) of an audit run after one that did the work."""
    import os

    from leakage_pipeline.defs.automation import partition_range_tags
    from leakage_pipeline.demo.synthetic_dataset import build_demo_dataset

    manifest = directory / "data" / "manifest.csv"
    if not manifest.exists():
        build_demo_dataset(manifest.parent)
    os.environ.update(LEAKAGE_MANIFEST=str(manifest), LEAKAGE_OUTPUT_DIR=str(directory / "out"))
    tags = partition_range_tags(["train", "val", "test"])
    home = directory / "dagster_home"
    shutil.rmtree(home, ignore_errors=True)  # a fresh instance: the first run does the work, the second none
    home.mkdir(parents=True)
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        job = dg.reconstructable(audit_job_multiprocess)
        for attempt in ("first", "no change"):
            started = time.perf_counter()
            result = dg.execute_job(job, instance=instance, tags=tags)
            wall = time.perf_counter() - started
            assert result.success, attempt
        compute = [event.event_specific_data.duration_ms / 1000 for event in result.all_events
                   if event.event_type_value == "STEP_SUCCESS"]
    return wall, sum(compute), len(compute)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="550fc72", help="the commit to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(".bench_code_location"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        before = _load_cost(_checkout(args.before, Path(scratch)), args.repeats)
    after = _load_cost(ROOT, args.repeats)
    print("| code location | import + load (s, median) | peak RSS (MB) | loads torch | loads numba |")
    print("|---|---|---|---|---|")
    for name, (seconds, peak, torch, numba) in ((f"before ({args.before})", before), ("this checkout", after)):
        print(f"| {name} | {seconds:.2f} | {peak:.0f} | {torch} | {numba} |")
    print(f"\nLoading is {before[0] / after[0]:.1f}x faster and takes {before[1] / after[1]:.1f}x less memory.")
    wall, compute, steps = _no_change_run(args.dir.resolve())
    print(f"\nA demo audit with nothing changed, one process per step: {wall:.1f} s wall for {compute:.1f} s of "
          f"compute in {steps} steps ({wall / compute:.1f}x).")


if __name__ == "__main__":
    main()
