"""Every deployment of infra/prefect.yaml, read as Prefect and its workers read it: the entrypoint loads and
takes the parameters, the job variables fit the pool's template and render to the job the worker would
start (GPU requests included), and image deployments build, push and run the image that holds the code."""
from __future__ import annotations

import asyncio
import importlib.util
import re
from pathlib import Path

import pytest
import yaml
from docker.models.containers import _create_container_args
from prefect.flows import load_flow_from_entrypoint
from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import validate
from prefect.utilities.templating import apply_values
from prefect.workers.process import ProcessWorker
from prefect_docker.worker import DockerWorker, DockerWorkerJobConfiguration
from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

REPO = Path(__file__).resolve().parents[1]
SPEC = yaml.safe_load((REPO / "infra" / "prefect.yaml").read_text())
DEPLOYMENTS = {d["name"]: d for d in SPEC["deployments"]}
POOL_TYPES = SPEC["definitions"]["work_pools"]
BUILD = "prefect_docker.deployments.steps.build_docker_image"
PUSH = "prefect_docker.deployments.steps.push_docker_image"
CHDIR = "prefect.deployments.steps.set_working_directory"
IMAGE = "an.example:5000/team/unish:2026"  # stands for the build step's output `{{ build-image.image }}`


def k8s_template() -> dict:
    spec = importlib.util.spec_from_file_location("k8s_work_pool", REPO / "infra" / "k8s" / "work_pool.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.base_job_template()


TEMPLATES = {"process": ProcessWorker.get_default_base_job_template(),
             "docker": DockerWorker.get_default_base_job_template(), "kubernetes": k8s_template()}
CONFIGS = {"docker": DockerWorkerJobConfiguration, "kubernetes": KubernetesWorkerJobConfiguration}


def pool_type(dep: dict) -> str:
    return POOL_TYPES[dep["work_pool"]["name"]]


def job_variables(dep: dict) -> dict:
    return apply_values(dep["work_pool"].get("job_variables", {}), {"build-image": {"image": IMAGE}})


def render(dep: dict):
    """The job configuration a worker of the deployment's pool builds for a flow run."""
    kind = pool_type(dep)
    return asyncio.run(CONFIGS[kind].from_template_and_values(TEMPLATES[kind], job_variables(dep)))


def wants_gpu(dep: dict) -> bool:
    return "gpu" in dep["tags"]


def test_every_pool_kind_is_used():
    assert set(POOL_TYPES.values()) == {"process", "docker", "kubernetes"}
    assert {pool_type(d) for d in DEPLOYMENTS.values()} == {"process", "docker", "kubernetes"}
    # each GPU job has a Docker and a Kubernetes deployment with the same parameters
    for name, dep in DEPLOYMENTS.items():
        if wants_gpu(dep) and pool_type(dep) == "docker":
            assert DEPLOYMENTS[f"{name}-k8s"]["parameters"] == dep["parameters"]


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_entrypoint_loads_and_takes_the_parameters(name):
    dep = DEPLOYMENTS[name]
    path, _, func = dep["entrypoint"].partition(":")
    flow = load_flow_from_entrypoint(f"{REPO / path}:{func}")
    schema = parameter_schema(flow).model_dump_for_openapi()  # what `prefect deploy` stores and the server checks
    assert validate(dep["parameters"], schema, raise_on_error=True) == []
    flow.validate_parameters(dep["parameters"])  # and the flow's own pydantic models (CurateConfig, ...)


@pytest.mark.parametrize("name", DEPLOYMENTS)
def test_job_variables_fit_the_pool_template(name):
    dep = DEPLOYMENTS[name]
    schema = TEMPLATES[pool_type(dep)]["variables"]
    unknown = set(job_variables(dep)) - set(schema["properties"])
    assert not unknown, f"{name}: {unknown} are not variables of a {pool_type(dep)} pool: the worker ignores them"
    validate(job_variables(dep), schema, raise_on_error=True, ignore_required=True)


@pytest.mark.parametrize("name", [n for n, d in DEPLOYMENTS.items() if pool_type(d) == "docker"])
def test_docker_jobs_request_gpus_exactly_when_they_need_them(name):
    dep = DEPLOYMENTS[name]
    config = render(dep)
    assert config.image == IMAGE and "/data" in " ".join(config.volumes)
    # docker-py's own translation of containers.create(**kwargs) (the client adds its API version; device
    # requests need 1.40+): they go into the host config, as `docker run --gpus` puts them
    kwargs = {"image": config.image, "version": "1.44", **(config.container_create_kwargs or {})}
    host = _create_container_args(kwargs)["host_config"]
    requests = host.get("DeviceRequests") or []
    if not wants_gpu(dep):
        assert not requests
        return
    assert [r["Capabilities"] for r in requests] == [[["gpu"]]] and requests[0]["Driver"] == "nvidia"
    count = requests[0]["Count"]
    assert count == -1 or count >= dep["parameters"].get("nproc_per_node", 1)  # -1: every GPU of the host


@pytest.mark.parametrize("name", [n for n, d in DEPLOYMENTS.items() if pool_type(d) == "kubernetes"])
def test_kubernetes_jobs_request_gpus_exactly_when_they_need_them(name):
    dep = DEPLOYMENTS[name]
    manifest = render(dep).job_manifest
    pod = manifest["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == IMAGE
    limits = container.get("resources", {}).get("limits", {})
    if wants_gpu(dep):
        assert int(limits["nvidia.com/gpu"]) >= dep["parameters"].get("nproc_per_node", 1)
    else:
        assert "nvidia.com/gpu" not in limits
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/data", "/weights", "/dev/shm"}
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims["data"] == "unish-data" and claims["weights"] == "unish-weights"


@pytest.mark.parametrize("name", [n for n, d in DEPLOYMENTS.items() if pool_type(d) != "process"])
def test_image_deployments_build_push_and_run_the_code_in_the_image(name, monkeypatch):
    dep = DEPLOYMENTS[name]
    (build,) = [s[BUILD] for s in dep["build"] if BUILD in s]
    (push,) = [s[PUSH] for s in dep["push"] if PUSH in s]
    dockerfile = REPO / build["dockerfile"]
    assert dockerfile.is_file()
    assert ("cuda" in dockerfile.name) == wants_gpu(dep), "GPU jobs run the CUDA image, CPU jobs the CPU one"
    # The registry is the user's: the image name starts with it, the push sends the built name and tag.
    monkeypatch.setenv("UNISH_REGISTRY", "ghcr.io/someone")  # `{{ $VAR }}` reads the environment
    resolved = apply_values(build, {})
    assert re.fullmatch(r"ghcr\.io/someone/unish-[a-z]+", resolved["image_name"])
    assert push == {"image_name": f"{{{{ {build['id']}.image_name }}}}", "tag": f"{{{{ {build['id']}.tag }}}}"}
    assert dep["work_pool"]["job_variables"]["image"] == f"{{{{ {build['id']}.image }}}}"
    # The run starts in the image's WORKDIR, where the code (and the entrypoint's file) is.
    workdir = re.findall(r"^WORKDIR\s+(\S+)", dockerfile.read_text(), re.M)[-1]
    assert [s[CHDIR]["directory"] for s in dep["pull"]] == [workdir]
    assert (REPO / dep["entrypoint"].partition(":")[0]).is_file()


def test_the_process_deployment_runs_from_the_checkout_named_by_the_worker():
    (local,) = [d for d in DEPLOYMENTS.values() if pool_type(d) == "process"]
    assert "build" not in local and "push" not in local
    assert [s[CHDIR]["directory"] for s in local["pull"]] == ["{{ $UNISH_REPO }}"]
    for key in ("manifest", "out"):  # relative to the checkout, so the defaults run there as they are
        assert not Path(local["parameters"][key]).is_absolute()
    assert (REPO / local["parameters"]["manifest"]).is_file()
