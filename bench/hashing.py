"""Image hashing: ours vs imagehash (phash + dhash + sha256) on the same photographic JPEGs, one core,
and the incremental figure (re-run after adding 1% new images, as a share of the cold run).

Ours runs in exact mode (bit-identical to imagehash, checked here on every image) and in fast
mode (JPEG draft decoding), whose hashes are compared with the exact ones: how many images get a
different hash, and by how many bits. The decode floor, Pillow's full decode plus the grayscale
conversion that any bit-exact hash needs, is timed beside them.

    python -m bench.hashing [--images 400] [--dir /tmp/leakage-bench-images]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image

from bench.timing import timed
from leakage_pipeline.audit.image_hashing import hash_image, hash_images
from leakage_pipeline.audit.perceptual_hash import HASH_MODE_FAST
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


def decode_floor(path: str) -> None:
    with Image.open(path) as image:
        image.convert("L")


def throughput(function, paths: list[str], repeats: int = 3) -> float:
    """Images per second over all of ``paths``, the median of ``repeats`` passes."""
    seconds, _ = timed(lambda: [function(path) for path in paths], repeats)
    return len(paths) / seconds


def bits_apart(exact: list[dict], fast: list[dict], name: str) -> tuple[float, float, int]:
    """Share of images whose ``name`` hash differs between modes, mean and max differing bits."""
    distances = np.array([(a[name] ^ b[name]).bit_count() for a, b in zip(exact, fast, strict=True)])
    return float((distances > 0).mean()), float(distances.mean()), int(distances.max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--dir", type=Path, default=None, help="keep the generated images here")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="leakage-bench-"))
    paths = build_images(folder, args.images)
    exact_rows = [hash_image(path) for path in paths]  # also warms the page cache and compiles
    for path, row in zip(paths, exact_rows, strict=True):
        _, phash, dhash = imagehash_reference(path)
        if (row["phash"], row["dhash"]) != (int(str(phash), 16), int(str(dhash), 16)):
            raise SystemExit(f"exact mode differs from imagehash on {path}")
    fast_rows = [hash_image(path, mode=HASH_MODE_FAST) for path in paths]

    reference = throughput(imagehash_reference, paths)
    floor = throughput(decode_floor, paths)
    exact = throughput(hash_image, paths)
    fast = throughput(lambda path: hash_image(path, mode=HASH_MODE_FAST), paths)
    print(f"{len(paths)} JPEGs of 512-1024 px; medians of 3 passes; exact mode equals imagehash on every image\n")
    print("| method (one core) | images/s | vs imagehash |\n|---|---|---|")
    print(f"| imagehash phash+dhash+sha256 | {reference:.0f} | 1.00x |")
    print(f"| ours, exact | {exact:.0f} | {exact / reference:.2f}x |")
    print(f"| ours, fast (JPEG draft decode) | {fast:.0f} | {fast / reference:.2f}x |")
    print(f"| decode floor (Pillow decode + grayscale, no hashing) | {floor:.0f} | {floor / reference:.2f}x |")
    print(f"\nexact mode runs at {exact / floor:.0%} of the decode floor's speed")
    for name in ("phash", "dhash"):
        share, mean, worst = bits_apart(exact_rows, fast_rows, name)
        print(f"fast vs exact {name}: {share:.0%} of images differ; {mean:.2f} bits on average, at most {worst}")

    cold_seconds, cold = timed(lambda: hash_images(paths, workers=2), 3)
    extra = build_images(folder / "new", max(1, len(paths) // 100), seed=1)
    warm_seconds, warm = timed(lambda: hash_images(paths + extra, cold.hashes, workers=2), 3)
    print(f"\ncold run, 2 threads: {len(paths)} images in {cold_seconds:.2f} s ({len(paths) / cold_seconds:.0f}/s)")
    print(f"re-run after adding {len(extra)} images: hashed {warm.hashed}, reused {warm.reused}, "
          f"{warm_seconds:.3f} s = {warm_seconds / cold_seconds:.1%} of the cold run (medians of 3 each)")
    if args.dir is None:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
