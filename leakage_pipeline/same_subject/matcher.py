"""The same-subject stage end to end: features (cached), embedding model (kept between runs),
candidates, verification, calibration, and the audited pairs with their decision.

Plain Python over polars frames and files under one working directory; the Dagster asset in
:mod:`leakage_pipeline.defs.same_subject_assets` only calls :func:`run_same_subject` and writes its results.
"""

from __future__ import annotations

import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
from PIL import UnidentifiedImageError

from leakage_pipeline.audit import image_source
from leakage_pipeline.audit.image_hashing import STATUS_OK
from leakage_pipeline.audit.pixel_limit import open_image
from leakage_pipeline.same_subject import feature_cache
from leakage_pipeline.same_subject.calibration import Calibration, CalibrationSettings, calibrate
from leakage_pipeline.same_subject.candidate_search import SearchSettings, propose
from leakage_pipeline.same_subject.colour_descriptor import COLOUR_DIMENSIONS, COLOUR_TAG, colour_descriptors
from leakage_pipeline.same_subject.embedding import EmbeddingSettings, embedding_input
from leakage_pipeline.same_subject.geometric_verification import (
    Keypoints,
    KeypointSettings,
    extract_keypoints,
    match,
    reduced_gray,
)
from leakage_pipeline.same_subject.visual_words import VocabularySettings, word_vectors
from leakage_pipeline.storage.files import replace_atomically, write_json

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


class _Files:
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
class _Decoded:
    pixels: np.ndarray | None  # the embedding input, when asked for
    keypoints: Keypoints | None


def _decode(location: str, size: int | None, keypoint_settings: KeypointSettings | None) -> _Decoded | None:
    try:
        with open_image(image_source.read_bytes(location)) as image:
            image.load()
            return _Decoded(
                embedding_input(image, size) if size else None,
                extract_keypoints(reduced_gray(image, keypoint_settings.max_side), keypoint_settings)
                if keypoint_settings else None)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        return None


def _model_is_current(files: _Files, settings: MatcherSettings, training_images: int) -> dict | None:
    """The kept model's info when it can still be used: same settings, training split not grown much."""
    if not (files.model.exists() and files.model_info.exists()):
        return None
    info = json.loads(files.model_info.read_text())
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


def _verify_all(query: list[Keypoints], reference: list[Keypoints], settings: MatcherSettings):
    import cv2

    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # parallel over pairs instead: one pair per thread, every core busy
    try:
        with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
            return list(pool.map(lambda pair: match(pair[0], pair[1], settings.keypoints), zip(query, reference),
                                 chunksize=64))
    finally:
        cv2.setNumThreads(threads)


def run_same_subject(images: pl.DataFrame, split_order: list[str], directory: Path,
                     settings: MatcherSettings = MatcherSettings(), log=print) -> SameSubjectRun:
    """``images``: the audited images (side columns, status and hash cache key per image)."""
    reason = eligibility(images, split_order, settings)
    if reason is not None:
        return SameSubjectRun(empty_pairs(), {"status": SKIPPED, "reason": reason}, None)
    from leakage_pipeline.same_subject.embedding_model import embed, load_model, save_model, train_embedding

    files = _Files(directory)
    directory.mkdir(parents=True, exist_ok=True)
    readable = images.filter(pl.col("status") == STATUS_OK).unique("location", keep="first", maintain_order=True)
    train_mask = (readable["split"] == split_order[0]).to_numpy()
    cost: dict[str, float] = {}

    # 1. Which features must be computed: the model decides whether every embedding is stale.
    model_info = _model_is_current(files, settings, int(train_mask.sum()))
    retrain = model_info is None
    model_tag = None if retrain else model_info["model_id"]
    # Colour descriptors come from the same pixels as the embeddings and are cached beside them.
    cached_embeddings, embed_todo = (feature_cache.split_by_cache(readable, None, "") if retrain else
                                     feature_cache.split_by_cache(readable, feature_cache.read_cache(files.embeddings),
                                                                  f"{model_tag}_{COLOUR_TAG}"))
    keypoint_tag = settings.keypoints.cache_tag()
    cached_keypoints, keypoint_todo = feature_cache.split_by_cache(
        readable, feature_cache.read_cache(files.keypoints), keypoint_tag)
    need_pixels = set(embed_todo["location"].to_list())
    need_keypoints = set(keypoint_todo["location"].to_list())
    to_decode = [loc for loc in readable["location"].to_list() if loc in need_pixels or loc in need_keypoints]

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, settings.workers)) as pool:
        decoded = dict(zip(to_decode, pool.map(
            lambda loc: _decode(loc, settings.embedding.image_size if loc in need_pixels else None,
                                settings.keypoints if loc in need_keypoints else None), to_decode), strict=True))
    cost["decode_and_keypoints_seconds"] = time.perf_counter() - started
    undecodable = {loc for loc, item in decoded.items() if item is None}
    if undecodable:
        readable = readable.filter(~pl.col("location").is_in(list(undecodable)))
        train_mask = (readable["split"] == split_order[0]).to_numpy()

    # 2. Keypoints: new ones joined to the cached, one row per image.
    new_keypoints = keypoint_todo.filter(~pl.col("location").is_in(list(undecodable))).select(
        feature_cache.KEY_COLUMNS).with_columns(pl.lit(keypoint_tag).alias(feature_cache.TAG))
    rows = [decoded[loc].keypoints.to_row() for loc in new_keypoints["location"].to_list()]
    new_keypoints = pl.concat([new_keypoints, pl.DataFrame(rows, schema={
        "keypoints": pl.Int32, "width": pl.Int32, "height": pl.Int32, "points": pl.Binary, "descriptors": pl.Binary})],
        how="horizontal") if rows else pl.DataFrame()
    keypoint_table = feature_cache.store(cached_keypoints, new_keypoints, files.keypoints)
    keypoints_of = {row["location"]: Keypoints.from_row(row) for row in keypoint_table.iter_rows(named=True)}

    # 3. The embedding model: the kept one, or one trained now on the training split.
    if retrain:
        train_locations = readable.filter(train_mask)["location"].to_list()
        train_pixels = np.stack([decoded[loc].pixels for loc in train_locations])
        codes = readable.filter(train_mask)["patient_id"].rank("dense").to_numpy().astype(np.int64)
        log(f"training the same-subject embedding on {len(train_locations)} {split_order[0]} images")
        trained = train_embedding(train_pixels, codes, settings.embedding, log=log)
        model, device = trained.model, trained.device
        cost["embedding_training_seconds"] = trained.seconds
        # Named by its weights: the same training gives the same id, so cached embeddings stay valid.
        model_tag = f"{settings.embedding.model_tag()}_{_weights_digest(model)}"
        model_info = {"model_id": model_tag, "settings_tag": settings.embedding.model_tag(),
                      "training_images": trained.images, "training_patients": trained.patients,
                      "final_loss": trained.history[-1]["loss"], "seconds": trained.seconds}
        replace_atomically(files.model, lambda path: save_model(model.cpu(), settings.embedding, path, {}))
        write_json(model_info, files.model_info)
        model = model.to(device)
    else:
        model, _ = load_model(files.model)
        from leakage_pipeline.training.trainer import pick_device

        device = pick_device(settings.embedding.device)
        model = model.to(device)

    # 4. Embeddings of the images not cached under this model.
    embed_locations = [loc for loc in embed_todo["location"].to_list() if loc not in undecodable]
    started = time.perf_counter()
    size = settings.embedding.image_size
    pixels = np.stack([decoded[loc].pixels for loc in embed_locations]) if embed_locations else \
        np.zeros((0, 3, size, size), np.uint8)
    vectors, colours = embed(model, pixels, device), colour_descriptors(pixels)
    cost["embedding_seconds"] = time.perf_counter() - started
    new_embeddings = embed_todo.filter(pl.col("location").is_in(embed_locations)).select(
        feature_cache.KEY_COLUMNS).with_columns(
        pl.lit(f"{model_tag}_{COLOUR_TAG}").alias(feature_cache.TAG),
        pl.Series("embedding", vectors, dtype=pl.Array(pl.Float32, settings.embedding.dimensions)),
        pl.Series("colour", colours, dtype=pl.Array(pl.Float32, COLOUR_DIMENSIONS)))
    embedding_table = feature_cache.store(cached_embeddings, new_embeddings, files.embeddings)
    row_of = {loc: index for index, loc in enumerate(embedding_table["location"].to_list())}
    order = [row_of[loc] for loc in readable["location"].to_list()]
    matrix = embedding_table["embedding"].to_numpy()[order].astype(np.float32)
    colour_matrix = embedding_table["colour"].to_numpy()[order].astype(np.float32)

    # 5. Candidates: each later split against every earlier one; calibration pairs within training.
    started = time.perf_counter()
    words = word_vectors([keypoints_of[loc].descriptors for loc in readable["location"].to_list()], train_mask,
                         settings.vocabulary)
    cost["visual_words_seconds"] = time.perf_counter() - started

    def others(query_rows: np.ndarray, reference_rows: np.ndarray) -> list:
        return [(words[query_rows], words[reference_rows], settings.search.words_top_k),
                (colour_matrix[query_rows], colour_matrix[reference_rows], settings.search.colour_top_k)]

    query_index, reference_index, ranks, cosines = [], [], [], []
    splits = readable["split"].to_numpy()
    queries_searched = 0
    for position, split in enumerate(split_order[1:], start=1):
        queries = np.flatnonzero(splits == split)
        references = np.flatnonzero(np.isin(splits, split_order[:position]))
        if not len(queries) or not len(references):
            continue
        similarity, found = propose(matrix[queries], matrix[references], others(queries, references), settings.search)
        valid = found >= 0
        query_index.append(np.repeat(queries, valid.sum(axis=1)))
        reference_index.append(references[found[valid]])
        ranks.append(np.tile(np.arange(1, found.shape[1] + 1), (len(queries), 1))[valid])
        cosines.append(similarity[valid])
        queries_searched += len(queries)
    train_rows = np.flatnonzero(train_mask)
    wanted = max(settings.min_calibration_queries, queries_searched)
    sample = np.sort(np.random.default_rng(settings.seed).choice(train_rows, min(wanted, len(train_rows)),
                                                                 replace=False))
    similarity, found = propose(matrix[sample], matrix[train_rows], others(sample, train_rows), settings.search)
    cost["search_seconds"] = time.perf_counter() - started
    cost["search_queries"] = queries_searched + len(sample)
    calibration_a = np.repeat(sample, found.shape[1])
    calibration_b = train_rows[np.where(found >= 0, found, 0)].reshape(-1)
    keep = (found.reshape(-1) >= 0) & (calibration_a != calibration_b)
    # Each unordered pair once: a pair found from both ends would count twice.
    low, high = np.minimum(calibration_a, calibration_b)[keep], np.maximum(calibration_a, calibration_b)[keep]
    unique_pairs = np.unique(np.stack([low, high], 1), axis=0) if keep.any() else np.zeros((0, 2), np.int64)

    audit_q = np.concatenate(query_index) if query_index else np.zeros(0, np.int64)
    audit_r = np.concatenate(reference_index) if reference_index else np.zeros(0, np.int64)
    locations = readable["location"].to_list()
    all_q = np.concatenate([audit_q, unique_pairs[:, 0]])
    all_r = np.concatenate([audit_r, unique_pairs[:, 1]])

    # 6. Verification of every candidate pair, on every core.
    started = time.perf_counter()
    matches = _verify_all([keypoints_of[locations[i]] for i in all_q], [keypoints_of[locations[i]] for i in all_r],
                          settings)
    cost["verification_seconds"] = time.perf_counter() - started
    cost["verified_pairs"] = len(matches)
    inliers = np.array([m.inliers for m in matches], np.int32)
    mirrored_fit = np.array([m.mirrored for m in matches], bool)

    # 7. Calibration on the training pairs, then the decision on the audited pairs.
    patients = readable["patient_id"].to_numpy()
    calibration_inliers = inliers[len(audit_q):]
    same_patient = patients[unique_pairs[:, 0]] == patients[unique_pairs[:, 1]]
    audit_inliers = inliers[: len(audit_q)]
    calibration = calibrate(calibration_inliers, same_patient, settings.calibration, audit_inliers)
    threshold = calibration.threshold
    accepted = audit_inliers >= threshold if threshold is not None else np.zeros(len(audit_q), bool)
    review_floor = calibration.review_threshold
    review = ((audit_inliers >= review_floor) & ~accepted) if review_floor is not None else np.zeros(len(audit_q), bool)
    sides = readable.select(_SIDE)
    pairs = pl.concat([
        sides[audit_q].rename({c: f"query_{c}" for c in _SIDE}),
        sides[audit_r].rename({c: f"reference_{c}" for c in _SIDE}),
        pl.DataFrame({"rank": np.concatenate(ranks) if ranks else np.zeros(0, np.int32),
                      "cosine": np.concatenate(cosines) if cosines else np.zeros(0, np.float32),
                      "inliers": audit_inliers, "mirrored": mirrored_fit[: len(audit_q)],
                      "accepted": accepted, "review": review}),
    ], how="horizontal").cast(PAIR_SCHEMA).sort("query_split", "query_image_uri", "rank")

    summary = {
        "status": RAN,
        "reason": None if threshold is not None else calibration.reason,
        "images": readable.height,
        "embedded": len(embed_locations), "embeddings_reused": cached_embeddings.height,
        "keypoints_extracted": new_keypoints.height, "keypoints_reused": cached_keypoints.height,
        "undecodable": len(undecodable),
        "model": {**model_info, "trained_now": retrain},
        "top_k": settings.search.top_k, "words_top_k": settings.search.words_top_k,
        "colour_top_k": settings.search.colour_top_k,
        "candidate_pairs": int(len(audit_q)),
        "accepted_pairs": int(accepted.sum()),
        "review_pairs": int(review.sum()),
        "accepted_query_images": pairs.filter(pl.col("accepted"))["query_location"].n_unique(),
        "calibration": {**{k: v for k, v in calibration.to_dict().items() if k != "curve"},
                        "calibration_queries": int(len(sample)), "curve": calibration.curve},
        "cost": cost,
    }
    return SameSubjectRun(pairs=pairs, summary=summary, calibration=calibration)
