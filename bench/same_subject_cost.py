"""The same-subject stage's cost per step in CPU seconds (as its summary records them), and their projection to a
million images by how each step grows: per-image steps linearly; the capped ones (embedding training steps, the
vocabulary's k-means sample, calibration queries) not past their caps; exact search with queries x references;
the embedding and colour searches on an HNSW graph beyond the exact limit (measured here); verification with the
pairs it checks. Plus each feature's bytes per image and its GiB at a million.

CPU seconds (user + system of every thread) are what a step needs whatever else shares the cores; the wall seconds of
the run that measured them are printed beside them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from leakage_pipeline.same_subject.candidate_search import SearchSettings
from leakage_pipeline.same_subject.colour_descriptor import COLOUR_DIMENSIONS
from leakage_pipeline.same_subject.matcher import MatcherSettings
from leakage_pipeline.same_subject.sparse_search import sparse_nearest
from leakage_pipeline.same_subject.visual_words import learn_vocabulary, word_vectors

MILLION = 1_000_000
SPLIT_SHARES = {"train": 0.7, "val": 0.15, "test": 0.15}  # of the projected dataset: 30% of images queried
# "other": the stage's CPU seconds outside every step (writing the feature caches, joining tables).
PER_IMAGE_STEPS = ("read_and_decode", "keypoints", "embedding_input", "embedding_inference", "colour", "word_vectors",
                   "other")


@dataclass(frozen=True)
class Projection:
    images: int = MILLION
    hnsw_references: int = 100_000  # the HNSW graph measured for the 1M searches (random unit vectors)

    @property
    def queries(self) -> float:
        return self.images * (SPLIT_SHARES["val"] + SPLIT_SHARES["test"])

    def scored_pairs(self, calibration_queries: float) -> float:
        """Query x reference products of the exact searches: val against train, test against train and val, and
        the calibration sample against train."""
        train, val, test = (self.images * SPLIT_SHARES[s] for s in ("train", "val", "test"))
        return val * train + test * (train + val) + calibration_queries * train


def measured_steps(summary: dict, record: Path) -> dict:
    """Each step's CPU seconds and what it worked on, from this run, or (a step this run reused from its caches:
    features, the embedding model) from the last run that computed it, kept in ``record``."""
    cost, model = summary["cost"], summary["model"]
    kept = json.loads(record.read_text()) if record.exists() else {}
    now = {step: {"cpu_seconds": seconds, "images": cost["counts"]["decoded"] if step in PER_IMAGE_STEPS[:3]
                  else cost["counts"]["embedded"] if step in PER_IMAGE_STEPS[3:5] else cost["counts"]["images"]}
           for step, seconds in cost["cpu_seconds"].items()}
    now = {step: {**value, "wall_seconds": cost["wall_seconds"].get(step)} for step, value in now.items()
           if value["images"] and (value["cpu_seconds"] or step not in kept)}
    if cost["counts"]["decoded"] or "other" not in kept:  # a run that wrote its caches, or the first one
        now["other"] = {"cpu_seconds": cost["total"]["cpu_seconds"] - sum(cost["cpu_seconds"].values()),
                        "images": cost["counts"]["images"]}
    now["embedding_training"] = {"cpu_seconds": model["cpu_seconds"], "steps": model["steps"],
                                 "images": model["training_images"], "wall_seconds": model["seconds"]}
    merged = {**kept, **now}
    record.write_text(json.dumps(merged, indent=1))
    return merged


def hnsw_cost(references: int, dimensions: int, k: int, queries: int = 2000) -> tuple[float, float]:
    """(CPU seconds per inserted reference, per query) of the HNSW graph the stage uses beyond its exact limit,
    on random unit vectors (no clusters to help it: a cautious figure)."""
    import faiss

    settings = SearchSettings()
    rng = np.random.default_rng(0)
    data = rng.standard_normal((references, dimensions)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    index = faiss.IndexHNSWFlat(dimensions, settings.hnsw_neighbours, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efSearch = max(settings.hnsw_search_depth, k)
    started = time.process_time()
    index.add(data)
    built = time.process_time()
    index.search(data[:queries], k)
    return (built - started) / references, (time.process_time() - built) / queries


def words_search_cost(directory: Path, references: int, k: int, queries: int = 2000) -> float:
    """CPU seconds per query x reference product of the exact sparse visual-word search against ``references``
    references: the run's own word vectors (again from its keypoint cache), drawn with replacement to that many, so
    each word's references grow in number as they would with more images of the same kind."""
    table = pl.read_parquet(directory / "keypoints.parquet", columns=["descriptors"])
    descriptors = [np.frombuffer(row, np.uint8).reshape(-1, 128) for row in table["descriptors"]]
    everything = np.ones(len(descriptors), bool)
    vectors = word_vectors(descriptors, learn_vocabulary(descriptors, everything, MatcherSettings().vocabulary),
                           everything)
    rng = np.random.default_rng(0)
    reference_rows = vectors[rng.integers(0, vectors.shape[0], references)]
    query_rows = vectors[rng.integers(0, vectors.shape[0], queries)]
    sparse_nearest(query_rows[:2], reference_rows[:100], k)  # compiled (or loaded) before it is timed
    started = time.process_time()
    sparse_nearest(query_rows, reference_rows, k)
    return (time.process_time() - started) / (queries * references)


def project(summary: dict, steps: dict, directory: Path,
            projection: Projection = Projection()) -> list[tuple[str, float, str]]:
    """(step, CPU seconds at ``projection.images``, how it was scaled) for every step of the stage; ``directory``:
    the stage's, whose keypoint cache gives the visual words for the sparse search's measurement."""
    settings, counts = MatcherSettings(), summary["cost"]["counts"]
    images, queries = projection.images, projection.queries
    rows = [(step, steps[step]["cpu_seconds"] / steps[step]["images"] * images, "per image")
            for step in PER_IMAGE_STEPS if step in steps]
    training = steps["embedding_training"]
    trained_steps = min(settings.embedding.max_steps, settings.embedding.epochs * int(
        images * SPLIT_SHARES["train"] * summary["model"]["training_patients"] / training["images"]
        / settings.embedding.batch_patients))
    rows.append(("embedding_training", training["cpu_seconds"] / training["steps"] * trained_steps,
                 f"{trained_steps} steps (capped at max_steps {settings.embedding.max_steps})"))
    rows.append(("vocabulary", steps["vocabulary"]["cpu_seconds"],
                 f"k-means on at most {settings.vocabulary.words * settings.vocabulary.points_per_word:,} "
                 "sampled descriptors: as measured"))
    calibration_queries = min(max(settings.min_calibration_queries, queries), settings.max_calibration_queries)
    scored = projection.scored_pairs(calibration_queries)
    train = images * SPLIT_SHARES["train"]
    per_product = words_search_cost(directory, int(train), settings.search.words_top_k)
    rows.append(("search_words", per_product * scored,
                 f"exact sparse, queries x references: {scored:.2e} products at {1e9 * per_product:.2f} ns, "
                 f"measured against {train:,.0f} references (here {steps['search_words']['cpu_seconds']:.1f} s for "
                 f"{counts['scored_pairs']:.2e})"))
    searches = queries + calibration_queries
    val = images * SPLIT_SHARES["val"]
    inserted = 3 * train + val  # one graph each for val's, test's and the calibration's references
    for step, dimensions, k in (("search_embedding", settings.embedding.dimensions, settings.search.top_k),
                                ("search_colour", COLOUR_DIMENSIONS, settings.search.colour_top_k)):
        per_insert, per_query = hnsw_cost(projection.hnsw_references, dimensions, k)
        rows.append((step, per_insert * inserted + per_query * searches,
                     f"HNSW ({dimensions}-d), build {inserted:,.0f} + {searches:,.0f} queries, measured at "
                     f"{projection.hnsw_references:,} references"))
    audited_queries = counts["search_queries"] - counts["calibration_queries"]
    calibration_pairs = counts["verified_pairs"] - summary["candidate_pairs"]
    pairs = (summary["candidate_pairs"] / audited_queries * queries
             + calibration_pairs / counts["calibration_queries"] * calibration_queries)
    for step in ("verification", "calibration"):
        rows.append((step, steps[step]["cpu_seconds"] / counts["verified_pairs"] * pairs,
                     f"per pair: {pairs:,.0f} pairs ({calibration_queries:,.0f} calibration queries)"))
    return rows


def feature_bytes(summary: dict, directory: Path) -> list[tuple[str, float, str]]:
    """(feature, bytes per image, where it lives) of each cache and in-memory feature of the stage."""
    images, settings = summary["images"], MatcherSettings()
    keypoints = pl.read_parquet(directory / "keypoints.parquet", columns=["keypoints"])["keypoints"].mean()
    size = settings.embedding.image_size
    return [
        ("keypoint cache (parquet)", (directory / "keypoints.parquet").stat().st_size / images, "disk"),
        ("embedding + colour cache (parquet)", (directory / "embeddings.parquet").stat().st_size / images, "disk"),
        (f"keypoints ({keypoints:.0f} per image: 128 B descriptor + 8 B point each)", keypoints * 136,
         "memory, every image's during the stage"),
        (f"embedding input ({size} px RGB)", 3 * size * size, "memory, every newly embedded image's"),
        ("embedding + colour vectors", 4 * (settings.embedding.dimensions + COLOUR_DIMENSIONS), "memory"),
        ("visual words, sparse (float32 value + int32 word)", summary["cost"]["counts"]["word_entries"] * 8 / images,
         f"memory (dense: {4 * settings.vocabulary.words:,} B)"),
    ]


def cost_report(summary: dict, directory: Path, record: Path, projection: Projection = Projection()) -> str:
    """The tables :mod:`bench.same_subject` prints: CPU and wall seconds per step of this run, the projection to
    ``projection.images`` and each feature's bytes per image and GiB there."""
    cost, steps = summary["cost"], measured_steps(summary, record)
    total = cost["total"]
    lines = [f"Same-subject stage: {total['wall_seconds']:.0f} s wall, {total['cpu_seconds']:.0f} CPU s, "
             f"{summary['images'] / total['wall_seconds']:.1f} images/s ({summary['images']} images; "
             f"{cost['counts']['decoded']} decoded, {cost['counts']['embedded']} embedded this run; a step it took from its "
             "caches shows the last run that computed it)", "",
             "| step | CPU s | images | CPU ms/image | wall s |", "|---|---|---|---|---|"]
    for step, measured in steps.items():
        wall = measured.get("wall_seconds")  # threads' parts of one step have none of their own
        lines.append(f"| {step} | {measured['cpu_seconds']:.1f} | {measured['images']} | "
                     f"{1000 * measured['cpu_seconds'] / measured['images']:.2f} | "
                     f"{'–' if wall is None else f'{wall:.1f}'} |")
    rows = project(summary, steps, directory, projection)
    lines += ["", f"Projected to {projection.images:,} images ({projection.queries:,.0f} queried):", "",
              "| step | core-hours | scaled as |", "|---|---|---|"]
    lines += [f"| {step} | {seconds / 3600:.2f} | {how} |" for step, seconds, how in rows]
    lines.append(f"| **total** | **{sum(s for _, s, _ in rows) / 3600:.1f}** | |")
    lines += ["", "| feature | bytes/image | GiB at 1M | where |", "|---|---|---|---|"]
    lines += [f"| {name} | {size:,.0f} | {size * projection.images / 2**30:.1f} | {where} |"
              for name, size, where in feature_bytes(summary, directory)]
    return "\n".join(lines)
