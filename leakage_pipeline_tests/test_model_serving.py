"""A saved model used three ways: loaded, ``leakage-pipeline predict``, and the HTTP API over real sockets."""

import json
import socket
import threading

import numpy as np
import pytest
import requests
import torch
import uvicorn
from PIL import Image
from urllib3 import encode_multipart_formdata

from leakage_pipeline.cli import EXIT_COULD_NOT_RUN, EXIT_RAN, main
from leakage_pipeline.training.model_files import Classifier, save_model
from leakage_pipeline.training.models import build_model
from leakage_pipeline.training.preprocessing import Preprocessing
from leakage_pipeline.training.serving import create_app
from leakage_pipeline.training.settings import SMALL_CNN
from leakage_pipeline_tests.conftest import encode, write_image

CLASSES = ["benign", "malignant", "unsure"]
UPLOAD_LIMIT = 40_000


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("model")
    preprocessing = Preprocessing(size=24, channels=3, mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    save_model(directory, build_model(SMALL_CNN, 3, len(CLASSES)).eval(), SMALL_CNN, CLASSES, preprocessing)
    return directory


@pytest.fixture(scope="module")
def server(model_dir):
    """The API served by uvicorn on a free 127.0.0.1 port for the module's tests."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(Classifier.load(model_dir, "cpu"), max_upload_bytes=UPLOAD_LIMIT)
    instance = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=instance.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not instance.started:
        thread.join(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    instance.should_exit = True
    thread.join(10)


def test_saved_model_reloads_with_its_preprocessing(model_dir, tmp_path):
    classifier = Classifier.load(model_dir, "cpu")
    assert classifier.class_names == CLASSES and classifier.preprocessing.mean == (0.4, 0.5, 0.6)
    result = classifier.predict_bytes(write_image(tmp_path / "a.png", seed=1).read_bytes())
    assert result["predicted"] in CLASSES
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)


def test_predict_prints_json_per_image_and_reports_bad_ones(model_dir, tmp_path, capsys):
    good = [write_image(tmp_path / f"{i}.jpg", seed=i, fmt="JPEG") for i in range(2)]
    assert main(["predict", *map(str, good), "--model", str(model_dir), "--device", "cpu"]) == EXIT_RAN
    printed = json.loads(capsys.readouterr().out)
    expected = Classifier.load(model_dir, "cpu").predict_bytes(good[1].read_bytes())
    assert printed[1] == {"image": str(good[1]), **expected}

    (tmp_path / "notes.txt").write_text("not an image")
    assert main(["predict", str(good[0]), str(tmp_path / "notes.txt"), "--model", str(model_dir)]) == EXIT_COULD_NOT_RUN
    printed = json.loads(capsys.readouterr().out)
    assert "predicted" in printed[0] and "cannot identify image" in printed[1]["error"]
    assert main(["predict", str(good[0]), "--model", str(tmp_path)]) == EXIT_COULD_NOT_RUN
    assert "train a model first" in capsys.readouterr().err


def test_http_health_and_predict_round_trip(server, model_dir, tmp_path):
    health = requests.get(f"{server}/health", timeout=10).json()
    assert health["status"] == "ok" and health["classes"] == CLASSES and health["image_size"] == 24
    image = write_image(tmp_path / "x.png", seed=7, size=(90, 60))
    response = requests.post(f"{server}/predict", files={"file": ("x.png", image.read_bytes(), "image/png")},
                             timeout=10)
    assert response.status_code == 200
    expected = Classifier.load(model_dir, "cpu").predict_bytes(image.read_bytes())
    assert response.json() == {"filename": "x.png", **expected}


def test_http_refuses_non_images_and_oversized_bodies(server):
    text = requests.post(f"{server}/predict", files={"file": ("a.txt", b"hello", "text/plain")}, timeout=10)
    assert text.status_code == 415 and "a.txt: not an image" in text.json()["detail"]
    empty = requests.post(f"{server}/predict", files={"file": ("e.png", b"", "image/png")}, timeout=10)
    assert empty.status_code == 400 and "empty" in empty.json()["detail"]
    missing = requests.post(f"{server}/predict", data={"other": "x"}, timeout=10)
    assert missing.status_code == 422

    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    big = encode(Image.fromarray(noise), "PNG")
    assert len(big) > UPLOAD_LIMIT
    declared = requests.post(f"{server}/predict", files={"file": ("big.png", big, "image/png")}, timeout=10)
    assert declared.status_code == 413 and "upload limit" in declared.json()["detail"]

    body, content_type = encode_multipart_formdata({"file": ("big.png", big, "image/png")})

    def chunks():  # no Content-Length: the limit must hold while the body streams in
        for start in range(0, len(body), 8192):
            yield body[start:start + 8192]

    streamed = requests.post(f"{server}/predict", data=chunks(), headers={"Content-Type": content_type}, timeout=10)
    assert streamed.status_code == 413
    assert requests.get(f"{server}/health", timeout=10).status_code == 200  # the server is still up
