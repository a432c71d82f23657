"""What bounds the same-subject stage's cost at any size: capped embedding training, a capped calibration sample,
a vocabulary learned from a bounded sample, and the CPU seconds it records per step."""

from dataclasses import replace

import numpy as np

from leakage_pipeline.same_subject.candidate_search import SearchSettings
from leakage_pipeline.same_subject.embedding import EmbeddingSettings
from leakage_pipeline.same_subject.matcher import Descriptors, MatcherSettings, calibration_pairs
from leakage_pipeline.same_subject.stage_cost import StageCost
from leakage_pipeline.same_subject.visual_words import _sample_rows, learn_vocabulary, word_vectors


def test_embedding_training_stops_at_its_step_cap():
    import torch

    from leakage_pipeline.same_subject.embedding_model import train_embedding

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (64, 3, 16, 16), dtype=np.uint8)
    patients = np.arange(64) // 2  # 32 patients: 4 steps an epoch at 8 patients a batch
    settings = EmbeddingSettings(image_size=16, dimensions=8, width=4, epochs=3, batch_patients=8, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny steps: threads waiting on each other (on busy cores) would cost more than they do
    try:
        uncapped = train_embedding(pixels, patients, settings)
        capped = train_embedding(pixels, patients, replace(settings, max_steps=6))
    finally:
        torch.set_num_threads(threads)
    assert uncapped.steps == 12 and len(uncapped.history) == 3
    assert capped.steps == 6 and len(capped.history) == 2  # one whole epoch, then half of the next
    assert settings.model_tag() != replace(settings, max_steps=6).model_tag()  # a kept model names its cap


def test_calibration_queries_are_capped_whatever_the_audited_count():
    rng = np.random.default_rng(1)
    embedding = rng.standard_normal((300, 8)).astype(np.float32)
    embedding /= np.linalg.norm(embedding, axis=1, keepdims=True)
    described = Descriptors(embedding, word_vectors([np.zeros((0, 128), np.uint8)] * 300, None, np.ones(300, bool)),
                            embedding)
    settings = MatcherSettings(min_calibration_queries=20, max_calibration_queries=50,
                               search=SearchSettings(top_k=5, words_top_k=2, colour_top_k=2))
    cost = StageCost()
    _, sampled = calibration_pairs(np.arange(300), described, 250, settings, cost)
    assert sampled == 50 and cost.counts["scored_pairs"] == 50 * 300
    assert calibration_pairs(np.arange(300), described, 5, settings, StageCost())[1] == 20
    assert set(cost.cpu_seconds) == {"search_embedding", "search_words", "search_colour"}


def test_vocabulary_sample_is_the_rows_a_sample_of_all_descriptors_joined_would_take():
    rng = np.random.default_rng(2)
    descriptors = [rng.integers(0, 256, (int(n), 128), dtype=np.uint8) for n in rng.integers(0, 40, 50)]
    images = np.flatnonzero(rng.random(50) < 0.7)
    joined = np.concatenate([descriptors[i] for i in images])
    expected = joined[np.sort(np.random.default_rng(3).choice(len(joined), 300, replace=False))]
    assert np.array_equal(_sample_rows(descriptors, images, 300, seed=3), expected)


def test_word_vectors_are_sparse_unit_tf_idf():
    rng = np.random.default_rng(4)
    centres = rng.integers(0, 200, (16, 128))
    # Each image's keypoints look like 4 of 16 kinds: its words are a few, and few are in every image.
    descriptors = [(centres[rng.choice(16, 4, replace=False)][rng.integers(0, 4, 60)]
                    + rng.integers(0, 8, (60, 128))).astype(np.uint8) for _ in range(40)]
    train = np.arange(40) < 30
    from leakage_pipeline.same_subject.visual_words import VocabularySettings

    vocabulary = learn_vocabulary(descriptors, train, VocabularySettings(words=16, points_per_word=8))
    vectors = word_vectors(descriptors, vocabulary, train)
    assert vectors.shape == (40, 16) and vectors.nnz <= 40 * 16
    assert np.allclose(np.sqrt(vectors.multiply(vectors).sum(axis=1)), 1, atol=1e-5)
    # Dense tf-idf as it was computed before: sqrt of word counts times log((N + 1) / (df + 1)), unit length.
    counts = np.zeros((40, 16))
    from leakage_pipeline.same_subject.visual_words import word_counts

    counts[:] = word_counts(descriptors, vocabulary).toarray()
    weight = np.log((30 + 1) / ((counts[:30] > 0).sum(axis=0) + 1))
    dense = np.sqrt(counts) * weight
    dense /= np.linalg.norm(dense, axis=1, keepdims=True)
    assert np.allclose(vectors.toarray(), dense, atol=1e-6)
    assert counts.sum() == 40 * 60  # every descriptor counted once
