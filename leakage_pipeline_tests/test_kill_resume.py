"""kill -9 at each stage of a real audit process, then a resume whose output equals a clean run's."""

import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from PIL import Image

from leakage_pipeline_tests.conftest import canonical_json

# Run in a child process: the audit CLI with one function replaced by a SIGKILL of the whole
# process at the chosen stage, everything before it already on disk.
KILLER = """
import functools, os, signal, sys
from PIL import Image

from leakage_pipeline_tests.conftest import canonical_json
import leakage_pipeline.audit.image_hashing as image_hashing
import leakage_pipeline.defs.assets as assets
import leakage_pipeline.defs.training_assets as training_assets
from leakage_pipeline.cli import main

stage, argv = sys.argv[1], sys.argv[2:]

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

if stage == "hash":  # after some checkpointed chunks: small chunks, death at the 40th image
    assets.hash_images = functools.partial(image_hashing.hash_images, chunk_size=8)
    real_hash_image, calls = image_hashing.hash_image, []
    def hash_image_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 40:
            die()
        return real_hash_image(*args, **kwargs)
    image_hashing.hash_image = hash_image_then_die
elif stage == "match":
    assets.cross_split_pairs = die
elif stage == "report":  # half way through writing the montage PNG, the report JSON already written
    def save_half_then_die(image, target, *args, **kwargs):
        with open(target, "wb") as handle:
            handle.write(b"\\x89PNG half")
        die()
    Image.Image.save = save_half_then_die
elif stage == "train":  # both models trained and saved, their evaluation not yet written
    training_assets.evaluate = die
sys.exit(main(argv))
"""

OUTPUTS = ["manifest.parquet", "split_assignments.parquet", "image_hashes/split=train.parquet",
           "image_hashes/split=val.parquet", "image_hashes/split=test.parquet", "near_duplicate_pairs.parquet",
           "split_integrity.json", "report/leakage_audit.json", "report/report.md", "report/flagged_test_images.json",
           "report/leakage_pairs_montage.png"]


def _audit(manifest: Path, out: Path, stage: str | None = None, extra: list[str] = ()) -> subprocess.CompletedProcess:
    argv = ["audit", "--manifest", str(manifest), "--out", str(out), *extra]
    command = [sys.executable, "-c", KILLER, stage, *argv] if stage else [
        sys.executable, "-m", "leakage_pipeline.cli", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _same_outputs(first: Path, second: Path) -> None:
    for name in OUTPUTS:
        a, b = first / name, second / name
        if name.endswith(".parquet"):
            assert pl.read_parquet(a).equals(pl.read_parquet(b)), name
        elif name.endswith(".json"):
            assert canonical_json(json.loads(a.read_text())) == canonical_json(json.loads(b.read_text())), name
        elif name.endswith(".md"):  # its example tables cut ties at a row limit, so only their size is stable
            assert len(a.read_text().splitlines()) == len(b.read_text().splitlines()), name
        else:
            with Image.open(a) as left, Image.open(b) as right:
                assert left.size == right.size, name


@pytest.fixture(scope="module")
def clean_run(small_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    assert _audit(small_demo, out).returncode == 0
    return out


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["hash", "match", "report"])
def test_a_run_killed_at_each_stage_resumes_to_the_clean_result(small_demo, clean_run, tmp_path, stage):
    out = tmp_path / "out"
    killed = _audit(small_demo, out, stage)
    assert killed.returncode == -9, killed.stderr[-2000:]
    if stage == "hash":
        assert list((out / "image_hashes").glob("_in_progress_split=*/chunk-*.parquet"))  # progress was kept
    if stage == "report":
        assert not (out / "report" / "leakage_pairs_montage.png").exists()  # no half-written montage
    resumed = _audit(small_demo, out)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _same_outputs(clean_run, out)
    assert not list((out / "image_hashes").glob("_in_progress_*"))


TRAIN = ["--train", "--epochs", "1", "--image-size", "16"]


@pytest.mark.slow
def test_a_run_killed_after_training_resumes_to_the_clean_evaluation(small_demo, tmp_path):
    clean, out = tmp_path / "clean", tmp_path / "out"
    assert _audit(small_demo, clean, extra=TRAIN).returncode == 0
    killed = _audit(small_demo, out, "train", extra=TRAIN)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "training" / "leak_free" / "model.pt").exists()
    assert not (out / "training" / "evaluation" / "evaluation.json").exists()
    resumed = _audit(small_demo, out, extra=TRAIN)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    evaluation = "training/evaluation/evaluation.json"
    assert (clean / evaluation).read_text() == (out / evaluation).read_text()
