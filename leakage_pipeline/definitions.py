"""Everything Dagster loads (``dagster dev``, ``dg``, deployments; see pyproject.toml): one set of
definitions per dataset YAML (see :mod:`leakage_pipeline.defs.dataset`), plus whatever
``dg scaffold defs`` adds under ``defs/``. Loads neither torch nor numba: the steps import them."""

from pathlib import Path

import dagster as dg

from leakage_pipeline.defs.dataset import load_datasets
from leakage_pipeline.defs.dataset_defs import build_dataset_defs, shared_resources
from leakage_pipeline.defs.step_executor import step_executor


@dg.definitions
def defs() -> dg.Definitions:
    datasets = load_datasets()
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent / "defs"),
        *(build_dataset_defs(dataset) for dataset in datasets),
        dg.Definitions(
            resources=shared_resources(training_pods=any(d.training_pod is not None for d in datasets)),
            executor=step_executor(),
        ),
    )
