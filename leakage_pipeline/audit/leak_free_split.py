"""The leak-free split: the audited split with every identity whole, checked until no trusted pair crosses it.

Identities come from the audited split's trusted cross-split pairs and shared case ids. Moving an
identity into another split can bring it next to a duplicate it had within its old split, so the
new split is matched again, the pairs that now cross splits tie their identities too, and the
placement is repeated. Every round merges identities, so the rounds end, usually after one or two.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from leakage_pipeline.audit.identity import identities, identity_edges
from leakage_pipeline.audit.matching import cross_split_pairs
from leakage_pipeline.audit.report import informative_trusted_pairs
from leakage_pipeline.audit.splitting import identities_whole


@dataclass(frozen=True)
class LeakFreeSplit:
    assignments: pl.DataFrame  # the audited split's columns, split changed where identities moved, plus identity
    rounds: int  # placements made until no trusted pair crossed splits


def leak_free_split(
    assignments: pl.DataFrame, hashes: pl.DataFrame, identity_table: pl.DataFrame, split_order: list[str],
    trusted_radius: dict[str, int | None], min_detail: float, ledger: pl.DataFrame | None = None,
) -> LeakFreeSplit:
    """``assignments``: the audited split; ``hashes``: every image's hash row; ``identity_table``: the
    audited split's identities; ``ledger``: an earlier leak-free split's (patient_id, split), kept
    where it can be."""
    images = assignments.join(hashes, on="location", how="left", maintain_order="left")
    edges = identity_table.select("patient_id", linked_patient_id="identity")
    max_radius = max((r for r in trusted_radius.values() if r is not None), default=0)
    rounds = 0
    while True:
        rounds += 1
        table = identities(images["patient_id"], edges)
        placed = identities_whole(assignments, table, split_order, ledger)
        moved = images.with_columns(split=placed["split"])
        crossing = informative_trusted_pairs(cross_split_pairs(moved, split_order, max_radius), trusted_radius,
                                             min_detail)
        if crossing.is_empty():
            return LeakFreeSplit(assignments=placed, rounds=rounds)
        edges = pl.concat([edges, identity_edges(moved, crossing)])
