"""Training in a GPU pod: the pod that dagster-k8s's PipesK8sClient would create is built by
dagster-k8s itself and validated against the Kubernetes API model; a dataset YAML with a
``training_pod`` block wires its models to that client; and the pod's side of a job (stores, split
table and model folder on GCS) runs against the storage emulator. No cluster is needed."""

import json

import dagster as dg
import kubernetes
import polars as pl
from dagster_k8s.pipes import build_pod_body

from leakage_pipeline.defs.dataset import Dataset
from leakage_pipeline.defs.dataset_defs import build_dataset_defs, shared_resources
from leakage_pipeline.defs.training_assets import TRAINING_POD_COMMAND
from leakage_pipeline.defs.training_pod import TrainingPod
from leakage_pipeline.storage.files import upload_tree
from leakage_pipeline.storage.output_files import PREDICTIONS_FILE
from leakage_pipeline.training.image_store import build_store
from leakage_pipeline.training.model_files import MODEL_FILE, PREPROCESSING_FILE
from leakage_pipeline.training.preprocessing import Preprocessing
from leakage_pipeline.training.settings import ClassifierSettings
from leakage_pipeline.training.training_job import (
    HISTORY_FILE,
    TrainingJob,
    on_local_disk,
    run_training_job,
)
from leakage_pipeline_tests.conftest import write_image
from leakage_pipeline_tests.test_gcs_outputs import bucket  # noqa: F401  (the emulator fixture)

POD = {"image": "registry.example/leakage-pipeline:0.1.0-cu128", "gpus": 1,
       "node_selector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
       "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}


def test_the_training_pod_requests_a_gpu_on_chosen_nodes_and_is_a_valid_pod():
    pod = TrainingPod(**POD)
    # dagster-k8s builds the V1Pod the client would create; an unknown field or a bad value raises here.
    model = build_pod_body("leakage-training", pod.image, TRAINING_POD_COMMAND, {"DAGSTER_PIPES_CONTEXT": "x"},
                           None, pod.pod_spec())
    assert isinstance(model, kubernetes.client.V1Pod)
    (container,) = model.spec.containers
    assert container.image == POD["image"] and container.command == TRAINING_POD_COMMAND
    assert container.resources.limits["nvidia.com/gpu"] == "1"
    assert model.spec.node_selector == POD["node_selector"]
    assert [t.key for t in model.spec.tolerations] == ["nvidia.com/gpu"] and model.spec.restart_policy == "Never"
    assert model.spec.volumes[0].empty_dir.size_limit == "50Gi"


def test_a_dataset_with_a_training_pod_trains_through_the_k8s_pipes_client():
    dataset = Dataset(name="ward", audit={"manifest_path": "gs://team/m.csv", "output_dir": "gs://team/out"},
                      training_pod=POD)
    defs = dg.Definitions.merge(build_dataset_defs(dataset), dg.Definitions(resources=shared_resources(training_pods=True)))
    graph = defs.resolve_asset_graph()
    for model in ("leak_free_model", "leaky_model"):
        node = graph.get(dg.AssetKey(["ward", model]))
        assert {"ward_training_pod", "pipes_k8s_client"} <= set(node.assets_def.required_resource_keys)
    assert defs.resolve_job_def("ward_training") is not None


def test_the_pods_side_of_a_job_reads_and_writes_the_bucket(bucket, tmp_path):  # noqa: F811
    rows = [{"location": str(write_image(tmp_path / "images" / f"{i}.png", i % 4)), "patient_id": f"p{i}",
             "label": "ab"[i % 2], "split": ("train", "val", "test")[i % 3]} for i in range(18)]
    table = pl.DataFrame(rows)
    shape = Preprocessing.for_shape(16, 3)
    stores = []
    for split in ("train", "val", "test"):
        local = tmp_path / "stores" / split
        hashes = table.filter(pl.col("split") == split).select(
            "location", sha256=pl.col("location"), status=pl.lit("ok"))
        build_store(hashes, local, shape)
        stores.append(f"gs://team/out/training/image_store/16px_3ch/split={split}")
        upload_tree(local, stores[-1])
    bucket.blob("out/training/leaky/split.parquet").upload_from_string(_parquet_bytes(table))
    job = TrainingJob(split_table="gs://team/out/training/leaky/split.parquet", store_dirs=tuple(stores),
                      class_names=("a", "b"), image_size=16, channels=3, train_split="train", val_split="val",
                      test_split="test", model_dir="gs://team/out/training/leaky",
                      settings=ClassifierSettings(epochs=1, batch_size=8))
    with on_local_disk(job) as local_job:
        assert not local_job.model_dir.startswith("gs://")
        summary = run_training_job(local_job, log=lambda line: None)
    written = {blob.name for blob in bucket.list_blobs(prefix="out/training/leaky/")}
    assert {f"out/training/leaky/{name}" for name in (MODEL_FILE, PREPROCESSING_FILE, HISTORY_FILE, PREDICTIONS_FILE)} <= written
    assert summary["test_images"] == 6
    history = json.loads(bucket.blob("out/training/leaky/history.json").download_as_text())
    assert len(history) == 1


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    import io

    buffer = io.BytesIO()
    frame.write_parquet(buffer)
    return buffer.getvalue()
