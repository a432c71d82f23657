"""A confusion matrix drawn as a PNG: rows are true classes, cells shaded by the row's share."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from leakage_pipeline.storage.files import replace_atomically

_CELL = 72
_MARGIN = 110


def draw_confusion_matrix(matrix: list[list[int]], class_names: list[str], title: str) -> Image.Image:
    n = len(class_names)
    image = Image.new("RGB", (_MARGIN + n * _CELL + 10, _MARGIN + n * _CELL + 10), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill="black")
    draw.text((_MARGIN, 30), "predicted →", fill="black")
    draw.text((10, _MARGIN - 18), "true ↓", fill="black")
    for j, name in enumerate(class_names):
        draw.text((_MARGIN + j * _CELL + 4, _MARGIN - 32), name[:11], fill="black")
    for i, (name, counts) in enumerate(zip(class_names, matrix, strict=True)):
        top = _MARGIN + i * _CELL
        draw.text((10, top + _CELL // 2 - 6), name[:15], fill="black")
        total = max(sum(counts), 1)
        for j, count in enumerate(counts):
            share = count / total
            shade = int(255 * (1 - 0.85 * share))
            left = _MARGIN + j * _CELL
            draw.rectangle((left, top, left + _CELL - 2, top + _CELL - 2), fill=(shade, shade, 255),
                           outline="gray")
            draw.text((left + 8, top + _CELL // 2 - 12), f"{count}\n{share:.0%}",
                      fill="white" if share > 0.55 else "black")
    return image


def write_confusion_matrix(matrix: list[list[int]], class_names: list[str], title: str, path: Path) -> Path:
    return replace_atomically(path, draw_confusion_matrix(matrix, class_names, title).save)
