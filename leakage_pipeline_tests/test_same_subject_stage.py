"""The same-subject stage end to end on small synthetic photographs, its cache, and the report it feeds."""

import subprocess
import sys
from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from leakage_pipeline.audit.image_hashing import hash_images
from leakage_pipeline.demo.synthetic_dataset import _encode, _lesion_surface, _photograph
from leakage_pipeline.same_subject.geometric_verification import count_inliers, keypoints_of_bytes
from leakage_pipeline.same_subject.matcher import RAN, SKIPPED, MatcherSettings, run_same_subject

SIDE = 96


def _settings() -> MatcherSettings:
    base = MatcherSettings()
    return replace(base, min_training_images=20, min_repeated_patients=5, min_calibration_queries=200,
                   search=replace(base.search, top_k=40),  # every reference: the tiny model here only ranks
                   embedding=replace(base.embedding, image_size=32, epochs=2, batch_patients=16),
                   calibration=replace(base.calibration, min_true_pairs=5))


def _write(path, surface, rng) -> None:
    path.write_bytes(_encode(_photograph(surface, rng, SIDE), "JPEG", quality=90))


@pytest.fixture(scope="module")
def photographs(tmp_path_factory):
    """12 subjects photographed 3 times in train; re-shots of 8 of them in test (4 under a new id), and 4
    unrelated subjects in test."""
    root = tmp_path_factory.mktemp("same_subject")
    rng = np.random.default_rng(0)
    rows = []
    surfaces = [_lesion_surface(rng, 2 * SIDE) for _ in range(16)]
    for number, surface in enumerate(surfaces[:12]):
        for shot in range(3):
            _write(root / f"S{number}_{shot}.jpg", surface, rng)
            rows.append((f"S{number}_{shot}.jpg", f"S{number}", "train"))
    for number in range(8):
        filed_as = f"S{number}" if number < 4 else f"NEW{number}"
        _write(root / f"{filed_as}_reshot.jpg", surfaces[number], rng)
        rows.append((f"{filed_as}_reshot.jpg", filed_as, "test"))
    for number, surface in enumerate(surfaces[12:]):
        _write(root / f"U{number}.jpg", surface, rng)
        rows.append((f"U{number}.jpg", f"U{number}", "test"))
    return root, rows


def _images(root, rows) -> pl.DataFrame:
    manifest = pl.DataFrame(rows, schema=["image_uri", "patient_id", "split"], orient="row").with_columns(
        location=pl.lit(str(root) + "/") + pl.col("image_uri"), label=pl.lit("nevus"))
    hashes = hash_images(manifest["location"].to_list()).hashes
    return manifest.join(hashes, on="location", how="left", maintain_order="left")


def test_mirrored_photograph_still_matches_by_permuted_descriptors(photographs):
    root, _ = photographs
    from PIL import Image

    with Image.open(root / "S0_0.jpg") as image:
        mirrored = _encode(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG")
    original = keypoints_of_bytes((root / "S0_0.jpg").read_bytes())
    assert count_inliers(original, keypoints_of_bytes(mirrored)) > 0.5 * len(original.points)
    assert count_inliers(original, keypoints_of_bytes((root / "U0.jpg").read_bytes())) < 8


def test_stage_finds_reshots_under_any_id_and_reembeds_only_new_images(photographs, tmp_path):
    root, rows = photographs
    run = run_same_subject(_images(root, rows), ["train", "val", "test"], tmp_path / "work", _settings(),
                           log=lambda _: None)
    assert run.summary["status"] == RAN and run.calibration.threshold is not None
    assert run.calibration.precision >= 0.95
    accepted = run.pairs.filter(pl.col("accepted"))
    found = {(q.split("/")[-1], r) for q, r in accepted.select("query_location", "reference_patient_id").iter_rows()}
    truth = {f"{f'S{n}' if n < 4 else f'NEW{n}'}_reshot.jpg": f"S{n}" for n in range(8)}
    assert all(truth.get(query) == reference for query, reference in found)  # every accepted pair is right
    assert len({query for query, _ in found}) >= 6  # and most re-shots, under either id, are found
    assert not accepted.filter(pl.col("query_patient_id").str.starts_with("U")).height  # unrelated subjects
    assert set(run.pairs.columns) >= {"query_location", "reference_location", "query_patient_id", "reference_label",
                                      "query_split", "cosine", "inliers", "accepted"}

    # A second run with one new test image: the model is kept, only that image is embedded and described.
    rng = np.random.default_rng(1)
    _write(root / "U9.jpg", _lesion_surface(rng, 2 * SIDE), rng)
    again = run_same_subject(_images(root, [*rows, ("U9.jpg", "U9", "test")]), ["train", "val", "test"],
                             tmp_path / "work", _settings(), log=lambda _: None)
    assert again.summary["model"]["trained_now"] is False
    assert again.summary["embedded"] == 1 and again.summary["embeddings_reused"] == len(rows)
    assert again.summary["keypoints_extracted"] == 1 and again.summary["keypoints_reused"] == len(rows)
    # References are train and val only, so a new test image changes no other image's candidates.
    assert again.pairs.filter(pl.col("query_patient_id") != "U9").equals(run.pairs)


def test_stage_skips_and_says_why(photographs, tmp_path):
    root, rows = photographs
    images = _images(root, rows)
    run = run_same_subject(images, ["train", "val", "test"], tmp_path, MatcherSettings(), log=lambda _: None)
    assert run.summary["status"] == SKIPPED and "under the 300 needed" in run.summary["reason"]
    off = run_same_subject(images, ["train", "val", "test"], tmp_path, replace(_settings(), enabled=False))
    assert off.summary == {"status": SKIPPED, "reason": "turned off in the settings"} and off.pairs.is_empty()


def test_code_location_loads_without_faiss_or_opencv():
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, leakage_pipeline.definitions, leakage_pipeline.defs.same_subject_assets;"
                               "print(sorted(m for m in ('faiss', 'cv2') if m in sys.modules))"],
        capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]"


def test_a_cache_of_another_layout_is_replaced_not_joined(tmp_path):
    from leakage_pipeline.same_subject import feature_cache

    key = {"location": ["/a.png"], "size_bytes": [1], "version": ["v1"], "hash_mode": ["exact"], "status": ["ok"]}
    path = tmp_path / "embeddings.parquet"
    feature_cache.store(pl.DataFrame(), pl.DataFrame({**key, "tag": ["old"], "embedding": [[0.5]]}), path)
    reused, todo = feature_cache.split_by_cache(pl.DataFrame(key), feature_cache.read_cache(path), "new")
    assert reused.is_empty() and todo.height == 1
    stored = feature_cache.store(reused, todo.with_columns(tag=pl.lit("new"), embedding=pl.lit([0.5]),
                                                           colour=pl.lit([1.0])), path)
    assert stored["tag"].to_list() == ["new"] and "colour" in stored.columns
