"""Hashing's peak memory per worker on large images, and on a decompression bomb.

Each case runs in a fresh child process: it imports everything and hashes one small image (so
the numba kernels are compiled), notes its RSS as the baseline and resets the kernel's peak-RSS
mark, then hashes two large images per worker with ``workers`` threads and reads the peak (Linux
``/proc``). (peak - baseline) / workers is what
one worker costs. The cases are an RGB JPEG and a grayscale PNG just under the pixel cap
(Pillow's own bomb threshold, 89.5 Mpx), and a 169 Mpx PNG of a few KB that the cap must refuse
from its header alone (it took 1.2-1.35 GB per image when it was decoded).

    python -m bench.hashing_memory [--workers 1 2] [--dir /tmp/leakage-bench-memory]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from leakage_pipeline.audit.pixel_limit import MAX_PIXELS
from leakage_pipeline_tests.conftest import png_bomb

SIDE_UNDER_CAP = int(MAX_PIXELS**0.5) - 8  # a square image just under the cap
CASES = {
    "rgb-jpeg-under-cap": ("jpg", "RGB"),
    "gray-png-under-cap": ("png", "L"),
    "png-bomb-169mpx": ("png", "bomb"),
}


def _build(folder: Path, case: str, copies: int) -> list[str]:
    suffix, mode = CASES[case]
    paths = [folder / f"{case}-{i}.{suffix}" for i in range(copies)]
    if not paths[0].exists():
        if mode == "bomb":
            data = png_bomb(13_000, 13_000)
        else:
            image = Image.radial_gradient("L").resize((SIDE_UNDER_CAP, SIDE_UNDER_CAP)).convert(mode)
            image.save(paths[0], quality=90) if suffix == "jpg" else image.save(paths[0], compress_level=1)
            data = paths[0].read_bytes()
        for path in paths:  # each copy is hashed: there is no cache in this run
            path.write_bytes(data)
    return [str(p) for p in paths]


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since the last reset) of this process, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(locations: list[str], workers: int, warmup: str) -> dict:
    from leakage_pipeline.audit.image_hashing import hash_image, hash_images

    hash_image(warmup)
    baseline = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak starts again from here, not from the imports
    run = hash_images(locations, workers=workers)
    peak = _status_mb("VmHWM")
    return {"baseline_mb": baseline, "peak_mb": peak, "statuses": sorted(set(run.hashes["status"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        request = json.loads(args.child)
        print(json.dumps(_child(request["locations"], request["workers"], request["warmup"])))
        return
    folder = args.dir or Path(tempfile.mkdtemp(prefix="leakage-bench-memory-"))
    folder.mkdir(parents=True, exist_ok=True)
    warmup = folder / "warmup.png"
    Image.radial_gradient("L").save(warmup)
    print(f"pixel cap {MAX_PIXELS:,} (Pillow's MAX_IMAGE_PIXELS {Image.MAX_IMAGE_PIXELS:,}); "
          f"images {SIDE_UNDER_CAP}x{SIDE_UNDER_CAP} under it; two images per worker, each case in a fresh process")
    print(f"{'case':<22} {'workers':>7} {'baseline MB':>12} {'peak MB':>9} {'per worker MB':>14}  statuses")
    for case in CASES:
        for workers in args.workers:
            locations = _build(folder, case, 2 * max(args.workers))[: 2 * workers]
            request = json.dumps({"locations": locations, "workers": workers, "warmup": str(warmup)})
            output = subprocess.run([sys.executable, "-m", "bench.hashing_memory", "--child", request],
                                    capture_output=True, text=True, check=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            per_worker = (result["peak_mb"] - result["baseline_mb"]) / workers
            print(f"{case:<22} {workers:>7} {result['baseline_mb']:>12.0f} {result['peak_mb']:>9.0f} "
                  f"{per_worker:>14.0f}  {', '.join(result['statuses'])}")


if __name__ == "__main__":
    main()
