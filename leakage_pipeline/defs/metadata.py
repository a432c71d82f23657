"""What the assets show in the Dagster UI: tables as Markdown, rounded figures, the montage inline."""

import base64
import io

import dagster as dg
import polars as pl
from PIL import Image
from upath import UPath

from leakage_pipeline.markdown_tables import frame_markdown


def markdown_metadata(frame: pl.DataFrame, limit: int = 20) -> dg.MarkdownMetadataValue:
    """The first ``limit`` rows of ``frame`` as a Markdown table for the asset's page."""
    return dg.MetadataValue.md(frame_markdown(frame, limit))


def rounded(value: float | None, digits: int = 4) -> float | None:
    """What a person compares in the UI (the JSON files keep every digit)."""
    return None if value is None else round(value, digits)


def montage_preview(montage: UPath, title: str, width: int = 900) -> str:
    """A picture (a montage, a confusion matrix) inline on the asset's page, ``title`` its alt text: at most
    ``width`` pixels wide, as a JPEG, so the run's event log stays small; the full-size PNG is in the output folder."""
    with Image.open(io.BytesIO(montage.read_bytes())) as sheet:
        sheet = sheet.convert("RGB")
        if sheet.width > width:
            sheet = sheet.resize((width, round(sheet.height * width / sheet.width)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        sheet.save(buffer, format="JPEG", quality=80)
    return f"![{title}](data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode()})"
