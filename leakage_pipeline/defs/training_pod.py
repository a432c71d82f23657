"""Training in a Kubernetes pod with GPUs, through dagster-k8s's ``PipesK8sClient``.

A dataset whose YAML has a ``training_pod`` block trains its two models in a pod of that image
instead of a local subprocess: the pod runs the same entry point (``training_process``), reads its
image stores and split table from the output root on GCS, writes its model back there, and streams
its log and metadata to the run through Pipes. ``dagster-k8s`` comes with the ``deploy`` extra.

    training_pod:
      image: REGISTRY/leakage-pipeline:0.1.0-cu128
      gpus: 1
      node_selector: {cloud.google.com/gke-accelerator: nvidia-l4}
      tolerations: [{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]
"""

import dagster as dg
from pydantic import ConfigDict

SCRATCH_MOUNT = "/scratch"  # the pod's local copies of stores and models (an emptyDir)


class Toleration(dg.Config):
    key: str
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = None


class TrainingPod(dg.ConfigurableResource):
    """The pod a dataset's models train in: its image, GPUs, CPU and memory, and where it may run."""

    model_config = ConfigDict(extra="forbid")  # a misspelt key must not leave the default in force

    image: str
    namespace: str | None = None  # default: the run's own
    gpus: int = 1
    cpu: str = "4"
    memory: str = "16Gi"
    scratch_size: str = "50Gi"
    node_selector: dict[str, str] = {}
    tolerations: list[Toleration] = []

    def pod_spec(self) -> dict:
        """The ``base_pod_spec`` for ``PipesK8sClient.run``: the container's resources with
        ``nvidia.com/gpu``, the node selector, the tolerations and a scratch volume (Kubernetes API
        field names)."""
        limits = {"cpu": self.cpu, "memory": self.memory}
        if self.gpus:
            limits["nvidia.com/gpu"] = str(self.gpus)
        return {
            "containers": [{
                "name": "training",  # Pipes fills in the image, command and environment
                "resources": {"requests": {"cpu": self.cpu, "memory": self.memory}, "limits": limits},
                "env": [{"name": "TMPDIR", "value": SCRATCH_MOUNT}],
                "volumeMounts": [{"name": "scratch", "mountPath": SCRATCH_MOUNT}],
            }],
            "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": self.scratch_size}}],
            "nodeSelector": dict(self.node_selector),
            "tolerations": [t.model_dump(exclude_none=True) for t in self.tolerations],
            "restartPolicy": "Never",
        }


def pipes_k8s_client():
    """The Pipes client that starts training pods (in the cluster the run itself runs in)."""
    from dagster_k8s import PipesK8sClient  # only deployments that train in pods install dagster-k8s

    return PipesK8sClient()
