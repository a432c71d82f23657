"""Image hashing: ours vs imagehash (phash + dhash + sha256) on the same photographic JPEGs, one core,
and the incremental figure (re-run after adding 1% new images, as a share of the cold run).

    python -m bench.hashing [--images 400] [--dir /tmp/leakage-bench-images]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from leakage_pipeline.audit.image_hashing import hash_image, hash_images
from leakage_pipeline.demo.synthetic_dataset import _make_patient, _skin, _xray


def build_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """Realistic 512-1024 px JPEGs (skin photographs and radiographs with texture), not noise."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        patient = _make_patient(i, rng, scale=3.0)
        image = (_skin if patient.kind == "skin" else _xray)(patient, rng)
        path = folder / f"{i:05d}.jpg"
        image.save(path, quality=90)
        paths.append(str(path))
    return paths


def imagehash_reference(path: str) -> tuple:
    data = Path(path).read_bytes()
    with Image.open(path) as image:
        return hashlib.sha256(data).hexdigest(), imagehash.phash(image), imagehash.dhash(image)


def throughput(function, paths: list[str]) -> float:
    start = time.perf_counter()
    for path in paths:
        function(path)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--dir", type=Path, default=None, help="keep the generated images here")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="leakage-bench-"))
    paths = build_images(folder, args.images)
    for path in paths[:20]:  # warm the page cache and imports for both
        imagehash_reference(path)
        hash_image(path)
    reference = throughput(imagehash_reference, paths)
    ours = throughput(hash_image, paths)
    print("| method (one core) | images/s | ratio |\n|---|---|---|")
    print(f"| imagehash phash+dhash+sha256 | {reference:.0f} | 1.0 |")
    print(f"| ours, exact | {ours:.0f} | {ours / reference:.2f}x |")

    cold_start = time.perf_counter()
    cold = hash_images(paths, workers=2)
    cold_seconds = time.perf_counter() - cold_start
    extra = build_images(folder / "new", max(1, len(paths) // 100), seed=1)
    warm_start = time.perf_counter()
    warm = hash_images(paths + extra, cold.hashes, workers=2)
    warm_seconds = time.perf_counter() - warm_start
    print(f"\ncold run, 2 threads: {len(paths)} images in {cold_seconds:.2f} s ({len(paths) / cold_seconds:.0f}/s)")
    print(f"re-run after adding {len(extra)} images: hashed {warm.hashed}, reused {warm.reused}, "
          f"{warm_seconds:.3f} s = {warm_seconds / cold_seconds:.1%} of the cold run")
    if args.dir is None:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
