"""Print the base job template of the `unish-k8s` work pool (JSON): prefect-kubernetes' default template
plus what unish's jobs need, each a job variable a deployment sets in infra/prefect.yaml:
  gpus           -> resources.limits["nvidia.com/gpu"] (left out when not set: CPU jobs)
  data_claim     -> a ReadWriteMany claim mounted at /data (manifests, runs, shards)
  weights_claim  -> a claim mounted read-only at /weights (UNISH_WEIGHTS in the image)
and a RAM-backed /dev/shm (DataLoader workers hand batches over through it; the pod default is 64 MB).

    python infra/k8s/work_pool.py > unish-k8s.json
    prefect work-pool create unish-k8s --type kubernetes --base-job-template unish-k8s.json
"""
from __future__ import annotations

import copy
import json
from typing import Any

GPU_RESOURCE = "nvidia.com/gpu"  # the NVIDIA device plugin's resource name


def base_job_template() -> dict[str, Any]:
    from prefect_kubernetes.worker import KubernetesWorker

    template = copy.deepcopy(KubernetesWorker.get_default_base_job_template())
    props = template["variables"]["properties"]
    props["gpus"] = {"type": "integer", "minimum": 1, "title": "GPUs",
                     "description": f"{GPU_RESOURCE} limit of the flow run's container"}
    props["data_claim"] = {"type": "string", "default": "unish-data", "title": "Data volume claim"}
    props["weights_claim"] = {"type": "string", "default": "unish-weights", "title": "Weights volume claim"}
    props["shm_size"] = {"type": "string", "default": "16Gi", "title": "/dev/shm size"}

    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    container["resources"]["limits"][GPU_RESOURCE] = "{{ gpus }}"  # an unset variable drops the key
    container["volumeMounts"] = [
        {"name": "data", "mountPath": "/data"},
        {"name": "weights", "mountPath": "/weights", "readOnly": True},
        {"name": "shm", "mountPath": "/dev/shm"},
    ]
    pod["volumes"] = [
        {"name": "data", "persistentVolumeClaim": {"claimName": "{{ data_claim }}"}},
        {"name": "weights", "persistentVolumeClaim": {"claimName": "{{ weights_claim }}", "readOnly": True}},
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "{{ shm_size }}"}},
    ]
    return template


if __name__ == "__main__":
    print(json.dumps(base_job_template(), indent=2))
