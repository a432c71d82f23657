"""The one markdown table writer: report.md, evaluation.md and the Dagster UI's metadata all use it."""

from __future__ import annotations

import polars as pl


def _cell(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value).replace("|", "\\|")


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(map(_cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def frame_markdown(frame: pl.DataFrame, limit: int = 20) -> str:
    """The first ``limit`` rows of ``frame``, and how many more there are."""
    text = markdown_table(frame.columns, [list(row) for row in frame.head(limit).iter_rows()])
    return text + (f"\n\n…and {frame.height - limit} more rows" if frame.height > limit else "")
