"""Finding 6: ``predict`` and ``serve`` exit 0 or 2 with a message, whatever the images and model files."""

import json
import shutil

import pytest
import torch

from leakage_pipeline.cli import EXIT_COULD_NOT_RUN, main
from leakage_pipeline.training.model_files import MODEL_FILE, save_model
from leakage_pipeline.training.models import build_model
from leakage_pipeline.training.preprocessing import Preprocessing
from leakage_pipeline.training.settings import SMALL_CNN
from leakage_pipeline_tests.conftest import png_bomb, write_image

CLASSES = ["benign", "malignant"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    save_model(directory, build_model(SMALL_CNN, 3, len(CLASSES)).eval(), SMALL_CNN, CLASSES,
               Preprocessing.for_shape(16, 3))
    return directory


def test_predict_on_a_decompression_bomb_reports_it_and_predicts_the_others(model_dir, tmp_path, capsys):
    good = write_image(tmp_path / "good.png", 1)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bomb(13_000, 13_000))
    assert main(["predict", str(good), str(bomb), str(tmp_path / "absent.png"), "--model", str(model_dir),
                 "--device", "cpu"]) == EXIT_COULD_NOT_RUN
    results = json.loads(capsys.readouterr().out)
    assert results[0]["predicted"] in CLASSES
    assert "ImageTooLarge" in results[1]["error"] and "exceeds the cap" in results[1]["error"]
    assert "FileNotFoundError" in results[2]["error"]


def _broken_model_dir(model_dir, tmp_path, kind):
    broken = tmp_path / kind
    shutil.copytree(model_dir, broken)
    if kind == "corrupt":
        (broken / MODEL_FILE).write_bytes(b"not a model at all" * 50)
    elif kind == "truncated":
        data = (model_dir / MODEL_FILE).read_bytes()
        (broken / MODEL_FILE).write_bytes(data[: len(data) // 2])
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, broken / MODEL_FILE)
    elif kind == "mismatched":
        saved = torch.load(model_dir / MODEL_FILE, weights_only=True)
        saved["class_names"] = ["one", "two", "three"]
        torch.save(saved, broken / MODEL_FILE)
    elif kind == "no preprocessing":
        (broken / "preprocessing.json").unlink()
    return broken


@pytest.mark.parametrize("kind, message", [
    ("corrupt", "is not a readable model file"), ("truncated", "is not a readable model file"),
    ("foreign", "is not a model saved by leakage-pipeline: it lacks state_dict"),
    ("mismatched", "cannot be rebuilt"), ("no preprocessing", "cannot be rebuilt"),
])
def test_a_corrupt_or_foreign_model_file_is_a_clear_error(model_dir, tmp_path, capsys, kind, message):
    broken = _broken_model_dir(model_dir, tmp_path, kind)
    image = write_image(tmp_path / "x.png", 1)
    assert main(["predict", str(image), "--model", str(broken), "--device", "cpu"]) == EXIT_COULD_NOT_RUN
    err = capsys.readouterr().err
    assert f"cannot load the model in {broken}" in err and message in err and "Traceback" not in err
    if kind == "corrupt":
        assert main(["serve", "--model", str(broken)]) == EXIT_COULD_NOT_RUN
        assert message in capsys.readouterr().err
