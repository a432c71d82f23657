"""Split assignment: keep the manifest's split, or assign one per patient.

Assignment is patient-level (every image of a patient lands in one split), deterministic
from a seed, stratified by each patient's majority label, and stable as data grows: the
previous assignments are a ledger, patients in it keep their split, and only new patients
are placed. New patients are visited in an order fixed by hashing (seed, patient id) and
each goes to the split furthest below its target share within the patient's label stratum.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from leakage_pipeline.audit.manifest import ManifestError

POLICY_KEEP = "keep"
POLICY_ASSIGN = "assign"
SPLIT_POLICIES = (POLICY_KEEP, POLICY_ASSIGN)
MOVED_WITH_IDENTITY = "moved_with_identity"  # split_source of an image the leak-free split moved


@dataclass(frozen=True)
class SplitPlan:
    """Split names in order of trust (training first, the held-out test last) and target shares."""

    names: tuple[str, ...] = ("train", "val", "test")
    fractions: tuple[float, ...] = (0.7, 0.15, 0.15)
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.names) != len(self.fractions) or len(self.names) < 2:
            raise ValueError("a split plan needs at least two split names, each with a fraction")
        if abs(sum(self.fractions) - 1.0) > 1e-6 or min(self.fractions) < 0:
            raise ValueError(f"split fractions {self.fractions} must be non-negative and sum to 1")


def keep_splits(manifest: pl.DataFrame) -> pl.DataFrame:
    """The manifest as is; every row must name its split."""
    missing = manifest["split"].is_null()
    if missing.any():
        rows = [i + 1 for i in missing.arg_true().to_list()]
        raise ManifestError(
            f"split policy 'keep' needs a split on every row; {len(rows)} row(s) have none, "
            f"first: {rows[:10]} (use split policy 'assign' to assign splits per patient)"
        )
    return manifest.with_columns(split_source=pl.lit("manifest"))


def _order_key(seed: int, patient_id: str) -> str:
    return hashlib.sha256(f"{seed}\x00{patient_id}".encode()).hexdigest()


def patient_strata(manifest: pl.DataFrame) -> pl.DataFrame:
    """One row per patient with its majority label (ties broken by label name)."""
    return (
        manifest.group_by("patient_id", "label").len()
        .sort(["patient_id", "len", "label"], descending=[False, True, False])
        .group_by("patient_id", maintain_order=True).first()
        .select("patient_id", stratum="label")
    )


def assign_splits(
    manifest: pl.DataFrame, plan: SplitPlan, ledger: pl.DataFrame | None = None
) -> pl.DataFrame:
    """The manifest with ``split`` set per patient; ``ledger`` holds earlier (patient_id, split) pairs."""
    strata = patient_strata(manifest)
    known: dict[str, str] = {}
    if ledger is not None and ledger.height:
        valid = ledger.filter(pl.col("split").is_in(plan.names)).unique("patient_id", keep="first")
        known = dict(zip(valid["patient_id"].to_list(), valid["split"].to_list(), strict=True))

    counts: dict[tuple[str, str], int] = {}
    for patient_id, stratum in strata.iter_rows():
        if patient_id in known:
            counts[(stratum, known[patient_id])] = counts.get((stratum, known[patient_id]), 0) + 1

    new_patients = sorted(
        (_order_key(plan.seed, pid), pid, stratum) for pid, stratum in strata.iter_rows() if pid not in known
    )
    assigned = dict(known)
    for _, patient_id, stratum in new_patients:
        placed = [counts.get((stratum, name), 0) for name in plan.names]
        total = sum(placed) + 1
        deficits = [fraction * total - count for fraction, count in zip(plan.fractions, placed, strict=True)]
        choice = plan.names[deficits.index(max(deficits))]
        assigned[patient_id] = choice
        counts[(stratum, choice)] = counts.get((stratum, choice), 0) + 1

    splits = pl.DataFrame(
        {"patient_id": list(assigned), "split": list(assigned.values()),
         "split_source": ["ledger" if pid in known else "assigned" for pid in assigned]},
    )
    return manifest.drop("split").join(splits, on="patient_id", how="left").select(
        manifest.columns + ["split_source"]
    )


def identities_whole(
    assignments: pl.DataFrame, identity_table: pl.DataFrame, split_order: list[str],
    ledger: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The split with every identity whole: all images of one identity (patient ids tied by duplicate
    images or a shared case id, see :mod:`leakage_pipeline.audit.identity`) in one split.

    Each identity goes where most of its images already are (ties: the earlier split), so a split
    that was already leak-free is unchanged and a leaky one moves as few images as it can. It is
    stable as data grows: ``ledger`` holds an earlier leak-free split's (patient_id, split), and
    those placements count before the current ones.
    """
    rank = {name: index for index, name in enumerate(split_order)}
    frame = assignments.join(identity_table, on="patient_id", how="left", maintain_order="left").with_columns(
        identity=pl.col("identity").fill_null(pl.col("patient_id")))
    if ledger is not None and ledger.height:
        frame = frame.join(ledger.select("patient_id", ledger_split="split").unique("patient_id"),
                           on="patient_id", how="left", maintain_order="left")
    else:
        frame = frame.with_columns(ledger_split=pl.lit(None, pl.String))
    placed = (
        frame.with_columns(
            from_ledger=pl.col("ledger_split").is_not_null(),
            candidate=pl.coalesce("ledger_split", "split"),
        )
        .group_by("identity", "from_ledger", "candidate").len("images")
        .with_columns(rank=pl.col("candidate").replace_strict(rank, return_dtype=pl.Int32))
        .sort(["identity", "from_ledger", "images", "rank"], descending=[False, True, True, False])
        .group_by("identity", maintain_order=True).first()
        .select("identity", leak_free_split="candidate")
    )
    return (
        frame.join(placed, on="identity", maintain_order="left")
        .with_columns(
            split_source=pl.when(pl.col("leak_free_split") == pl.col("split")).then(pl.col("split_source"))
            .otherwise(pl.lit(MOVED_WITH_IDENTITY)),
            split=pl.col("leak_free_split"),
        )
        .select(*assignments.columns, "identity")
    )


def leaky_split(frame: pl.DataFrame, split_order: list[str], seed: int) -> pl.DataFrame:
    """The leak a careless image-level split makes, applied to a leak-free split: about half of each
    test patient's images (rounded down) move to the training split, and as many random training
    images move to test so that the split sizes stay the same.

    The test images that stay are the ones a leak-free and a leaky model can be compared on: neither
    trained on them, but the leaky model saw their patients' other images.
    """
    train, test = split_order[0], split_order[-1]
    rng = np.random.default_rng(seed)
    indexed = frame.with_row_index("_index")
    to_train = []
    for indices in indexed.filter(pl.col("split") == test).group_by("patient_id", maintain_order=True).agg(
            "_index")["_index"].to_list():
        to_train += rng.choice(indices, len(indices) // 2, replace=False).tolist()
    train_rows = indexed.filter(pl.col("split") == train)["_index"].to_numpy()
    to_test = rng.choice(train_rows, min(len(to_train), len(train_rows)), replace=False).tolist()
    split = np.array(frame["split"].to_list(), dtype=object)
    split[to_train], split[to_test] = train, test
    return frame.with_columns(split=pl.Series(split.tolist(), dtype=pl.String))


def shared_patients(frame: pl.DataFrame, first: str, second: str) -> int:
    """How many patients have images in both splits ``first`` and ``second``."""
    def patients(name: str) -> set:
        return set(frame.filter(pl.col("split") == name)["patient_id"].to_list())

    return len(patients(first) & patients(second))
