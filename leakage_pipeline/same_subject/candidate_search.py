"""Candidate pairs: each later-split image's nearest earlier-split images by embedding (faiss), and by colour.

The learned embedding proposes most re-shots, but a small shift in its weights (another CPU's float rounding in
training) reorders its neighbours, and a re-shot just beyond its top k is lost before any verification. Each
query's nearest images by its bag of visual words (:mod:`leakage_pipeline.same_subject.visual_words`) and by a
colour descriptor learned from nothing (:mod:`leakage_pipeline.same_subject.colour_descriptor`) are added to its
list, so any one proposing an image suffices; verification decides either way.

Embeddings are unit length, so inner product is cosine similarity. Up to ``exact_limit`` reference
images the search is exact (a flat index, one matrix product per batch); beyond it an HNSW graph
keeps queries sub-linear, so millions of references stay cheap (see ``bench/same_subject.py``). Sparse vectors
(visual words) are searched exactly through an inverted index (:mod:`leakage_pipeline.same_subject.sparse_search`).
faiss is imported inside the function: the Dagster code location must load without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from leakage_pipeline.same_subject.stage_cost import StageCost


@dataclass(frozen=True)
class SearchSettings:
    # The embedding only proposes; verification decides. On the demo's 2,500 training images the
    # source of a re-shot is among the 20 nearest for 77% of re-shots and among the 30 nearest for
    # 90%, for half as many verifications again.
    top_k: int = 30
    # Each query's nearest by visual words, then by colour, added to its embedding neighbours when new.
    words_top_k: int = 30
    colour_top_k: int = 10
    exact_limit: int = 200_000
    hnsw_neighbours: int = 32
    hnsw_search_depth: int = 128


class Proposer(NamedTuple):
    """A descriptor beside the embedding that proposes candidates: its name (for the cost), the queries' and the
    references' vectors (dense arrays, or scipy sparse rows), and how many of each query's nearest it adds."""
    name: str
    queries: object
    references: object
    top_k: int


def _search(queries, references, wanted: int, settings: SearchSettings) -> tuple[np.ndarray, np.ndarray]:
    """Each query's ``wanted`` best references by inner product: sparse exactly, dense exact or HNSW by size."""
    from scipy import sparse

    if sparse.issparse(references):
        from leakage_pipeline.same_subject.sparse_search import sparse_nearest

        return sparse_nearest(queries, references, wanted)
    import faiss

    queries = np.ascontiguousarray(queries, np.float32)
    references = np.ascontiguousarray(references, np.float32)
    dimensions = references.shape[1]
    if references.shape[0] <= settings.exact_limit:
        index = faiss.IndexFlatIP(dimensions)
    else:
        index = faiss.IndexHNSWFlat(dimensions, settings.hnsw_neighbours, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = max(settings.hnsw_search_depth, wanted)
    index.add(references)
    return index.search(queries, wanted)


def nearest(queries, references, k: int, settings: SearchSettings = SearchSettings(),
            exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(similarity, reference index) of each query's ``k`` nearest references (dense float arrays or scipy sparse
    rows) by inner product, best first; -1 pads missing ones.

    ``exclude_self``: queries and references are the same images, and an image is not its own neighbour.
    """
    wanted = min(k + int(exclude_self), references.shape[0])
    if wanted == 0 or queries.shape[0] == 0:
        return np.zeros((queries.shape[0], k), np.float32), np.full((queries.shape[0], k), -1, np.int64)
    similarity, found = _search(queries, references, wanted, settings)
    if exclude_self:
        own = found == np.arange(queries.shape[0])[:, None]
        # Drop each row's own entry (or its last one when the image is not among its own neighbours).
        keep = ~own
        keep[~own.any(axis=1), -1] = False
        similarity = similarity[keep].reshape(queries.shape[0], wanted - 1)
        found = found[keep].reshape(queries.shape[0], wanted - 1)
    pad = k - found.shape[1]
    if pad > 0:
        similarity = np.pad(similarity, ((0, 0), (0, pad)))
        found = np.pad(found, ((0, 0), (0, pad)), constant_values=-1)
    return similarity, found


def propose(query_embeddings: np.ndarray, reference_embeddings: np.ndarray, others: list[Proposer],
            settings: SearchSettings = SearchSettings(), exclude_self: bool = False,
            cost: StageCost | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(embedding cosine, reference index) of each query's candidates: its ``top_k`` nearest by embedding, then for
    each other proposer its nearest by it not proposed already; -1 pads missing or repeated ones. ``cost``: where
    each proposer's search time is added (``search_embedding``, ``search_NAME``), and the query x reference
    products scored (``scored_pairs``)."""
    cost = cost or StageCost()
    cost.counts["scored_pairs"] = cost.counts.get("scored_pairs", 0) + len(query_embeddings) * len(reference_embeddings)
    with cost.timed("search_embedding"):
        cosine, found = nearest(query_embeddings, reference_embeddings, settings.top_k, settings, exclude_self)
    for name, query_vectors, reference_vectors, k in others:
        with cost.timed(f"search_{name}"):
            _, more = nearest(query_vectors, reference_vectors, k, settings, exclude_self)
        repeated = (more[:, :, None] == found[:, None, :]).any(axis=2) | (more < 0)
        more_cosine = np.einsum("qd,qkd->qk", query_embeddings, reference_embeddings[np.maximum(more, 0)])
        cosine = np.concatenate([cosine, np.where(repeated, 0, more_cosine).astype(np.float32)], axis=1)
        found = np.concatenate([found, np.where(repeated, -1, more)], axis=1)
    return cosine, found
