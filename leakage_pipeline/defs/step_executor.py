"""Where a run's steps execute, chosen by the deployment with ``LEAKAGE_STEP_EXECUTOR``.

- ``in_process`` (the default): every step in the run's own process; least overhead on a laptop,
  in CI or on one VM.
- ``multiprocess``: a process per step (forked from a server that imported the definitions once),
  so the split steps of hashing and of the image stores run at once on one machine.
- ``k8s``: dagster-k8s's ``k8s_job_executor`` (the ``deploy`` extra), a Kubernetes Job per step, so
  each split partition's hashing runs in its own pod. Its pods inherit the run launcher's image,
  environment and secrets; a run's config may set ``execution.config`` (``job_namespace``,
  ``step_k8s_config``, ``max_concurrent``).

The steps of one run share the output root's lock (see :mod:`leakage_pipeline.storage.output_lock`), and
they hand each other files under the output root, so every step needs to reach that root: under
``k8s`` it is a ``gs://`` location.
"""

import os

import dagster as dg

STEP_EXECUTOR_ENV = "LEAKAGE_STEP_EXECUTOR"


def step_executor() -> dg.ExecutorDefinition:
    """The executor ``LEAKAGE_STEP_EXECUTOR`` names; a name it does not know is refused, naming the known ones."""
    name = os.environ.get(STEP_EXECUTOR_ENV, "in_process")
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        # Each step's process forks from a server that has imported the definitions once, instead of
        # a fresh interpreter importing them again (seconds per step).
        return dg.multiprocess_executor.configured(
            {"start_method": {"forkserver": {"preload_modules": ["leakage_pipeline.definitions"]}}},
            name="multiprocess")
    if name == "k8s":
        from dagster_k8s import k8s_job_executor  # the deploy extra; a local code location never needs it

        return k8s_job_executor
    raise ValueError(f"{STEP_EXECUTOR_ENV}={name!r}: expected in_process, multiprocess or k8s")
