"""A compact uint8 array store of preprocessed images, one per split, rebuilt only for new images.

Each store directory holds ``images-<token>.npy`` (N, C, H, W uint8), ``index-<token>.parquet``
(location, sha256, row) and ``store.json`` naming the current token. ``store.json`` is written
last, so a killed build leaves the previous store intact. Rows are keyed by the image's sha256
(from the hash asset), so an unchanged image is never decoded twice, whatever its name.
"""

from __future__ import annotations

import secrets
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from PIL import UnidentifiedImageError

from leakage_pipeline.audit import image_source
from leakage_pipeline.audit.image_hashing import STATUS_OK
from leakage_pipeline.progress import ProgressReporter, start_progress
from leakage_pipeline.storage.files import read_json, read_parquet, write_json, write_parquet
from leakage_pipeline.training.preprocessing import Preprocessing

UNDECODABLE = "undecodable"
_POINTER = "store.json"
INDEX_SCHEMA = {"location": pl.String, "sha256": pl.String, "row": pl.Int64}


@dataclass(frozen=True)
class StoreBuild:
    images: int  # locations in the store
    decoded: int  # images decoded by this build
    reused: int  # images taken from the previous store
    excluded: dict[str, int]  # images left out, by status


@dataclass(frozen=True)
class ImageStore:
    """The stores of several splits, read as one; images stay memory-mapped until gathered."""

    index: pl.DataFrame  # location, sha256, part, row
    parts: tuple[np.ndarray, ...]

    def gather(self, locations: list[str]) -> np.ndarray:
        """The images of ``locations``, in that order; every location must be in the store."""
        found = pl.DataFrame({"location": locations}, schema={"location": pl.String}).join(
            self.index, on="location", how="left", maintain_order="left")
        if found["row"].null_count():
            missing = found.filter(pl.col("row").is_null())["location"].to_list()
            raise KeyError(f"{len(missing)} image(s) not in the training image store, first: {missing[:3]}")
        part, row = found["part"].to_numpy(), found["row"].to_numpy()
        shape = self.parts[0].shape[1:] if self.parts else (0, 0, 0)
        images = np.empty((len(locations), *shape), np.uint8)
        for number, array in enumerate(self.parts):
            chosen = part == number
            images[chosen] = array[row[chosen]]
        return images


def _open_directory(directory: Path) -> tuple[pl.DataFrame, np.ndarray] | None:
    pointer = directory / _POINTER
    if not pointer.exists():
        return None
    token = read_json(pointer)["token"]
    return (read_parquet(directory / f"index-{token}.parquet"),
            np.load(directory / f"images-{token}.npy", mmap_mode="r"))


def open_stores(directories: list[Path]) -> ImageStore:
    """The stores found under ``directories`` (a split never built contributes nothing)."""
    opened = [store for store in map(_open_directory, directories) if store is not None]
    index = pl.concat([
        frame.with_columns(part=pl.lit(number, pl.Int64)) for number, (frame, _) in enumerate(opened)
    ]) if opened else pl.DataFrame(schema={**INDEX_SCHEMA, "part": pl.Int64})
    return ImageStore(index=index, parts=tuple(array for _, array in opened))


def _decode(location: str, preprocessing: Preprocessing, cpu: AbstractContextManager) -> np.ndarray | None:
    try:
        data = image_source.read_bytes(location)
        with cpu:
            return preprocessing.bytes_to_array(data)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        return None


def build_store(
    hashes: pl.DataFrame, directory: Path, preprocessing: Preprocessing, workers: int = 2,
    progress: ProgressReporter | None = None,
) -> StoreBuild:
    """Store every readable image of ``hashes`` (location, sha256, status) under ``directory``.

    ``progress`` hears how many of the images to decode are done.
    """
    excluded = dict(hashes.filter(pl.col("status") != STATUS_OK).group_by("status").len().iter_rows())
    readable = hashes.filter(pl.col("status") == STATUS_OK).select("location", "sha256").unique("location",
                                                                                                 keep="first")
    previous_index, previous_images = _open_directory(directory) or (None, None)
    known = (previous_index.unique("sha256").select("sha256", old_row="row") if previous_index is not None
             else pl.DataFrame(schema={"sha256": pl.String, "old_row": pl.Int64}))
    contents = readable.unique("sha256", keep="first", maintain_order=True).join(known, on="sha256", how="left")
    reused = contents.filter(pl.col("old_row").is_not_null())
    to_decode = contents.filter(pl.col("old_row").is_null())

    # Written straight into the memory-mapped array, so memory stays flat however many images are new.
    # An image that fails to decode leaves an unused row of zeros that no index entry points to.
    token = secrets.token_hex(6)
    directory.mkdir(parents=True, exist_ok=True)
    shape = (contents.height, preprocessing.channels, preprocessing.size, preprocessing.size)
    array = np.lib.format.open_memmap(directory / f"images-{token}.npy", mode="w+", dtype=np.uint8, shape=shape)
    if reused.height:
        array[: reused.height] = previous_images[reused["old_row"].to_numpy()]
    failed: set[str] = set()
    decoding = start_progress(progress, to_decode.height, "images")
    locations = to_decode["location"].to_list()
    with image_source.reading_pool(locations, workers) as (pool, cpu):
        decoded = pool.map(lambda location: _decode(location, preprocessing, cpu), locations)
        for offset, (sha, image) in enumerate(zip(to_decode["sha256"].to_list(), decoded, strict=True)):
            if image is None:
                failed.add(sha)
            else:
                array[reused.height + offset] = image
            decoding.advance()
    decoding.finish()
    array.flush()
    del array
    if failed:
        excluded[UNDECODABLE] = readable.filter(pl.col("sha256").is_in(list(failed))).height
    kept_sha = reused["sha256"].to_list() + to_decode["sha256"].to_list()
    row_of = pl.DataFrame({"sha256": kept_sha, "row": np.arange(len(kept_sha), dtype=np.int64)}).filter(
        ~pl.col("sha256").is_in(list(failed)))
    index = readable.join(row_of, on="sha256", how="inner", maintain_order="left").select(INDEX_SCHEMA.keys())
    write_parquet(index, directory / f"index-{token}.parquet")
    _commit(directory, token)
    return StoreBuild(images=index.height, decoded=to_decode.height - len(failed), reused=reused.height,
                      excluded=excluded)


def _commit(directory: Path, token: str) -> None:
    """Point ``store.json`` at the new token, then delete the files of every other token."""
    write_json({"token": token}, directory / _POINTER)
    for path in directory.iterdir():
        if path.suffix in (".npy", ".parquet") and token not in path.name:
            path.unlink()
