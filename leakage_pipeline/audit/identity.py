"""Identity resolution: patient ids that belong to one person, or one source, as far as the data shows.

Two patient ids are one identity when an image of one and an image of the other form a trusted
duplicate pair (exact copy, near-duplicate within a hash's trusted radius, or an accepted
same-subject pair), or when one case id is filed under both; identities are the connected components of those ties.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

IDENTITY_SCHEMA = {"patient_id": pl.String, "identity": pl.String}
_EDGE_SCHEMA = {"patient_id": pl.String, "linked_patient_id": pl.String}


def identity_edges(images: pl.DataFrame, trusted: pl.DataFrame) -> pl.DataFrame:
    """Pairs of distinct patient ids tied by a trusted duplicate pair or a shared case id.

    ``images``: one row per image with patient_id and case_id; ``trusted``: duplicate pairs with
    query_patient_id and reference_patient_id.
    """
    by_case = (
        images.drop_nulls("case_id")
        .group_by("case_id").agg(pl.col("patient_id").unique().sort())
        .filter(pl.col("patient_id").list.len() > 1)
        .select(linked_patient_id=pl.col("patient_id").list.first(), patient_id=pl.col("patient_id"))
        .explode("patient_id")
    )
    by_pair = trusted.select(patient_id="query_patient_id", linked_patient_id="reference_patient_id")
    edges = pl.concat([by_pair.cast(_EDGE_SCHEMA), by_case.select(_EDGE_SCHEMA.keys()).cast(_EDGE_SCHEMA)])
    return edges.filter(pl.col("patient_id") != pl.col("linked_patient_id")).unique().sort(_EDGE_SCHEMA.keys())


def identities(patient_ids: pl.Series, edges: pl.DataFrame) -> pl.DataFrame:
    """Each patient id with its identity: the smallest patient id of its connected component."""
    names = patient_ids.unique().sort()
    code = {name: index for index, name in enumerate(names.to_list())}
    rows = np.array([code[name] for name in edges["patient_id"].to_list()], dtype=np.int64)
    columns = np.array([code[name] for name in edges["linked_patient_id"].to_list()], dtype=np.int64)
    graph = coo_matrix((np.ones(len(rows)), (rows, columns)), shape=(len(names), len(names)))
    _, component = connected_components(graph, directed=False)
    # Names are sorted, so each component's first index is its smallest name.
    _, first_index = np.unique(component, return_index=True)
    return pl.DataFrame({"patient_id": names, "identity": names.gather(first_index[component])},
                        schema=IDENTITY_SCHEMA)


def identity_clusters(identity_table: pl.DataFrame) -> list[list[str]]:
    """Identities that hold more than one patient id, largest first."""
    clusters = (
        identity_table.group_by("identity").agg(pl.col("patient_id").sort())
        .filter(pl.col("patient_id").list.len() > 1)
        .with_columns(size=pl.col("patient_id").list.len())
        .sort(["size", "identity"], descending=[True, False])
    )
    return clusters["patient_id"].to_list()
