"""A contact sheet of leaked images beside their twins, a few per leak reason, so a person can confirm them by eye."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl
from PIL import Image, ImageDraw, ImageFont

from leakage_pipeline.audit import image_source
from leakage_pipeline.audit.leak_reasons import LEAK_REASONS, SAME_SUBJECT
from leakage_pipeline.audit.pixel_limit import open_image
from leakage_pipeline.storage.files import replace_atomically

_THUMB = 160
# (query image bytes, reference image bytes, thumbnail side) -> the pair's inlier keypoints, paired, in each
# thumbnail's pixels; the same-subject stage's verification provides it, so this core does not import that stage.
InlierLines = Callable[[bytes, bytes, int], list[tuple[tuple[float, float], tuple[float, float]]]]
_CAPTION = 46
_PAD = 8


def thumbnail(location: str) -> Image.Image:
    try:
        with open_image(image_source.read_bytes(location)) as image:
            image = image.convert("RGB")
            image.thumbnail((_THUMB, _THUMB))
            return image
    except (OSError, ValueError, SyntaxError):
        placeholder = Image.new("RGB", (_THUMB, _THUMB), (60, 60, 60))
        ImageDraw.Draw(placeholder).text((10, _THUMB // 2), "unreadable", fill=(255, 255, 255))
        return placeholder


def contact_sheet(cells: int, columns: int, cell_size: tuple[int, int], empty_message: str
                  ) -> tuple[Image.Image, ImageDraw.ImageDraw, ImageFont.ImageFont]:
    """A white sheet of ``cells`` cells of ``cell_size`` (width, height), ``columns`` a row, with its drawing
    context and font; with no cell it says ``empty_message``."""
    font = ImageFont.load_default()
    rows = max(1, -(-cells // columns))
    sheet = Image.new("RGB", (cell_size[0] * columns, cell_size[1] * rows), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    if cells == 0:
        draw.text((_PAD, _PAD), empty_message, fill=(0, 0, 0), font=font)
    return sheet, draw, font


def _draw_matched_keypoints(draw: ImageDraw.ImageDraw, example: dict, left: tuple, right: tuple,
                            inlier_lines: InlierLines) -> None:
    """Lines between the verified pair's inlier keypoints, on the two thumbnails (verification repeated for
    this one pair: the audit keeps no keypoint coordinates per pair)."""
    try:
        query, reference = (image_source.read_bytes(example[f"{prefix}location"]) for prefix in ("", "partner_"))
        lines = inlier_lines(query, reference, _THUMB)
    except (OSError, ValueError, SyntaxError):
        return
    for (qx, qy), (rx, ry) in lines[:60]:
        a, b = (left[0] + qx, left[1] + qy), (right[0] + rx, right[1] + ry)
        draw.line([a, b], fill=(0, 200, 0), width=1)
        for x, y in (a, b):
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], outline=(255, 220, 0))


def montage_examples(reasons: pl.DataFrame, images: pl.DataFrame, per_reason: int) -> pl.DataFrame:
    """Up to ``per_reason`` examples of each leak reason that has images, the closest pairs first,
    each with the image's own split, label and patient beside its partner's."""
    sides = images.select("location", "split", "label", "patient_id")
    return pl.concat([
        reasons.filter(pl.col("reason") == reason).sort("distance", "location", nulls_last=True).head(per_reason)
        for reason in LEAK_REASONS
    ]).join(sides, on="location", how="left", maintain_order="left")


def write_montage(examples: pl.DataFrame, path: Path, columns: int = 2, inlier_lines: InlierLines | None = None) -> int:
    """Draw each example (the leaked image left, its partner right), ``columns`` pairs per row, captioned
    with the reason and its evidence; a same-subject pair with lines between its inlier keypoints when
    ``inlier_lines`` is given. Returns how many were drawn; with none, a small image says so."""
    cell_w, cell_h = 2 * _THUMB + 3 * _PAD, _THUMB + _CAPTION + 2 * _PAD
    sheet, draw, font = contact_sheet(examples.height, columns, (cell_w, cell_h), "no leaked image found")
    for index, example in enumerate(examples.iter_rows(named=True)):
        x0, y0 = (index % columns) * cell_w, (index // columns) * cell_h
        for prefix, offset in (("", _PAD), ("partner_", 2 * _PAD + _THUMB)):
            sheet.paste(thumbnail(example[f"{prefix}location"]), (x0 + offset, y0 + _PAD))
            draw.text(
                (x0 + offset, y0 + _PAD + _THUMB + 2),
                f"{example[f'{prefix}split']} | {example[f'{prefix}label']}\n{example[f'{prefix}patient_id']}"[:60],
                fill=(0, 0, 0), font=font,
            )
        if example["reason"] == SAME_SUBJECT and inlier_lines is not None:
            _draw_matched_keypoints(draw, example, (x0 + _PAD, y0 + _PAD), (x0 + 2 * _PAD + _THUMB, y0 + _PAD),
                                    inlier_lines)
        caption = example["reason"].replace("_", " ") + (
            f", {example['evidence'].split(',')[0]}" if example["reason"] == SAME_SUBJECT  # "N inliers"
            else "" if example["distance"] is None else f", distance {example['distance']}")
        draw.text((x0 + _PAD, y0 + _PAD + _THUMB + 30), caption, fill=(200, 0, 0), font=font)
    replace_atomically(path, sheet.save)
    return examples.height
