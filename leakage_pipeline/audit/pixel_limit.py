"""The pixel cap: the most pixels an image may have before anything decodes it.

Decoding costs memory in proportion to pixels, not bytes: a 20 KB PNG can declare 13,000 x 13,000
pixels and take over a gigabyte to decode. Every decode (hashing, the training image store,
``predict`` and ``serve``) opens images through :func:`open_image`, which reads only the header
and refuses an image over the cap before a single pixel is decoded. The default is Pillow's own
decompression-bomb threshold (``PIL.Image.MAX_IMAGE_PIXELS``, 89,478,485 pixels: 1 GiB of RGBA
/ 4 / 3), so hashing one image holds at most a few hundred MB per worker (``bench/hashing_memory.py``).
"""

from __future__ import annotations

import io
import warnings

from PIL import Image

MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
# Pillow warns about images between its threshold and twice it; with a cap at most its threshold,
# open_image refuses every one of them right after the header, so the warning would only repeat that.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class ImageTooLarge(ValueError):
    """An image whose header declares more pixels than the cap; it was not decoded."""


def open_image(data: bytes, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """The image in ``data``, opened lazily (header only), or :class:`ImageTooLarge`.

    Other failures are Pillow's own: ``UnidentifiedImageError`` for bytes that are no image.
    """
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:  # Pillow refuses above twice its threshold itself
        raise ImageTooLarge(str(error)) from error
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise ImageTooLarge(f"{width}x{height} = {width * height} pixels exceeds the cap of {max_pixels}")
    return image
