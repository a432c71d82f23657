"""A contact sheet of the likely label issues with the lowest label quality: image, given vs suggested label, score."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from leakage_pipeline.audit.montage import contact_sheet, thumbnail
from leakage_pipeline.storage.files import replace_atomically

_THUMB = 160
_CAPTION = 44
_PAD = 8


def write_label_issue_montage(issues: pl.DataFrame, path: Path, count: int = 12, columns: int = 4) -> int:
    """Draw the ``count`` likely issues of lowest label quality; return how many were drawn."""
    worst = issues.filter("is_label_issue").sort("label_quality", "location").head(count)
    cell_w, cell_h = _THUMB + 2 * _PAD, _THUMB + _CAPTION + 2 * _PAD
    sheet, draw, font = contact_sheet(worst.height, columns, (cell_w, cell_h), "no likely label issue found")
    for number, row in enumerate(worst.iter_rows(named=True)):
        x0, y0 = (number % columns) * cell_w + _PAD, (number // columns) * cell_h + _PAD
        sheet.paste(thumbnail(row["location"]), (x0, y0))
        caption = (f"{row['split']} | given {row['given_label']}\nsuggested {row['suggested_label']}\n"
                   f"quality {row['label_quality']:.3f}")
        draw.text((x0, y0 + _THUMB + 2), caption, fill=(0, 0, 0), font=font)
    replace_atomically(path, sheet.save)
    return worst.height
