"""The hostile image pass kept as tests: every kind of bad file is a status, the pixel cap is checked
before decoding (finding 8), and a rewrite the old cache key missed is caught (finding 5)."""

import os
import resource

import polars as pl
from PIL import Image

from leakage_pipeline.audit.image_hashing import (
    STATUS_NOT_AN_IMAGE,
    STATUS_OK,
    STATUS_TOO_LARGE,
    STATUS_UNREADABLE,
    HashLimits,
    hash_image,
    hash_images,
)
from leakage_pipeline.audit.pixel_limit import MAX_PIXELS
from leakage_pipeline_tests.conftest import encode, png_bomb, write_image


def _corpus(directory) -> dict[str, tuple[bytes, str]]:
    good = Image.radial_gradient("L").resize((96, 64)).convert("RGB")
    jpeg = encode(good, "JPEG")
    gif_frames = [good.convert("P"), good.rotate(90).convert("P")]
    gif = directory / "anim.gif"
    gif_frames[0].save(gif, save_all=True, append_images=gif_frames[1:])
    return {
        "corrupt.jpg": (jpeg[:200] + bytes(range(256)) * 20, STATUS_UNREADABLE),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], STATUS_UNREADABLE),
        "zero-byte.png": (b"", STATUS_NOT_AN_IMAGE),
        "vector.svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', STATUS_NOT_AN_IMAGE),
        "bomb.png": (png_bomb(13_000, 13_000), STATUS_TOO_LARGE),
        "cmyk.jpg": (encode(good.convert("CMYK"), "JPEG"), STATUS_OK),
        "16-bit.png": (encode(good.convert("L").convert("I;16"), "PNG"), STATUS_OK),
        "alpha.png": (encode(good.convert("RGBA"), "PNG"), STATUS_OK),
        "anim.gif": (gif.read_bytes(), STATUS_OK),
        "multi.tiff": (encode(good, "TIFF", compression="tiff_lzw"), STATUS_OK),
        "html.png": (b"<html><body>404 not found</body></html>", STATUS_NOT_AN_IMAGE),
    }


def test_every_file_of_the_bad_image_corpus_gets_a_status(tmp_path):
    corpus = _corpus(tmp_path)
    for name, (data, _) in corpus.items():
        (tmp_path / name).write_bytes(data)
    run = hash_images([str(tmp_path / name) for name in corpus], workers=2)
    got = dict(zip([os.path.basename(p) for p in run.hashes["location"]], run.hashes["status"], strict=True))
    assert got == {name: expected for name, (_, expected) in corpus.items()}
    assert run.hashes.filter(pl.col("status") != STATUS_OK)["message"].null_count() == 0


def test_the_pixel_cap_is_at_most_pillows_own():
    assert HashLimits().max_pixels == MAX_PIXELS <= Image.MAX_IMAGE_PIXELS


def test_a_20_kb_png_of_169_megapixels_is_too_large_without_decoding(tmp_path):
    """The hostile pass: this file was decoded whole, 1.2-1.35 GB per image, two at a time."""
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(13_000, 13_000))
    assert bomb.stat().st_size < 200_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row = hash_image(str(bomb))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert row["status"] == STATUS_TOO_LARGE and "13000x13000" in row["message"] and row["sha256"]
    assert grown_mb < 100  # decoding would have taken 169 MB for the grayscale pixels alone


def test_an_in_place_rewrite_that_keeps_size_and_mtime_is_rehashed(tmp_path):
    """The hostile pass: the cache key was size + mtime, so this rewrite kept the old sha256."""
    path = write_image(tmp_path / "a.png", 1)
    other = write_image(tmp_path / "b.png", 2)
    first = hash_images([str(path)])
    stat = path.stat()
    replacement = other.read_bytes()[: stat.st_size].ljust(stat.st_size, b"\0")
    with path.open("r+b") as handle:  # same inode, same size
        handle.write(replacement)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # and the old mtime back
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)
    second = hash_images([str(path)], first.hashes)
    assert (second.hashed, second.reused) == (1, 0)
    assert second.hashes["sha256"].item() != first.hashes["sha256"].item()


def test_verify_rehashes_everything_and_reports_stale_cache_rows(tmp_path):
    paths = [str(write_image(tmp_path / f"{i}.png", i)) for i in range(3)]
    first = hash_images(paths)
    clean = hash_images(paths, first.hashes, verify=True)
    assert (clean.hashed, clean.reused, clean.stale.height) == (3, 0, 0)
    assert clean.hashes.equals(first.hashes)
    # A cache row that lies about its image (as a key the rewrite fooled would leave behind).
    forged = first.hashes.with_columns(
        sha256=pl.when(pl.col("location") == paths[1]).then(pl.lit("0" * 64)).otherwise(pl.col("sha256")))
    assert hash_images(paths, forged).hashes["sha256"][1] == "0" * 64  # a normal run trusts the cache
    verified = hash_images(paths, forged, verify=True)
    assert verified.stale.select("location", "cached_sha256").rows() == [(paths[1], "0" * 64)]
    assert verified.hashes.equals(first.hashes)
