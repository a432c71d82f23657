"""The same-subject stage end to end: features (cached), embedding model (kept between runs),
candidates, verification, calibration, and the audited pairs with their decision: one function
per stage, and :func:`run_same_subject` calls them in order.

Plain Python over polars frames and files under one working directory; the Dagster asset in
:mod:`leakage_pipeline.defs.same_subject_assets` only calls :func:`run_same_subject` and writes its results.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import polars as pl
from PIL import UnidentifiedImageError

from leakage_pipeline.audit import image_source
from leakage_pipeline.audit.image_hashing import STATUS_OK
from leakage_pipeline.audit.pixel_limit import open_image
from leakage_pipeline.devices import pick_device, reproducible
from leakage_pipeline.same_subject import feature_cache
from leakage_pipeline.same_subject.calibration import Calibration, CalibrationSettings, calibrate
from leakage_pipeline.same_subject.candidate_search import Proposer, SearchSettings, propose
from leakage_pipeline.same_subject.colour_descriptor import COLOUR_DIMENSIONS, COLOUR_TAG, colour_descriptors
from leakage_pipeline.same_subject.embedding import EmbeddingSettings, embedding_input
from leakage_pipeline.same_subject.geometric_verification import (
    Keypoints,
    KeypointSettings,
    extract_keypoints,
    match,
    reduced_gray,
)
from leakage_pipeline.same_subject.stage_cost import StageCost
from leakage_pipeline.same_subject.visual_words import VocabularySettings, learn_vocabulary, word_vectors
from leakage_pipeline.storage.files import read_json, replace_atomically, write_json

RAN, SKIPPED = "ran", "skipped"
_SIDE = ("location", "image_uri", "patient_id", "label", "split")
PAIR_SCHEMA = {
    **{f"query_{c}": pl.String for c in _SIDE},
    **{f"reference_{c}": pl.String for c in _SIDE},
    "rank": pl.Int32, "cosine": pl.Float32, "inliers": pl.Int32, "mirrored": pl.Boolean,
    "accepted": pl.Boolean, "review": pl.Boolean,
}


@dataclass(frozen=True)
class MatcherSettings:
    enabled: bool = True
    # On by default only where it can calibrate: enough training images, and patients with repeated images.
    min_training_images: int = 300
    min_repeated_patients: int = 20
    # Training images whose neighbours give the calibration pairs: as many as there are audited
    # (val and test) images, so the false-accept rate is measured on as many pairs as it is applied to
    # (see calibration.py), and at least this many.
    min_calibration_queries: int = 600
    # ... and at most this many: their false-accept rate is then measured on about 1.4M pairs (70 candidates each),
    # plenty for the rates calibration resolves, while verifying them stays a bounded cost at any dataset size
    # (a million images would otherwise verify as many calibration pairs as audited ones).
    max_calibration_queries: int = 20_000
    # The kept model is trained again when the training split has grown by more than this share since.
    retrain_growth: float = 0.25
    workers: int = 2
    seed: int = 0
    embedding: EmbeddingSettings = field(default_factory=EmbeddingSettings)
    keypoints: KeypointSettings = field(default_factory=KeypointSettings)
    search: SearchSettings = field(default_factory=SearchSettings)
    vocabulary: VocabularySettings = field(default_factory=VocabularySettings)
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings)


@dataclass(frozen=True)
class SameSubjectRun:
    pairs: pl.DataFrame  # PAIR_SCHEMA: every verified candidate pair of the audited split
    summary: dict  # JSON-ready: status, reason when skipped, counts, calibration, cost
    calibration: Calibration | None


class StageFiles:
    """The stage's files under its working directory: the feature caches and the kept embedding model."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.embeddings = directory / "embeddings.parquet"
        self.keypoints = directory / "keypoints.parquet"
        self.model = directory / "embedding_model.pt"
        self.model_info = directory / "embedding_model.json"


def empty_pairs() -> pl.DataFrame:
    return pl.DataFrame(schema=PAIR_SCHEMA)


def eligibility(images: pl.DataFrame, split_order: list[str], settings: MatcherSettings) -> str | None:
    """Why the stage does not run on these images, or None when it does."""
    if not settings.enabled:
        return "turned off in the settings"
    train = images.filter((pl.col("split") == split_order[0]) & (pl.col("status") == STATUS_OK))
    repeated = train.group_by("patient_id").len().filter(pl.col("len") >= 2).height
    if train.height < settings.min_training_images:
        return (f"{train.height} readable {split_order[0]} images, under the {settings.min_training_images} "
                "needed to train the embedding and calibrate its threshold")
    if repeated < settings.min_repeated_patients:
        return (f"{repeated} {split_order[0]} patients with two or more images, under the "
                f"{settings.min_repeated_patients} needed to calibrate the threshold")
    return None


@dataclass
class Decoded:
    """What one image was decoded into."""
    pixels: np.ndarray | None  # the embedding input, when asked for
    keypoints: Keypoints | None


def _decode(location: str, size: int | None, keypoint_settings: KeypointSettings | None,
            cpu: AbstractContextManager, cost: StageCost) -> Decoded | None:
    try:
        with cost.thread_timed("read_and_decode"):
            data = image_source.read_bytes(location)
        with cpu, open_image(data) as image:
            with cost.thread_timed("read_and_decode"):
                image.load()
            with cost.thread_timed("keypoints"):
                keypoints = extract_keypoints(reduced_gray(image, keypoint_settings.max_side), keypoint_settings) \
                    if keypoint_settings else None
            with cost.thread_timed("embedding_input"):
                return Decoded(embedding_input(image, size) if size else None, keypoints)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        return None


def _model_is_current(files: StageFiles, settings: MatcherSettings, training_images: int) -> dict | None:
    """The kept model's info when it can still be used: same settings, training split not grown much."""
    if not (files.model.exists() and files.model_info.exists()):
        return None
    info = read_json(files.model_info)
    if info.get("settings_tag") != settings.embedding.model_tag():
        return None
    if training_images > info["training_images"] * (1 + settings.retrain_growth):
        return None
    return info


def _weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12]


@dataclass(frozen=True)
class FeaturePlan:
    """Which features the caches still hold and which must be computed; a model trained now makes every
    cached embedding stale (``model_info`` None)."""
    model_info: dict | None  # the kept embedding model's, when it is still current
    cached_embeddings: pl.DataFrame
    embed_todo: pl.DataFrame
    keypoint_tag: str
    cached_keypoints: pl.DataFrame
    keypoint_todo: pl.DataFrame

    def without(self, locations: set[str]) -> FeaturePlan:
        """The plan with ``locations`` (images that could not be decoded) dropped from what is computed."""
        kept = ~pl.col("location").is_in(list(locations))
        return replace(self, embed_todo=self.embed_todo.filter(kept), keypoint_todo=self.keypoint_todo.filter(kept))


def plan_features(readable: pl.DataFrame, training_images: int, files: StageFiles, settings: MatcherSettings) -> FeaturePlan:
    """Stage 1: what the embedding and keypoint caches hold for ``readable``, and what must be computed."""
    model_info = _model_is_current(files, settings, training_images)
    if model_info is None:
        cached_embeddings, embed_todo = feature_cache.split_by_cache(readable, None, "")
    else:
        # Colour descriptors come from the same pixels as the embeddings and are cached beside them.
        cached_embeddings, embed_todo = feature_cache.split_by_cache(
            readable, feature_cache.read_cache(files.embeddings), f"{model_info['model_id']}_{COLOUR_TAG}")
    keypoint_tag = settings.keypoints.cache_tag()
    cached_keypoints, keypoint_todo = feature_cache.split_by_cache(
        readable, feature_cache.read_cache(files.keypoints), keypoint_tag)
    return FeaturePlan(model_info, cached_embeddings, embed_todo, keypoint_tag, cached_keypoints, keypoint_todo)


def decode_needed(readable: pl.DataFrame, plan: FeaturePlan, settings: MatcherSettings,
                  cost: StageCost) -> tuple[dict[str, Decoded], set[str]]:
    """Stage 2: decode each image that needs an embedding input or keypoints, on every core.

    Returns what was decoded, by location, and the locations that could not be decoded."""
    need_pixels = set(plan.embed_todo["location"].to_list())
    need_keypoints = set(plan.keypoint_todo["location"].to_list())
    to_decode = [loc for loc in readable["location"].to_list() if loc in need_pixels or loc in need_keypoints]
    with image_source.reading_pool(to_decode, settings.workers) as (pool, cpu):
        decoded = dict(zip(to_decode, pool.map(
            lambda loc: _decode(loc, settings.embedding.image_size if loc in need_pixels else None,
                                settings.keypoints if loc in need_keypoints else None, cpu, cost), to_decode),
        strict=True))
    undecodable = {loc for loc, item in decoded.items() if item is None}
    return {loc: item for loc, item in decoded.items() if item is not None}, undecodable


def store_keypoints(plan: FeaturePlan, decoded: dict[str, Decoded], path: Path) -> dict[str, Keypoints]:
    """Stage 3: the new keypoints joined to the cached ones (one row per image, written to ``path``), by location."""
    new_keypoints = plan.keypoint_todo.select(feature_cache.KEY_COLUMNS).with_columns(
        pl.lit(plan.keypoint_tag).alias(feature_cache.TAG))
    rows = [decoded[loc].keypoints.to_row() for loc in new_keypoints["location"].to_list()]
    new_keypoints = pl.concat([new_keypoints, pl.DataFrame(rows, schema={
        "keypoints": pl.Int32, "width": pl.Int32, "height": pl.Int32, "points": pl.Binary, "descriptors": pl.Binary})],
        how="horizontal") if rows else pl.DataFrame()
    keypoint_table = feature_cache.store(plan.cached_keypoints, new_keypoints, path)
    return {row["location"]: Keypoints.from_row(row) for row in keypoint_table.iter_rows(named=True)}


@dataclass(frozen=True)
class Embedder:
    """The embedding network a run embeds with, and where it came from."""
    model: object  # the embedding network, on ``device``
    device: object
    info: dict  # model_id (which names its cached embeddings), settings_tag, training images and patients, seconds
    trained_now: bool


def load_or_train_embedder(train: pl.DataFrame, decoded: dict[str, Decoded], plan: FeaturePlan, files: StageFiles,
                           settings: MatcherSettings, cost: StageCost, log=print) -> Embedder:
    """Stage 4: the kept embedding model, or one trained now on the training images ``train`` and kept."""
    from leakage_pipeline.same_subject.embedding_model import load_model, save_model, train_embedding

    if plan.model_info is not None:
        model, _ = load_model(files.model)
        device = pick_device(settings.embedding.device)
        return Embedder(model.to(device), device, plan.model_info, trained_now=False)
    locations = train["location"].to_list()
    pixels = np.stack([decoded[loc].pixels for loc in locations])
    codes = train["patient_id"].rank("dense").to_numpy().astype(np.int64)
    log(f"training the same-subject embedding on {len(locations)} {train['split'][0]} images")
    # The embedding decides which candidates are verified: the same on any core count (devices.reproducible).
    with reproducible(pick_device(settings.embedding.device)), cost.timed("embedding_training"):
        trained = train_embedding(pixels, codes, settings.embedding, log=log)
    model = trained.model
    # Named by its weights: the same training gives the same id, so cached embeddings stay valid.
    model_tag = f"{settings.embedding.model_tag()}_{_weights_digest(model)}"
    info = {"model_id": model_tag, "settings_tag": settings.embedding.model_tag(),
            "training_images": trained.images, "training_patients": trained.patients,
            "steps": trained.steps, "final_loss": trained.history[-1]["loss"], "seconds": trained.seconds,
            "cpu_seconds": cost.cpu_seconds["embedding_training"]}
    replace_atomically(files.model, lambda path: save_model(model.cpu(), settings.embedding, path, {}))
    write_json(info, files.model_info)
    return Embedder(model.to(trained.device), trained.device, info, trained_now=True)


def embed_new(plan: FeaturePlan, decoded: dict[str, Decoded], embedder: Embedder,
              settings: EmbeddingSettings, cost: StageCost) -> pl.DataFrame:
    """Stage 5: the embeddings (and colour descriptors) of the images not cached under this model, as cache rows."""
    from leakage_pipeline.same_subject.embedding_model import embed

    locations = plan.embed_todo["location"].to_list()
    pixels = np.stack([decoded[loc].pixels for loc in locations]) if locations else \
        np.zeros((0, 3, settings.image_size, settings.image_size), np.uint8)
    with reproducible(embedder.device), cost.timed("embedding_inference"):
        vectors = embed(embedder.model, pixels, embedder.device)
    with cost.timed("colour"):
        colours = colour_descriptors(pixels)
    return plan.embed_todo.select(feature_cache.KEY_COLUMNS).with_columns(
        pl.lit(f"{embedder.info['model_id']}_{COLOUR_TAG}").alias(feature_cache.TAG),
        pl.Series("embedding", vectors, dtype=pl.Array(pl.Float32, settings.dimensions)),
        pl.Series("colour", colours, dtype=pl.Array(pl.Float32, COLOUR_DIMENSIONS)))


@dataclass(frozen=True)
class Descriptors:
    """What proposes candidates, one row per readable image: the embedding, visual words (scipy CSR) and colour."""
    embedding: np.ndarray
    words: object
    colour: np.ndarray

    def others(self, query_rows: np.ndarray, reference_rows: np.ndarray, search: SearchSettings) -> list[Proposer]:
        """Each proposer beside the embedding, as :func:`propose` takes them."""
        return [Proposer("words", self.words[query_rows], self.words[reference_rows], search.words_top_k),
                Proposer("colour", self.colour[query_rows], self.colour[reference_rows], search.colour_top_k)]


def descriptors(readable: pl.DataFrame, cached: pl.DataFrame, new: pl.DataFrame, path: Path,
                words) -> Descriptors:
    """The cache of every current embedding (and colour) written to ``path``, with ``words``: one row per image of
    ``readable``, in its order."""
    table = feature_cache.store(cached, new, path)
    row_of = {loc: index for index, loc in enumerate(table["location"].to_list())}
    order = [row_of[loc] for loc in readable["location"].to_list()]
    return Descriptors(table["embedding"].to_numpy()[order].astype(np.float32), words,
                       table["colour"].to_numpy()[order].astype(np.float32))


@dataclass(frozen=True)
class Candidates:
    """Candidate pairs as row numbers of the readable images: the audited ones, and the calibration pairs."""
    query: np.ndarray
    reference: np.ndarray
    rank: np.ndarray
    cosine: np.ndarray
    calibration: np.ndarray  # (n, 2): pairs of training images, each unordered pair once
    calibration_queries: int
    queries_searched: int  # audited and calibration queries together


def audited_candidates(splits: np.ndarray, described: Descriptors, split_order: list[str], search: SearchSettings,
                       cost: StageCost) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Each later split's images against every earlier split's: (query, reference, rank, cosine, queries searched)."""
    query_index, reference_index, ranks, cosines = [], [], [], []
    queries_searched = 0
    for position, split in enumerate(split_order[1:], start=1):
        queries = np.flatnonzero(splits == split)
        references = np.flatnonzero(np.isin(splits, split_order[:position]))
        if not len(queries) or not len(references):
            continue
        similarity, found = propose(described.embedding[queries], described.embedding[references],
                                    described.others(queries, references, search), search, cost=cost)
        valid = found >= 0
        query_index.append(np.repeat(queries, valid.sum(axis=1)))
        reference_index.append(references[found[valid]])
        ranks.append(np.tile(np.arange(1, found.shape[1] + 1), (len(queries), 1))[valid])
        cosines.append(similarity[valid])
        queries_searched += len(queries)
    if not query_index:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int32), np.zeros(0, np.float32), 0
    return (np.concatenate(query_index), np.concatenate(reference_index), np.concatenate(ranks),
            np.concatenate(cosines), queries_searched)


def calibration_pairs(train_rows: np.ndarray, described: Descriptors, queries: int, settings: MatcherSettings,
                      cost: StageCost) -> tuple[np.ndarray, int]:
    """A seeded sample of ``queries`` training images (within the settings' minimum and maximum) against all of
    training: (each unordered pair of distinct images once, the number of sampled queries)."""
    wanted = min(max(settings.min_calibration_queries, queries), settings.max_calibration_queries)
    sample = np.sort(np.random.default_rng(settings.seed).choice(train_rows, min(wanted, len(train_rows)),
                                                                 replace=False))
    _, found = propose(described.embedding[sample], described.embedding[train_rows],
                       described.others(sample, train_rows, settings.search), settings.search, cost=cost)
    calibration_a = np.repeat(sample, found.shape[1])
    calibration_b = train_rows[np.where(found >= 0, found, 0)].reshape(-1)
    keep = (found.reshape(-1) >= 0) & (calibration_a != calibration_b)
    # Each unordered pair once: a pair found from both ends would count twice.
    low, high = np.minimum(calibration_a, calibration_b)[keep], np.maximum(calibration_a, calibration_b)[keep]
    unique_pairs = np.unique(np.stack([low, high], 1), axis=0) if keep.any() else np.zeros((0, 2), np.int64)
    return unique_pairs, len(sample)


def find_candidates(readable: pl.DataFrame, described: Descriptors, split_order: list[str],
                    settings: MatcherSettings, cost: StageCost) -> Candidates:
    """Stage 6: the audited candidate pairs, and the calibration pairs within the training split."""
    query, reference, rank, cosine, searched = audited_candidates(readable["split"].to_numpy(), described,
                                                                  split_order, settings.search, cost)
    train_rows = np.flatnonzero((readable["split"] == split_order[0]).to_numpy())
    pairs, sampled = calibration_pairs(train_rows, described, searched, settings, cost)
    return Candidates(query, reference, rank, cosine, pairs, sampled, searched + sampled)


def verify(candidates: Candidates, keypoints_of: dict[str, Keypoints], locations: list[str],
           settings: MatcherSettings) -> tuple[np.ndarray, np.ndarray]:
    """Stage 7: keypoints and RANSAC on every candidate pair (audited first, then calibration), one pair per
    thread: (inliers, whether the fit was mirrored) per pair."""
    import cv2

    query = np.concatenate([candidates.query, candidates.calibration[:, 0]])
    reference = np.concatenate([candidates.reference, candidates.calibration[:, 1]])
    pairs = [(keypoints_of[locations[q]], keypoints_of[locations[r]]) for q, r in zip(query, reference, strict=True)]
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # parallel over pairs instead: one pair per thread, every core busy
    try:
        with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
            matches = list(pool.map(lambda pair: match(pair[0], pair[1], settings.keypoints), pairs, chunksize=64))
    finally:
        cv2.setNumThreads(threads)
    return np.array([m.inliers for m in matches], np.int32), np.array([m.mirrored for m in matches], bool)


def decide(readable: pl.DataFrame, candidates: Candidates, inliers: np.ndarray, mirrored: np.ndarray,
           settings: CalibrationSettings) -> tuple[pl.DataFrame, Calibration]:
    """Stage 8: the inlier threshold calibrated on the training pairs, then each audited pair accepted, sent to
    review or neither: (the audited pairs, :data:`PAIR_SCHEMA`, the calibration)."""
    audited = len(candidates.query)
    patients = readable["patient_id"].to_numpy()
    same_patient = patients[candidates.calibration[:, 0]] == patients[candidates.calibration[:, 1]]
    audit_inliers = inliers[:audited]
    calibration = calibrate(inliers[audited:], same_patient, settings, audit_inliers)
    threshold, review_floor = calibration.threshold, calibration.review_threshold
    accepted = audit_inliers >= threshold if threshold is not None else np.zeros(audited, bool)
    review = ((audit_inliers >= review_floor) & ~accepted) if review_floor is not None else np.zeros(audited, bool)
    sides = readable.select(_SIDE)
    pairs = pl.concat([
        sides[candidates.query].rename({c: f"query_{c}" for c in _SIDE}),
        sides[candidates.reference].rename({c: f"reference_{c}" for c in _SIDE}),
        pl.DataFrame({"rank": candidates.rank, "cosine": candidates.cosine, "inliers": audit_inliers,
                      "mirrored": mirrored[:audited], "accepted": accepted, "review": review}),
    ], how="horizontal").cast(PAIR_SCHEMA).sort("query_split", "query_image_uri", "rank")
    return pairs, calibration


def _summary(features: dict, embedder: Embedder, candidates: Candidates, pairs: pl.DataFrame,
             calibration: Calibration, search: SearchSettings, cost: StageCost) -> dict:
    return {
        "status": RAN,
        "reason": None if calibration.threshold is not None else calibration.reason,
        **features,
        "model": {**embedder.info, "trained_now": embedder.trained_now},
        "top_k": search.top_k, "words_top_k": search.words_top_k, "colour_top_k": search.colour_top_k,
        "candidate_pairs": int(len(candidates.query)),
        "accepted_pairs": int(pairs["accepted"].sum()),
        "review_pairs": int(pairs["review"].sum()),
        "accepted_query_images": pairs.filter(pl.col("accepted"))["query_location"].n_unique(),
        "calibration": {**{k: v for k, v in calibration.to_dict().items() if k != "curve"},
                        "calibration_queries": candidates.calibration_queries, "curve": calibration.curve},
        "cost": cost.to_dict(),
    }


def run_same_subject(images: pl.DataFrame, split_order: list[str], directory: Path,
                     settings: MatcherSettings = MatcherSettings(), log=print) -> SameSubjectRun:
    """``images``: the audited images (side columns, status and hash cache key per image). Runs the stages above
    in order; features and the embedding model are cached under ``directory``."""
    reason = eligibility(images, split_order, settings)
    if reason is not None:
        return SameSubjectRun(empty_pairs(), {"status": SKIPPED, "reason": reason}, None)
    files = StageFiles(directory)
    directory.mkdir(parents=True, exist_ok=True)
    readable = images.filter(pl.col("status") == STATUS_OK).unique("location", keep="first", maintain_order=True)
    is_train = pl.col("split") == split_order[0]
    plan = plan_features(readable, readable.filter(is_train).height, files, settings)
    cost = StageCost()
    with cost.timed("features", cpu=False):  # its threads record their parts: read_and_decode, keypoints, ...
        decoded, undecodable = decode_needed(readable, plan, settings, cost)
    if undecodable:
        readable, plan = readable.filter(~pl.col("location").is_in(list(undecodable))), plan.without(undecodable)
    keypoints_of = store_keypoints(plan, decoded, files.keypoints)
    embedder = load_or_train_embedder(readable.filter(is_train), decoded, plan, files, settings, cost, log)
    new_embeddings = embed_new(plan, decoded, embedder, settings.embedding, cost)
    descriptor_list = [keypoints_of[loc].descriptors for loc in readable["location"].to_list()]
    train_mask = (readable["split"] == split_order[0]).to_numpy()
    with cost.timed("vocabulary"):
        vocabulary = learn_vocabulary(descriptor_list, train_mask, settings.vocabulary)
    with cost.timed("word_vectors"):
        words = word_vectors(descriptor_list, vocabulary, train_mask)
    described = descriptors(readable, plan.cached_embeddings, new_embeddings, files.embeddings, words)
    candidates = find_candidates(readable, described, split_order, settings, cost)
    with cost.timed("verification"):
        inliers, mirrored = verify(candidates, keypoints_of, readable["location"].to_list(), settings)
    with cost.timed("calibration"):
        pairs, calibration = decide(readable, candidates, inliers, mirrored, settings.calibration)
    cost.counts.update({"images": readable.height, "decoded": len(decoded), "embedded": plan.embed_todo.height,
                        "search_queries": candidates.queries_searched,
                        "calibration_queries": candidates.calibration_queries, "verified_pairs": len(inliers),
                        "word_entries": int(words.nnz)})
    cost.finish()
    features = {"images": readable.height, "embedded": plan.embed_todo.height,
                "embeddings_reused": plan.cached_embeddings.height, "keypoints_extracted": plan.keypoint_todo.height,
                "keypoints_reused": plan.cached_keypoints.height, "undecodable": len(undecodable)}
    summary = _summary(features, embedder, candidates, pairs, calibration, settings.search, cost)
    return SameSubjectRun(pairs=pairs, summary=summary, calibration=calibration)
