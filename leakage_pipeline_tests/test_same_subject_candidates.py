"""Candidates from the embedding and from colour: a re-shot the embedding ranks low is still proposed."""

import numpy as np

from leakage_pipeline.same_subject.candidate_search import SearchSettings, propose
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
    cosine, found = propose(query, references, [(query_colour, colours, 3)], settings)
    assert found.shape == (1, 8) and found[0, 0] == 0 and 7 not in found[0, :5]
    assert found[0, 5] == 7 and np.isclose(cosine[0, 5], query[0] @ references[7])
    proposed = found[found >= 0]
    assert len(proposed) == len(set(proposed.tolist()))  # a reference proposed by both appears once
    # Colour proposing what the embedding already did adds nothing.
    _, same = propose(query, references, [(colours[:1], colours, 3)], settings)
    assert (same[0, 5:] == -1).sum() >= 1 and same[0, 0] == 0
