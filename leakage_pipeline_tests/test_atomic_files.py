"""Finding 10: every writer goes through one atomic helper, so a kill never leaves a half file."""

import os

import polars as pl
import pytest
import torch
from PIL import Image

from leakage_pipeline.audit.matching import PAIR_SCHEMA
from leakage_pipeline.audit.montage import write_montage
from leakage_pipeline.storage.files import replace_atomically, unique_partial_name
from leakage_pipeline.training.confusion_image import write_confusion_matrix
from leakage_pipeline.training.model_files import MODEL_FILE, save_model
from leakage_pipeline.training.models import build_model
from leakage_pipeline.training.preprocessing import Preprocessing
from leakage_pipeline.training.settings import SMALL_CNN


class Killed(BaseException):
    """Stands in for SIGKILL in the middle of a write."""


def _save_dies_half_way(image_or_object, target, *args, **kwargs):
    """``Image.save(self, target)`` or ``torch.save(obj, target)`` that stops after some bytes."""
    with open(target, "wb") as handle:
        handle.write(b"half a file")
    raise Killed


def test_partial_names_are_unique_per_call_and_carry_the_pid(tmp_path):
    first, second = unique_partial_name(tmp_path / "a.png"), unique_partial_name(tmp_path / "a.png")
    assert first != second and str(os.getpid()) in first.name and first.suffix == ".png"


@pytest.mark.parametrize("writer", ["montage", "confusion", "model"])
def test_a_write_killed_half_way_leaves_the_previous_file_whole(writer, tmp_path, monkeypatch):
    if writer == "montage":
        target = tmp_path / "report" / "montage.png"

        def write():
            write_montage(pl.DataFrame(schema=PAIR_SCHEMA), target)
        patch = (Image.Image, "save")
    elif writer == "confusion":
        target = tmp_path / "confusion.png"

        def write():
            write_confusion_matrix([[1, 0], [0, 1]], ["a", "b"], "t", target)
        patch = (Image.Image, "save")
    else:
        target = tmp_path / "model" / MODEL_FILE

        def write():
            save_model(target.parent, build_model(SMALL_CNN, 3, 2), SMALL_CNN, ["a", "b"],
                       Preprocessing.for_shape(16, 3))
        patch = (torch, "save")
    write()
    before = target.read_bytes()
    monkeypatch.setattr(*patch, _save_dies_half_way)
    with pytest.raises(Killed):
        write()
    assert target.read_bytes() == before
    assert [p.name for p in target.parent.iterdir() if "partial" in p.name] == []


def test_replace_atomically_cleans_up_after_a_failed_writer(tmp_path):
    def fails(partial):
        partial.write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError):
        replace_atomically(tmp_path / "out.json", fails)
    assert list(tmp_path.iterdir()) == []
