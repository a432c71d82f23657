"""The training process Dagster Pipes launches: ``python -m leakage_pipeline.defs.training_process``.

It reads the :class:`TrainingJob` from the Pipes extras, streams progress to the run's log and
reports the model's metadata as the asset's materialization. Nothing here needs Dagster itself,
only ``dagster-pipes``, so the same entry point can run in a GPU pod.
"""

from dagster_pipes import open_dagster_pipes

from leakage_pipeline.training.training_job import TrainingJob, on_local_disk, run_training_job


def main() -> None:
    with open_dagster_pipes() as pipes:
        job = TrainingJob.from_dict(pipes.extras["job"])
        with on_local_disk(job) as local_job:  # a pod's job names gs:// locations
            summary = {**run_training_job(local_job, log=pipes.log.info), "model_dir": job.model_dir}
        pipes.report_asset_materialization(metadata={
            **{key: value for key, value in summary.items() if key != "model_dir"},
            "model_dir": {"raw_value": summary["model_dir"], "type": "path"},
        })


if __name__ == "__main__":
    main()
