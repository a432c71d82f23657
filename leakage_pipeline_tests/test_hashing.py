import io

import imagehash
import numpy as np
import polars as pl
import pytest
from PIL import Image

from leakage_pipeline.audit.image_hashing import (
    STATUS_MISSING,
    STATUS_NOT_AN_IMAGE,
    STATUS_OK,
    STATUS_TOO_LARGE,
    STATUS_UNREADABLE,
    HashLimits,
    hash_image,
    hash_images,
)
from leakage_pipeline.audit.perceptual_hash import HASH_MODE_EXACT, HASH_MODE_FAST, perceptual_hashes
from leakage_pipeline_tests.conftest import encode, write_image


def _varied_images():
    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize((300, 200), Image.BICUBIC)
    noise = Image.fromarray(rng.integers(0, 256, (97, 131, 3), dtype=np.uint8))
    gradient = Image.fromarray(np.tile(np.linspace(0, 255, 640).astype(np.uint8), (480, 1)))
    yield "smooth-rgb", smooth
    yield "noise-odd-size", noise
    yield "gradient-L", gradient
    yield "solid", Image.new("RGB", (120, 80), (200, 30, 90))
    yield "tiny-3x2", noise.resize((3, 2))
    yield "wide-1500x40", smooth.resize((1500, 40))
    yield "tall-40x1500", smooth.resize((40, 1500))  # Pillow 13 resizes this one vertically first
    yield "portrait-700x1400", smooth.resize((700, 1400))
    yield "large-1300x1100", smooth.resize((1300, 1100))
    yield "rgba", smooth.convert("RGBA")
    yield "palette", smooth.convert("P")
    yield "bilevel", gradient.convert("1")
    yield "la", gradient.convert("LA")
    yield "cmyk", smooth.convert("CMYK")
    yield "16-bit", Image.fromarray(np.asarray(gradient, dtype=np.uint16) * 200)
    for quality in (35, 95):
        yield f"jpeg-q{quality}", Image.open(io.BytesIO(encode(smooth, "JPEG", quality=quality)))
    yield "png-roundtrip", Image.open(io.BytesIO(encode(noise, "PNG")))


@pytest.mark.parametrize("name,image", list(_varied_images()), ids=lambda v: v if isinstance(v, str) else "")
def test_hashes_are_bit_identical_to_imagehash(name, image):
    phash, dhash, _ = perceptual_hashes(image)
    assert phash == int(str(imagehash.phash(image)), 16)
    assert dhash == int(str(imagehash.dhash(image)), 16)


def test_every_bad_input_is_a_status_not_a_crash(tmp_path):
    good = write_image(tmp_path / "good.jpg", 1, fmt="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:300])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    big = write_image(tmp_path / "big.png", 2, size=(300, 300))
    rows = {
        path.name: hash_image(str(path), HashLimits(max_pixels=50_000))
        for path in (good, truncated, text, big, tmp_path / "absent.png")
    }
    assert rows["good.jpg"]["status"] == STATUS_OK and rows["good.jpg"]["width"] == 64
    assert rows["truncated.jpg"]["status"] == STATUS_UNREADABLE
    assert rows["notes.png"]["status"] == STATUS_NOT_AN_IMAGE
    assert rows["big.png"]["status"] == STATUS_TOO_LARGE and "90000x" not in rows["big.png"]["message"]
    assert rows["absent.png"]["status"] == STATUS_MISSING
    assert hash_image(str(good), HashLimits(max_bytes=10))["status"] == STATUS_TOO_LARGE
    assert all(rows[n]["sha256"] for n in ("good.jpg", "truncated.jpg", "notes.png"))


def test_rerun_hashes_only_new_or_changed_images(tmp_path):
    paths = [str(write_image(tmp_path / f"{i}.png", i)) for i in range(6)]
    first = hash_images(paths[:4], workers=2)
    assert (first.hashed, first.reused) == (4, 0)
    write_image(tmp_path / "1.png", 99, size=(70, 40))  # changed content and size
    second = hash_images(paths, first.hashes, workers=2)
    assert (second.hashed, second.reused) == (3, 3)
    assert second.hashes["location"].to_list() == paths
    changed = second.hashes.filter(pl.col("location") == paths[1])
    assert changed["width"].item() == 70


def test_killed_run_resumes_from_its_checkpoints(tmp_path):
    paths = [str(write_image(tmp_path / f"{i}.png", i)) for i in range(10)]
    saved = []

    def checkpoint_then_die(chunk):
        saved.append(chunk)
        if len(saved) == 2:
            raise KeyboardInterrupt  # the run is killed after two chunks are on disk

    with pytest.raises(KeyboardInterrupt):
        hash_images(paths, chunk_size=3, checkpoint=checkpoint_then_die)
    resumed = hash_images(paths, pl.concat(saved), chunk_size=3)
    assert (resumed.hashed, resumed.reused) == (4, 6)
    assert resumed.hashes.equals(hash_images(paths).hashes)


def test_fast_mode_hashes_are_close_and_never_mix_with_exact_ones_in_the_cache(tmp_path):
    rng = np.random.default_rng(4)
    paths = []
    for i in range(6):
        smooth = Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).resize((900, 700), Image.BICUBIC)
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(encode(smooth, "JPEG", quality=90))
    locations = [str(p) for p in paths]
    exact = hash_images(locations)
    fast = hash_images(locations, exact.hashes, mode=HASH_MODE_FAST)
    assert fast.reused == 0 and fast.hashed == 6  # exact hashes are not reused for fast mode
    assert set(fast.hashes["hash_mode"]) == {HASH_MODE_FAST}
    differing = [(a ^ b).bit_count() for a, b in zip(exact.hashes["phash"], fast.hashes["phash"], strict=True)]
    assert max(differing) <= 8  # a smaller decode moves a few bits, not the whole hash
    again = hash_images(locations, pl.concat([exact.hashes, fast.hashes]), mode=HASH_MODE_EXACT)
    assert again.reused == 6 and again.hashes.equals(exact.hashes)
    with pytest.raises(ValueError, match="unknown hash mode"):
        hash_images(locations, mode="approximate")
    assert hash_image(locations[0], mode=HASH_MODE_EXACT)["phash"] == exact.hashes["phash"][0]
