"""Our LANCZOS resize against Pillow's, pixel for pixel, on the sizes and shapes that matter."""

import numpy as np
import pytest
from PIL import Image

from leakage_pipeline.audit.lanczos import lanczos_resize, lanczos_resize_many, vertical_pass_first


def _pillow(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.LANCZOS))


def _images(rng: np.random.Generator, width: int, height: int):
    yield rng.integers(0, 256, (height, width), dtype=np.uint8)  # noise: every rounding is exercised
    smooth = rng.integers(0, 256, (4, 4), dtype=np.uint8)
    yield _pillow(smooth, (width, height))
    yield np.full((height, width), 255, np.uint8)  # saturated: the clipping


SHAPES = [(1, 1), (2, 3), (9, 8), (10, 8), (31, 33), (32, 32), (33, 32), (40, 1500), (1500, 40), (700, 1400),
          (1024, 768), (333, 777), (69, 167), (1, 300), (300, 1)]
RANDOM_SHAPES = [tuple(map(int, shape)) for shape in np.random.default_rng(9).integers(2, 1300, (25, 2))]


@pytest.mark.parametrize("shape", SHAPES + RANDOM_SHAPES, ids=str)
def test_resize_equals_pillow(shape):
    rng = np.random.default_rng(shape[0] * 7919 + shape[1])
    for gray in _images(rng, *shape):
        for size in ((32, 32), (9, 8), (17, 40), (100, 7)):
            np.testing.assert_array_equal(lanczos_resize(gray, *size), _pillow(gray, size), err_msg=f"{shape}->{size}")
        both = lanczos_resize_many(gray, ((32, 32), (9, 8)))
        np.testing.assert_array_equal(both[0], _pillow(gray, (32, 32)))
        np.testing.assert_array_equal(both[1], _pillow(gray, (9, 8)))


def test_pass_order_follows_pillow():
    assert not vertical_pass_first(1024, 768, 32, 32)
    assert not vertical_pass_first(100, 168, 32, 32)  # height shrinks by exactly twice the width: horizontal
    expected_tall = int(Image.__version__.split(".")[0]) >= 13
    assert vertical_pass_first(100, 170, 32, 32) == expected_tall
    assert not vertical_pass_first(5, 20, 32, 32)  # an enlargement is never done vertically first
