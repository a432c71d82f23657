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


def _resource_keys(dataset: Dataset, resources: Sequence[str]) -> set[str]:
    """Every step may read or write gs:// locations, so each needs the GCS resource set up."""
    return {GCS} | {name if name in SHARED else dataset.resource_key(name) for name in resources}


def asset_key(dataset: Dataset, name: str) -> dg.AssetKey:
    return dg.AssetKey([dataset.name, name])


def dataset_asset(
    dataset: Dataset, body: Callable[[Step], dg.MaterializeResult], *, group: str, deps: Sequence[str] = (),
    kinds: set[str], resources: Sequence[str] = (AUDIT,),
) -> dg.AssetsDefinition:
    """``body`` as the dataset's asset ``[dataset.name, body.__name__]``."""

    @dg.asset(
        name=body.__name__, key_prefix=[dataset.name], group_name=f"{dataset.name}_{group}",
        deps=[asset_key(dataset, name) for name in deps], kinds=kinds, description=inspect.getdoc(body),
        required_resource_keys=_resource_keys(dataset, resources),
    )
    def _asset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        return body(Step(context, dataset))

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
               required_resource_keys=required, description=f"{inspect.getdoc(per_split)} (split {split})")
        def _split_step(context: dg.OpExecutionContext) -> None:
            if split not in context.partition_keys:
                context.log.info(f"split {split} is not in this run")
                return
            step = Step(context, dataset)
            write_json(per_split(step, split), step.files.split_step_summary(finish.__name__, split))
        return _split_step

    @dg.op(name=f"{dataset.name}_{finish.__name__}", ins={split: dg.In(dg.Nothing) for split in dataset.splits},
           required_resource_keys=required)
    def finish_step(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        step = Step(context, dataset)
        return finish(step, {split: read_json(step.files.split_step_summary(finish.__name__, split))
                             for split in context.partition_keys})

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)

        @dg.graph_asset(
            name=finish.__name__, key_prefix=[dataset.name], group_name=f"{dataset.name}_{group}", kinds=kinds,
            description=inspect.getdoc(finish), ins={"after": dg.AssetIn(asset_key(dataset, after), dagster_type=dg.Nothing)},
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
                    required_resource_keys=_resource_keys(dataset, [AUDIT]))
    def _check(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        return body(Step(context, dataset))

    return _check
