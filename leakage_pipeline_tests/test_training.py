"""The training core on CPU with tiny images: image store, leaky split, training loop, weights."""

import numpy as np
import polars as pl
import pytest
import torch
from PIL import Image, UnidentifiedImageError

from leakage_pipeline.audit.image_hashing import hash_images
from leakage_pipeline.audit.splitting import leaky_split, shared_patients
from leakage_pipeline.training.image_store import UNDECODABLE, build_store, open_stores
from leakage_pipeline.training.models import ResNet18, build_model, load_initial_weights
from leakage_pipeline.training.preprocessing import Preprocessing
from leakage_pipeline.training.settings import RESNET18, SMALL_CNN, ClassifierSettings
from leakage_pipeline.training.trainer import LabelledImages, train_classifier
from leakage_pipeline_tests.conftest import encode, write_image


def test_preprocessing_shapes_and_round_trip(tmp_path):
    image = Image.new("RGB", (40, 30), (200, 100, 50))
    assert Preprocessing.for_shape(16, 3).bytes_to_array(encode(image)).shape == (3, 16, 16)
    gray = Preprocessing.for_shape(16, 1).bytes_to_array(encode(image, "JPEG"))
    assert gray.shape == (1, 16, 16) and gray.dtype == np.uint8
    with pytest.raises(UnidentifiedImageError):
        Preprocessing.for_shape(16, 1).bytes_to_array(b"not an image")
    measured = Preprocessing.for_shape(16, 3).with_statistics(np.full((4, 3, 16, 16), 51, np.uint8))
    assert measured.mean == pytest.approx((0.2, 0.2, 0.2)) and min(measured.std) > 0
    measured.save(tmp_path / "p.json")
    assert Preprocessing.load(tmp_path / "p.json") == measured
    with pytest.raises(ValueError, match="channels"):
        Preprocessing.for_shape(16, 2)


def test_image_store_is_built_once_and_extended_for_new_images(tmp_path):
    paths = [str(write_image(tmp_path / "img" / f"{i}.png", seed=i)) for i in range(6)]
    (tmp_path / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    paths.append(str(tmp_path / "img" / "broken.jpg"))
    shape = Preprocessing.for_shape(16, 3)
    store_dir = tmp_path / "store"

    first = build_store(hash_images(paths).hashes, store_dir, shape)
    assert (first.images, first.decoded, first.reused) == (6, 6, 0)
    assert sum(first.excluded.values()) == 1

    paths.insert(0, str(write_image(tmp_path / "img" / "new.png", seed=99)))
    second = build_store(hash_images(paths).hashes, store_dir, shape)
    assert (second.images, second.decoded, second.reused) == (7, 1, 6)
    assert len(list(store_dir.glob("*.npy"))) == 1  # the previous array was replaced, not kept

    store = open_stores([store_dir, tmp_path / "never_built"])
    gathered = store.gather([paths[3], paths[0]])
    for got, path in zip(gathered, [paths[3], paths[0]], strict=True):
        np.testing.assert_array_equal(got, shape.bytes_to_array(open(path, "rb").read()))
    with pytest.raises(KeyError, match="not in the training image store"):
        store.gather([paths[-1]])


def test_image_store_counts_an_image_it_cannot_decode(tmp_path, monkeypatch):
    paths = [str(write_image(tmp_path / f"{i}.png", seed=i)) for i in range(3)]
    hashes = hash_images(paths).hashes
    (tmp_path / "2.png").write_bytes(b"changed after hashing")
    built = build_store(hashes, tmp_path / "store", Preprocessing.for_shape(16, 1))
    assert built.images == 2 and built.excluded == {UNDECODABLE: 1}


def test_leaky_split_moves_half_of_each_test_patient_into_train_and_keeps_sizes():
    splits = ["train"] * 60 + ["val"] * 20 + ["test"] * 20
    frame = pl.DataFrame({"location": [f"i{n}" for n in range(100)], "patient_id": [f"p{n // 4}" for n in range(100)],
                          "split": splits})
    leaky = leaky_split(frame, ["train", "val", "test"], seed=3)
    assert dict(leaky.group_by("split").len().iter_rows()) == {"train": 60, "val": 20, "test": 20}
    assert leaky.equals(leaky_split(frame, ["train", "val", "test"], seed=3))
    moved = frame.join(leaky, on="location").filter(pl.col("split") == "test", pl.col("split_right") == "train")
    assert moved.height == 10 and moved.group_by("patient_id").len()["len"].to_list() == [2] * 5
    assert shared_patients(leaky, "train", "test") >= 5
    assert leaky.filter(pl.col("split") == "val").equals(frame.filter(pl.col("split") == "val"))



def _two_class_images(n: int, seed: int) -> LabelledImages:
    """Dark images are class 0, bright ones class 1, with noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    base = np.where(labels == 1, 170, 80)[:, None, None, None]
    images = np.clip(base + rng.normal(0, 30, (n, 1, 16, 16)), 0, 255).astype(np.uint8)
    return LabelledImages(images, labels.astype(np.int64))


def test_training_reduces_loss_and_is_deterministic_on_cpu():
    train, val = _two_class_images(96, 0), _two_class_images(32, 1)
    preprocessing = Preprocessing.for_shape(16, 1).with_statistics(train.images)
    settings = ClassifierSettings(epochs=4, batch_size=16, device="cpu", seed=5)
    logged = []
    first = train_classifier(train, val, 2, preprocessing, settings, logged.append)
    assert first.history[-1]["loss"] < first.history[0]["loss"]
    assert max(epoch["val_macro_f1"] for epoch in first.history) > 0.9
    assert any("images/s" in line and "val macro F1" in line for line in logged)
    second = train_classifier(train, val, 2, preprocessing, settings, lambda _: None)
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(tensor, second.model.state_dict()[name]), name


def test_initial_weights_load_where_shapes_allow(tmp_path):
    pretrained = ResNet18(in_channels=3, num_classes=1000)
    torch.save(pretrained.state_dict(), tmp_path / "resnet18.pt")
    model = build_model(RESNET18, in_channels=1, num_classes=5)
    left_at_init = load_initial_weights(model, tmp_path / "resnet18.pt")
    assert left_at_init == ["fc.weight", "fc.bias"]
    assert torch.allclose(model.conv1.weight, pretrained.conv1.weight.sum(dim=1, keepdim=True))
    assert torch.equal(model.layer3[0].conv2.weight, pretrained.layer3[0].conv2.weight)
    with pytest.raises(ValueError, match="no weight matches"):
        load_initial_weights(build_model(SMALL_CNN, 1, 5), tmp_path / "resnet18.pt")
    assert model(torch.zeros(2, 1, 32, 32)).shape == (2, 5)


def test_the_training_resource_offers_every_classifier_knob_with_its_default():
    from dataclasses import fields

    from leakage_pipeline.defs.settings import TrainingSettings

    resource = TrainingSettings()
    assert resource.classifier_settings() == ClassifierSettings()
    changed = TrainingSettings(epochs=3, architecture=RESNET18, initial_weights="w.pt").classifier_settings()
    assert (changed.epochs, changed.architecture, changed.initial_weights) == (3, RESNET18, "w.pt")
    assert {field.name for field in fields(ClassifierSettings)} <= set(TrainingSettings.model_fields)
