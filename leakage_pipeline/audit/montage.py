"""A contact sheet of the closest cross-split pairs, so a person can confirm them by eye."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from PIL import Image, ImageDraw, ImageFont

from leakage_pipeline.atomic_files import replace_atomically
from leakage_pipeline.audit import image_source
from leakage_pipeline.audit.matching import closeness
from leakage_pipeline.audit.pixel_limit import open_image

_THUMB = 160
_CAPTION = 46
_PAD = 8


def _thumbnail(location: str) -> Image.Image:
    try:
        with open_image(image_source.read_bytes(location)) as image:
            image = image.convert("RGB")
            image.thumbnail((_THUMB, _THUMB))
            return image
    except (OSError, ValueError, SyntaxError):
        placeholder = Image.new("RGB", (_THUMB, _THUMB), (60, 60, 60))
        ImageDraw.Draw(placeholder).text((10, _THUMB // 2), "unreadable", fill=(255, 255, 255))
        return placeholder


def closest_pairs(pairs: pl.DataFrame, limit: int) -> pl.DataFrame:
    return pairs.with_columns(closeness=closeness()).sort(["sha256_equal", "closeness", "phash_distance"], descending=[True, False, False], nulls_last=True).head(limit)


def write_montage(pairs: pl.DataFrame, path: Path, limit: int = 24, columns: int = 2) -> int:
    """Draw up to ``limit`` closest pairs (query left, reference right), ``columns`` pairs per row.

    Returns how many pairs were drawn; with none, a small image says so.
    """
    chosen = closest_pairs(pairs, limit)
    font = ImageFont.load_default()
    cell_w, cell_h = 2 * _THUMB + 3 * _PAD, _THUMB + _CAPTION + 2 * _PAD
    rows = max(1, -(-chosen.height // columns))
    sheet = Image.new("RGB", (cell_w * columns, cell_h * rows), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if chosen.height == 0:
        draw.text((_PAD, _PAD), "no cross-split pairs found", fill=(0, 0, 0), font=font)
    for index, pair in enumerate(chosen.iter_rows(named=True)):
        x0, y0 = (index % columns) * cell_w, (index // columns) * cell_h
        for side, offset in (("query", _PAD), ("reference", 2 * _PAD + _THUMB)):
            sheet.paste(_thumbnail(pair[f"{side}_location"]), (x0 + offset, y0 + _PAD))
            draw.text(
                (x0 + offset, y0 + _PAD + _THUMB + 2),
                f"{pair[f'{side}_split']} | {pair[f'{side}_label']}\n{pair[f'{side}_patient_id']}"[:60],
                fill=(0, 0, 0), font=font,
            )
        distance = "identical bytes" if pair["sha256_equal"] else \
            f"pHash {pair['phash_distance']}  dHash {pair['dhash_distance']}"
        draw.text((x0 + _PAD, y0 + _PAD + _THUMB + 30), distance, fill=(200, 0, 0), font=font)
    replace_atomically(path, sheet.save)
    return chosen.height
