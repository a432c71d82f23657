"""How a dataset's assets and checks are made: a plain function per step, wrapped once per dataset.

Every asset and check body is a module-level function of one :class:`Step`, which gives it the
run's context, the dataset (its name and splits) and that dataset's resources. The wrappers here
turn each body into the dataset's own asset (key ``[dataset, body name]``) or check, so one body
serves every dataset a deployment audits.
"""


import inspect
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import dagster as dg

from leakage_pipeline.defs.dataset import Dataset
from leakage_pipeline.defs.settings import AuditSettings, TrainingSettings
from leakage_pipeline.storage.files import read_json, write_json
from leakage_pipeline.storage.output_files import OutputFiles

AUDIT = "audit"
TRAINING = "training"
PIPES_CLIENT = "pipes_subprocess_client"  # one client for every dataset
GCS = "gcs"  # one GCS connection for every dataset
TRAINING_POD = "training_pod"  # a dataset's pod for training, when its YAML asks for one
PIPES_K8S_CLIENT = "pipes_k8s_client"  # one client for every dataset that trains in pods
SHARED = (PIPES_CLIENT, PIPES_K8S_CLIENT)


@dataclass(frozen=True)
class Step:
    """What one step of one dataset's run works with."""

    context: "dg.AssetExecutionContext | dg.AssetCheckExecutionContext | dg.OpExecutionContext"
    dataset: Dataset

    @property
    def splits(self) -> list[str]:
        return list(self.dataset.splits)

    @property
    def audit(self) -> AuditSettings:
        return getattr(self.context.resources, self.dataset.resource_key(AUDIT))

    @property
    def training(self) -> TrainingSettings:
        return getattr(self.context.resources, self.dataset.resource_key(TRAINING))

    @property
    def pipes(self) -> dg.PipesSubprocessClient:
        return getattr(self.context.resources, PIPES_CLIENT)

    @property
    def training_pod(self):
        """The dataset's :class:`~leakage_pipeline.defs.training_pod.TrainingPod`, or None."""
        if self.dataset.training_pod is None:
            return None
        return getattr(self.context.resources, self.dataset.resource_key(TRAINING_POD))

    @property
    def pipes_k8s(self):
        return getattr(self.context.resources, PIPES_K8S_CLIENT)

    @cached_property
    def files(self) -> OutputFiles:
        return OutputFiles(self.audit.output_dir, self.audit.scratch_dir)

    @property
    def log(self):
        return self.context.log


# Steps that read the manifest or images (a bucket's hiccup outlasting the client's own retries) try
# again, twice at most; a ValueError (a bad manifest, location or setting) never: the same input fails the same way.
IO_RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)


def _run_body(body: Callable, *args):
    """``body(*args)``; a ValueError is bad input, so it fails the step without a retry."""
    try:
        return body(*args)
    except ValueError as error:
        raise dg.Failure(description=f"{type(error).__module__}.{type(error).__name__}: {error}",
                         allow_retries=False) from error


def _code_references(*bodies: Callable) -> dict:
    """Where each body is, for the asset's page ("Open in editor"); a beta Dagster feature, used knowingly."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return {"dagster/code_references": dg.CodeReferencesMetadataValue(code_references=[
            dg.LocalFileCodeReference(file_path=inspect.getsourcefile(body), line_number=inspect.getsourcelines(body)[1],
                                      label=body.__name__) for body in bodies])}


# A run covers partitions when it carries one of these tags (a partition, or a range of them).
_PARTITION_TAGS = ("dagster/partition", "dagster/asset_partition_range_start")


def _refuse_run_without_splits(context: "dg.AssetExecutionContext | dg.OpExecutionContext") -> None:
    """Before any step writes: a run that materializes an asset partitioned by split must name its splits.
    Launched without (the job, or "Materialize all", with no partition chosen) it would write the
    unpartitioned assets and then fail in the first split step; it fails here, in its first step, instead."""
    if any(tag in context.run.tags for tag in _PARTITION_TAGS):
        return
    layer = context.job_def.asset_layer
    partitioned = sorted(key.to_user_string() for key in layer.selected_asset_keys if layer.get(key).partitions_def)
    if partitioned:
        raise dg.Failure(description=(
            f"this run has no split partitions, and {', '.join(partitioned)} is partitioned by split: launch it "
            "with a split or a range of splits (choose them all to audit every split)"), allow_retries=False)


def _resource_keys(dataset: Dataset, resources: Sequence[str]) -> set[str]:
    """Every step may read or write gs:// locations, so each needs the GCS resource set up."""
    return {GCS} | {name if name in SHARED else dataset.resource_key(name) for name in resources}


def asset_key(dataset: Dataset, name: str) -> dg.AssetKey:
    return dg.AssetKey([dataset.name, name])


def dataset_asset(
    dataset: Dataset, body: Callable[[Step], dg.MaterializeResult], *, group: str, deps: Sequence[str] = (),
    kinds: set[str], resources: Sequence[str] = (AUDIT,), reads_storage: bool = False,
) -> dg.AssetsDefinition:
    """``body`` as the dataset's asset ``[dataset.name, body.__name__]``, with the dataset's owners and tags;
    ``reads_storage`` (the manifest, images) retries it under :data:`IO_RETRY`."""

    @dg.asset(
        name=body.__name__, key_prefix=[dataset.name], group_name=f"{dataset.name}_{group}",
        deps=[asset_key(dataset, name) for name in deps], kinds=kinds, description=inspect.getdoc(body),
        required_resource_keys=_resource_keys(dataset, resources), pool=dataset.pool, owners=list(dataset.owners),
        tags=dataset.tags, metadata=_code_references(body), retry_policy=IO_RETRY if reads_storage else None,
    )
    def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        _refuse_run_without_splits(context)
        return _run_body(body, Step(context, dataset))

    return _asset


def dataset_asset_per_split(
    dataset: Dataset, per_split: Callable[[Step, str], dict], finish: Callable[[Step, dict[str, dict]], dg.MaterializeResult],
    *, group: str, after: str, kinds: set[str], resources: Sequence[str] = (AUDIT,),
) -> dg.AssetsDefinition:
    """The dataset's asset ``[dataset.name, finish.__name__]``, partitioned by split, downstream of
    ``after``: one step per split partition runs ``per_split(step, split)``, then a last step runs
    ``finish(step, summaries)`` with each split's returned summary and materializes the partitions.

    A run covers a range of split partitions (a single-run backfill: a beta Dagster feature this
    pipeline relies on knowingly, so its notice is silenced here), and the split steps of one run are
    independent: an executor with a process or a pod per step (multiprocess, ``k8s_job_executor``)
    runs them at once. A split step outside the run's range does nothing. Summaries travel as JSON
    files under the output root, which every step's process or pod reaches, so no IO manager is needed.
    """
    required = _resource_keys(dataset, resources)
    # Op names are global to a code location, so each carries the dataset's name.

    def split_step(split: str) -> dg.OpDefinition:
        @dg.op(name=f"{dataset.name}_{per_split.__name__}_{split}", ins={"after": dg.In(dg.Nothing)}, out=dg.Out(dg.Nothing),
               required_resource_keys=required, description=f"{inspect.getdoc(per_split)} (split {split})",
               pool=dataset.pool, retry_policy=IO_RETRY)
        def _split_step(context: dg.OpExecutionContext) -> None:
            _refuse_run_without_splits(context)
            if split not in context.partition_keys:
                context.log.info(f"split {split} is not in this run")
                return
            step = Step(context, dataset)
            write_json(_run_body(per_split, step, split), step.files.split_step_summary(finish.__name__, split))
        return _split_step

    @dg.op(name=f"{dataset.name}_{finish.__name__}", ins={split: dg.In(dg.Nothing) for split in dataset.splits},
           required_resource_keys=required, pool=dataset.pool)
    def finish_step(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        step = Step(context, dataset)
        return finish(step, {split: read_json(step.files.split_step_summary(finish.__name__, split))
                             for split in context.partition_keys})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)

        @dg.graph_asset(
            name=finish.__name__, key_prefix=[dataset.name], group_name=f"{dataset.name}_{group}", kinds=kinds,
            description=inspect.getdoc(finish), ins={"after": dg.AssetIn(asset_key(dataset, after), dagster_type=dg.Nothing)},
            owners=list(dataset.owners), tags=dataset.tags, metadata=_code_references(per_split, finish),
            partitions_def=dg.StaticPartitionsDefinition(list(dataset.splits)),
            backfill_policy=dg.BackfillPolicy.single_run(),
        )
        def _asset(after):
            return finish_step(**{split: split_step(split)(after) for split in dataset.splits})

    return _asset


def dataset_check(
    dataset: Dataset, body: Callable[[Step], dg.AssetCheckResult], *, asset: str,
) -> dg.AssetChecksDefinition:
    """``body`` as an asset check on the dataset's asset ``asset``."""

    @dg.asset_check(asset=asset_key(dataset, asset), name=body.__name__, description=inspect.getdoc(body),
                    required_resource_keys=_resource_keys(dataset, [AUDIT]), pool=dataset.pool)
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return body(Step(context, dataset))

    return _check
