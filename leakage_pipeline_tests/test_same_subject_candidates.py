"""Candidates from the embedding and from colour: a re-shot the embedding ranks low is still proposed."""

import numpy as np

from leakage_pipeline.same_subject.candidate_search import Proposer, SearchSettings, propose
from leakage_pipeline.same_subject.colour_descriptor import COLOUR_DIMENSIONS, colour_descriptors


def _lesion(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A skin-toned image with a darker, differently tinted disc in the middle."""
    y, x = np.mgrid[0:size, 0:size]
    disc = np.hypot(y - size / 2, x - size / 2) < size * rng.uniform(0.15, 0.3)
    skin, lesion = rng.uniform([170, 110, 90], [230, 160, 140]), rng.uniform([60, 30, 20], [150, 90, 80])
    image = np.where(disc[..., None], lesion, skin) + rng.normal(0, 6, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def test_colour_descriptor_ignores_rotation_mirror_and_exposure_but_tells_lesions_apart():
    rng = np.random.default_rng(0)
    images = np.stack([_lesion(rng) for _ in range(20)])
    again = np.ascontiguousarray(np.rot90(images, 1, axes=(2, 3))[:, :, :, ::-1])  # rotated and mirrored
    again = np.clip(again.astype(np.float64) * 1.15, 0, 255).astype(np.uint8)  # brighter exposure
    first, second = colour_descriptors(images), colour_descriptors(again)
    assert first.shape == (20, COLOUR_DIMENSIONS) and np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    similarity = first @ second.T
    assert (similarity.argmax(axis=1) == np.arange(20)).mean() >= 0.9
    assert np.diag(similarity).min() > 0.8
    assert np.array_equal(colour_descriptors(images), first)  # integer counting: the same bits every time
    assert colour_descriptors(images[:0]).shape == (0, COLOUR_DIMENSIONS)  # a run with every image cached


def test_colour_neighbours_join_the_embedding_neighbours_once():
    rng = np.random.default_rng(1)
    references = rng.standard_normal((50, 8)).astype(np.float32)
    references /= np.linalg.norm(references, axis=1, keepdims=True)
    colours = np.eye(50, dtype=np.float32)
    # The query's embedding is nearest reference 0's, but its colour is reference 7's.
    query, query_colour = references[:1] + 0.01, colours[7:8]
    settings = SearchSettings(top_k=5)
    cosine, found = propose(query, references, [Proposer("colour", query_colour, colours, 3)], settings)
    assert found.shape == (1, 8) and found[0, 0] == 0 and 7 not in found[0, :5]
    assert found[0, 5] == 7 and np.isclose(cosine[0, 5], query[0] @ references[7])
    proposed = found[found >= 0]
    assert len(proposed) == len(set(proposed.tolist()))  # a reference proposed by both appears once
    # Colour proposing what the embedding already did adds nothing.
    _, same = propose(query, references, [Proposer("colour", colours[:1], colours, 3)], settings)
    assert (same[0, 5:] == -1).sum() >= 1 and same[0, 0] == 0


def _sparse_words(rng: np.random.Generator, images: int, words: int = 512, per_image: int = 40):
    """Unit-length non-negative sparse vectors, like tf-idf visual words: a few dozen words of ``words`` each."""
    from scipy import sparse

    rows = np.repeat(np.arange(images), per_image)
    columns = rng.integers(0, words, images * per_image)
    vectors = sparse.csr_matrix((rng.random(images * per_image).astype(np.float32), (rows, columns)),
                                shape=(images, words), dtype=np.float32)
    vectors.sum_duplicates()
    norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).ravel())
    return sparse.csr_matrix(sparse.diags(1 / norms) @ vectors, dtype=np.float32)


def test_sparse_search_finds_the_same_neighbours_as_the_dense_search():
    from leakage_pipeline.same_subject.candidate_search import nearest

    rng = np.random.default_rng(2)
    references, queries = _sparse_words(rng, 400), _sparse_words(rng, 60)
    sparse_similarity, sparse_found = nearest(queries, references, 30)
    dense_similarity, dense_found = nearest(queries.toarray(), references.toarray(), 30)
    assert np.array_equal(sparse_found, dense_found)
    assert np.allclose(sparse_similarity, dense_similarity, atol=1e-6)
    # Queries are independent: one searched alone gets its row of the batch's answer.
    _, alone = nearest(queries[7], references, 30)
    assert np.array_equal(alone[0], sparse_found[7])


def test_sparse_search_proposes_no_reference_sharing_no_word():
    from scipy import sparse

    from leakage_pipeline.same_subject.candidate_search import nearest

    references = sparse.csr_matrix(np.array([[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0], [0, 0, 1]], np.float32))
    similarity, found = nearest(sparse.csr_matrix(np.array([[1, 0, 0]], np.float32)), references, 3)
    assert found.tolist() == [[0, 2, -1]] and np.allclose(similarity[0, :2], [1, 0.6])
