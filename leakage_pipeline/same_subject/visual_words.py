"""Candidates from the keypoints verification will check: each image as a bag of visual words (its RootSIFT
descriptors quantised against a vocabulary learned by k-means on the training split), weighted by how rare each
word is in training (tf-idf), so two photographs sharing many distinctive keypoints are proposed as a pair.

Learned from the training split's own descriptors at each run (no labels, nothing downloaded); rotation, scale and
mirroring change SIFT's keypoints little, so a re-shot the embedding ranks low shares its words. On HAM10000 split
by lesion (``bench/same_subject.py --ham``) a re-photographed lesion's train photo is among its 30 nearest by words
for about 0.6 of queries, against about 0.5 by colour and 0.44 by the embedding. faiss is imported inside the
functions: the code location must load without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class VocabularySettings:
    words: int = 4096  # fewer when training has too few descriptors: at least points_per_word each
    points_per_word: int = 64  # k-means learns from at most this many sampled descriptors per word
    iterations: int = 10
    seed: int = 0


def root_sift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelović and Zisserman 2012): L1-normalised, then square roots; Euclidean distances of
    these are the Hellinger kernel of the original histograms, which matches SIFT better."""
    values = descriptors.astype(np.float32)
    return np.sqrt(values / np.maximum(values.sum(axis=1, keepdims=True), 1e-6))


def _sample_rows(descriptors: list[np.ndarray], images: np.ndarray, wanted: int, seed: int) -> np.ndarray:
    """A seeded sample of ``wanted`` rows of the images' descriptors taken together, without joining them all (a
    million images' descriptors are tens of GB): only the sampled rows are copied."""
    counts = np.array([len(descriptors[i]) for i in images], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    positions = np.sort(np.random.default_rng(seed).choice(offsets[-1], min(offsets[-1], wanted), replace=False))
    owner = np.searchsorted(offsets, positions, side="right") - 1
    starts = np.flatnonzero(np.diff(owner, prepend=-1))
    return np.concatenate([descriptors[images[owner[start]]][positions[start:end] - offsets[owner[start]]]
                           for start, end in zip(starts, [*starts[1:], len(owner)], strict=True)])


def learn_vocabulary(descriptors: list[np.ndarray], train_mask: np.ndarray,
                     settings: VocabularySettings = VocabularySettings()) -> np.ndarray | None:
    """The words (k-means centres of RootSIFT descriptors, (words, 128) float32) learned from a sample of at most
    ``words x points_per_word`` descriptors of the images where ``train_mask`` is true, so its cost is bounded
    whatever the training split's size; None when training has too few descriptors for two words."""
    import faiss

    train = np.flatnonzero(train_mask & (np.array([len(d) for d in descriptors]) > 0))
    available = sum(len(descriptors[i]) for i in train)
    words = min(settings.words, available // settings.points_per_word)
    if words < 2:
        return None
    sample = root_sift(_sample_rows(descriptors, train, words * settings.points_per_word, settings.seed))
    kmeans = faiss.Kmeans(sample.shape[1], words, niter=settings.iterations, seed=settings.seed, verbose=False,
                          max_points_per_centroid=settings.points_per_word)
    kmeans.train(sample)
    return kmeans.centroids


def word_counts(descriptors: list[np.ndarray], vocabulary: np.ndarray):
    """How often each word occurs in each image (scipy CSR (N, words), float32): each descriptor's nearest word."""
    import faiss
    from scipy import sparse

    index = faiss.IndexFlatL2(vocabulary.shape[1])
    index.add(vocabulary)
    owners, words = [], []
    for start in range(0, len(descriptors), 1024):  # bounded memory: a batch of images' descriptors at a time
        batch = descriptors[start:start + 1024]
        if not sum(len(d) for d in batch):
            continue
        _, word = index.search(root_sift(np.concatenate(batch)), 1)
        owners.append(np.repeat(np.arange(start, start + len(batch)), [len(d) for d in batch]))
        words.append(word[:, 0])
    owner, word = (np.concatenate(part) if part else np.zeros(0, np.int64) for part in (owners, words))
    counts = sparse.csr_matrix((np.ones(len(owner), np.float32), (owner, word)),
                               shape=(len(descriptors), len(vocabulary)), dtype=np.float32)
    counts.sum_duplicates()
    return counts


def word_vectors(descriptors: list[np.ndarray], vocabulary: np.ndarray | None, train_mask: np.ndarray):
    """Unit-length tf-idf vectors of each image's descriptors (uint8, (n_i, 128)), as scipy CSR (N, words), float32:
    a few hundred words per image, about 3 KiB where the dense vector is 16 KiB. The word weights come from the
    images where ``train_mask`` is true; without a vocabulary every vector is empty."""
    from scipy import sparse

    if vocabulary is None:
        return sparse.csr_matrix((len(descriptors), 1), dtype=np.float32)
    counts = word_counts(descriptors, vocabulary)
    train = np.flatnonzero(train_mask & (np.diff(counts.indptr) > 0))
    in_train = np.bincount(counts[train].indices, minlength=counts.shape[1])
    weight = np.log((len(train) + 1) / (in_train + 1)).astype(np.float32)
    vectors = counts  # weighted in place: the counts are this function's own
    vectors.data = np.sqrt(vectors.data) * weight[vectors.indices]
    vectors.eliminate_zeros()  # words in every training image weigh nothing
    norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1), np.float32).ravel())
    vectors.data /= np.repeat(np.maximum(norms, 1e-12), np.diff(vectors.indptr))
    return vectors
