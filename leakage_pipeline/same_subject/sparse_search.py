"""Exact nearest neighbours by inner product of sparse vectors (scipy CSR), through an inverted index: each query's
scores are summed over the references sharing one of its non-zero dimensions, so the work is the postings of its
words, not references x dimensions, and no dense (N, dimensions) matrix is ever held.

Visual-word vectors have a few hundred non-zero words of 4,096: 16 KiB per image dense, about 3 KiB sparse, and a
million of them must stay sparse (see :mod:`leakage_pipeline.same_subject.visual_words`). Each query's sum runs in a
fixed order (its words ascending, each word's references ascending), so the result does not depend on the thread
count; ties go to the lower reference index. numba is imported inside the function: the code location must load
without it.
"""

from __future__ import annotations

import functools

import numpy as np


@functools.cache
def _kernel():
    import numba

    @numba.njit(parallel=True, cache=True)
    def top_k(query_pointer, query_words, query_values, word_pointer, word_references, word_values,
              references, k, similarity, found):
        queries = len(query_pointer) - 1
        chunk = 64  # queries sharing one score buffer
        for start in numba.prange((queries + chunk - 1) // chunk):
            scores = np.zeros(references, np.float32)
            for query in range(start * chunk, min(queries, (start + 1) * chunk)):
                for entry in range(query_pointer[query], query_pointer[query + 1]):
                    word, value = query_words[entry], query_values[entry]
                    for posting in range(word_pointer[word], word_pointer[word + 1]):
                        scores[word_references[posting]] += value * word_values[posting]
                # The k best by a sorted insertion; a later reference must score strictly higher to displace.
                kept = 0
                for reference in range(references):
                    score = scores[reference]
                    if score > 0 and (kept < k or score > similarity[query, kept - 1]):
                        slot = min(kept, k - 1)
                        while slot > 0 and similarity[query, slot - 1] < score:
                            similarity[query, slot] = similarity[query, slot - 1]
                            found[query, slot] = found[query, slot - 1]
                            slot -= 1
                        similarity[query, slot] = score
                        found[query, slot] = reference
                        kept = min(kept + 1, k)
                    scores[reference] = 0
    return top_k


def sparse_nearest(queries, references, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(inner product, reference index) of each query's ``k`` nearest references (both scipy CSR, one row per
    vector), best first; references sharing no dimension with the query are not neighbours: -1 pads them."""
    queries, references = queries.tocsr(), references.tocsr()
    inverted = references.T.tocsr()  # a row per dimension: the references where it is non-zero, ascending
    inverted.sort_indices()
    queries.sort_indices()
    similarity = np.zeros((queries.shape[0], k), np.float32)
    found = np.full((queries.shape[0], k), -1, np.int64)
    if k > 0 and queries.shape[0] and references.shape[0]:
        _kernel()(queries.indptr.astype(np.int64), queries.indices.astype(np.int64),
                  queries.data.astype(np.float32), inverted.indptr.astype(np.int64),
                  inverted.indices.astype(np.int64), inverted.data.astype(np.float32),
                  references.shape[0], k, similarity, found)
    return similarity, found
