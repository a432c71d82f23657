"""An audit with everything in a bucket against the same audit on local disk, side by side in one run.

Builds a multi-split dataset of small PNGs (a few exact copies planted across splits), starts
gcp-storage-emulator on 127.0.0.1 in a process of its own (enforcing generation preconditions, as
the tests run it), uploads the images and manifest, and audits the data twice, each in a fresh
process with the CLI's flags (``--split-policy keep``): once from local disk into a local output
folder, once with manifest, images and outputs all under ``gs://``. Prints both wall times, their
ratio, each step's time, the CPU seconds of the audit process and of the emulator (the emulator is
a single-threaded Python server: its time is not the client's), images/s for hashing from GCS and
from disk, and whether both reports say the same. The emulator is stopped by its PID at the end;
every wait is bounded, so the bench stops by itself.

    python -m bench.gcs [--images 5000] [--dir .bench_gcs] [--same-subject] [--timeout 900]
    python -m bench.gcs --data FOLDER --same-subject   # a real set: FOLDER/manifest.csv, image paths relative to it
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import polars as pl
from PIL import Image

SPLITS = ("train", "val", "test")
IMAGES_PER_PATIENT = 4
COPY_SHARE = 0.02  # test images that are byte copies of a training image
BUCKET = "bench"
UPLOAD_THREADS = 8


def build_dataset(folder: Path, images: int, seed: int = 0) -> Path:
    """``images`` 48 x 48 grayscale PNGs, four per patient, patients split 60/20/20, with
    :data:`COPY_SHARE` of the test images planted as exact copies of training images."""
    manifest = folder / "manifest.csv"
    if manifest.exists() and pl.read_csv(manifest).height == images:
        return manifest
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(images):
        patient = index // IMAGES_PER_PATIENT
        split = SPLITS[0] if patient % 5 < 3 else SPLITS[1 + patient % 5 - 3]
        coarse = rng.integers(0, 256, (6, 6), dtype=np.uint8)
        noise = rng.integers(0, 24, (48, 48), dtype=np.uint8)
        pixels = np.asarray(Image.fromarray(coarse).resize((48, 48), Image.Resampling.BICUBIC)) // 2 + noise
        name = f"images/p{patient:05d}_{index % IMAGES_PER_PATIENT}.png"
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / name)
        rows.append({"image_uri": name, "patient_id": f"p{patient:05d}", "label": "ab"[patient % 2], "split": split})
    test = [row for row in rows if row["split"] == "test"]
    train = [row for row in rows if row["split"] == "train"]
    for row, source in zip(test[:: int(1 / COPY_SHARE)], train[::7], strict=False):
        shutil.copyfile(folder / source["image_uri"], folder / row["image_uri"])
    pl.DataFrame(rows).write_csv(manifest)
    return manifest


def start_emulator(port: int) -> subprocess.Popen:
    emulator = subprocess.Popen([sys.executable, "-m", "leakage_pipeline_tests.gcs_emulator", "--port", str(port),
                                 "--default-bucket", BUCKET], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from leakage_pipeline.storage.locations import gcs_client

    deadline = time.monotonic() + 30
    while True:
        try:
            gcs_client().bucket(BUCKET).reload(timeout=2)
            return emulator
        except Exception:
            if time.monotonic() > deadline or emulator.poll() is not None:
                emulator.kill()
                raise RuntimeError(f"the emulator did not answer on 127.0.0.1:{port} within 30 s") from None
            time.sleep(0.2)


def upload(folder: Path, prefix: str) -> None:
    from leakage_pipeline.storage.locations import gcs_client

    bucket = gcs_client().bucket(BUCKET)
    files = [path for path in folder.rglob("*") if path.is_file()]
    with ThreadPoolExecutor(UPLOAD_THREADS) as pool:
        list(pool.map(lambda path: bucket.blob(f"{prefix}/{path.relative_to(folder).as_posix()}")
                      .upload_from_filename(str(path), timeout=60), files))


def emulator_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_audit(manifest: str, output: str, same_subject: bool) -> dict:
    """The audit as the CLI runs it, in this process: wall seconds, each step's seconds, the report's figures."""
    from leakage_pipeline.defs.settings import AuditSettings
    from leakage_pipeline.runner import run_audit
    from leakage_pipeline.storage.files import read_json

    settings = AuditSettings(manifest_path=manifest, output_dir=output, split_policy="keep", same_subject=same_subject)
    started = time.perf_counter()
    outcome = run_audit(settings, log_level="CRITICAL")
    wall = time.perf_counter() - started
    steps: dict[str, float] = {}
    for result in outcome.results:
        for event in result.all_events:
            if event.is_step_success:
                step = event.step_key.removeprefix(f"{outcome.dataset.name}__")
                steps[step] = steps.get(step, 0.0) + event.event_specific_data.duration_ms / 1000
    report = read_json(outcome.files.report_json)
    return {"wall": wall, "steps": steps, "counts": report["counts"], "verdict": report["verdict"],
            "coverage": report["coverage"]}


def timed_audit(manifest: str, output: str, same_subject: bool, env: dict, timeout: float) -> dict:
    """:func:`one_audit` in a fresh process, with that process's CPU seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench.gcs", "--one-audit", manifest, output,
                           *(["--same-subject"] if same_subject else [])],
                          env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"the audit of {manifest} failed:\n{done.stderr[-3000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return json.loads(done.stdout.splitlines()[-1]) | {
        "process_wall": time.perf_counter() - started,
        "cpu": after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime}


def hashing_rate(locations: list[str], workers: int) -> float:
    """Images per second that :func:`hash_images` hashes, nothing cached."""
    from leakage_pipeline.audit.image_hashing import hash_images

    started = time.perf_counter()
    run = hash_images(locations, workers=workers)
    assert run.hashes["status"].eq("ok").all(), "every bench image must hash"
    return len(locations) / (time.perf_counter() - started)


def _print_steps(local: dict, gcs: dict) -> None:
    print(f"{'step':<42} {'local s':>8} {'gs:// s':>8} {'ratio':>6}")
    for step in sorted(set(local["steps"]) | set(gcs["steps"]), key=lambda s: -gcs["steps"].get(s, 0)):
        here, there = local["steps"].get(step, 0.0), gcs["steps"].get(step, 0.0)
        print(f"{step:<42} {here:8.2f} {there:8.2f} {there / here if here else float('nan'):6.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--dir", type=Path, default=Path(".bench_gcs"))
    parser.add_argument("--same-subject", action="store_true", help="run the same-subject stage too (slow)")
    parser.add_argument("--timeout", type=float, default=900, help="seconds each audit may take")
    parser.add_argument("--data", type=Path, help="audit this folder (manifest.csv, image paths relative to it) "
                        "instead of building synthetic images")
    parser.add_argument("--one-audit", nargs=2, metavar=("MANIFEST", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_audit:
        print(json.dumps(one_audit(*args.one_audit, args.same_subject)))
        return

    from leakage_pipeline.storage.locations import use_gcs_client
    from leakage_pipeline_tests.conftest import free_port

    data = args.data or args.dir / f"data_{args.images}"
    manifest = data / "manifest.csv" if args.data else build_dataset(data, args.images)
    images = pl.read_csv(manifest).height
    for output in ("out_local", "out_warmup"):
        shutil.rmtree(args.dir / output, ignore_errors=True)
    port = free_port()
    gcs_env = {**os.environ, "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
               "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    os.environ.update(gcs_env)
    use_gcs_client(None)
    emulator = start_emulator(port)
    try:
        started = time.perf_counter()
        upload(data, "data")
        print(f"{images} images on local disk and uploaded to the emulator (pid {emulator.pid}) "
              f"in {time.perf_counter() - started:.1f} s")
        # A small audit first, so neither timed run pays numba's first compilation alone.
        warm = build_dataset(args.dir / "data_warmup", 40)
        timed_audit(str(warm), str(args.dir / "out_warmup"), False, dict(os.environ), args.timeout)
        local = timed_audit(str(manifest.resolve()), str((args.dir / "out_local").resolve()), args.same_subject,
                            dict(os.environ), args.timeout)
        emulator_before = emulator_cpu_seconds(emulator.pid)
        gcs = timed_audit(f"gs://{BUCKET}/data/manifest.csv", f"gs://{BUCKET}/out", args.same_subject, gcs_env,
                          args.timeout)
        emulator_cpu = emulator_cpu_seconds(emulator.pid) - emulator_before
        locations = pl.read_csv(manifest)["image_uri"].to_list()
        local_rate = hashing_rate([str((data / uri).resolve()) for uri in locations], workers=2)
        emulator_before = emulator_cpu_seconds(emulator.pid)
        gcs_rate = hashing_rate([f"gs://{BUCKET}/data/{uri}" for uri in locations], workers=2)
        hashing_emulator_cpu = emulator_cpu_seconds(emulator.pid) - emulator_before
    finally:
        emulator.terminate()
        try:
            emulator.wait(timeout=10)
        except subprocess.TimeoutExpired:
            emulator.kill()

    same = all(local[key] == gcs[key] for key in ("counts", "verdict", "coverage"))
    print(f"\naudit of {images} images in {data}, same-subject stage {'on' if args.same_subject else 'off'}, "
          f"{os.cpu_count()} CPUs")
    _print_steps(local, gcs)
    print(f"\nlocal disk: {local['wall']:.1f} s wall ({local['cpu']:.1f} CPU s in the audit process)")
    print(f"all in gs://: {gcs['wall']:.1f} s wall ({gcs['cpu']:.1f} CPU s in the audit process, "
          f"{emulator_cpu:.1f} CPU s in the emulator)")
    print(f"ratio gs:// / local: {gcs['wall'] / local['wall']:.2f}x")
    print(f"hashing alone, 2 workers: {gcs_rate:.0f} images/s from gs:// ({hashing_emulator_cpu:.1f} emulator CPU s), "
          f"{local_rate:.0f} images/s from disk")
    print(f"reports' counts, coverage and verdict identical: {same}")
    if not same:
        raise SystemExit("the gs:// audit's figures differ from the local audit's")


if __name__ == "__main__":
    main()
