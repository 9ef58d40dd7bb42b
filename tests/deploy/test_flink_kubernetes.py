"""The Flink-on-Kubernetes manifests (``deploy/flink-kubernetes/``), checked offline.

There is no Kubernetes, Docker or Flink cluster here, so what can be checked without one is checked: every YAML
document parses and is the kind the guide says; the images are pinned to the installed Beam and to the Flink version
of :mod:`tools.flink_cluster` (the local cluster ``make flink-up`` starts), so that a version bump there fails
here until the manifests follow; the worker-pool port, slots, parallelism and checkpoint interval are the local
cluster's; the ``FlinkDeployment`` spec validates against a JSON Schema written from the operator's documented CRD
fields; and the core Kubernetes objects have the fields and cross-references (selectors, ports, volumes, claims,
config maps) that the API server and kubelet would otherwise reject only at deploy time.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from apache_beam.version import __version__ as beam_version

from pipelines.flink import (
    CHECKPOINT_INTERVAL_MS,
    FLINK_MINOR,
    FLINK_VERSION,
    PARALLELISM,
    REST_PORT,
    WORKER_POOL_PORT,
)
from tests.pipelines.test_dataflow_package import REPO

FLINK_DIR = REPO / "deploy" / "flink-kubernetes"
SHARED_CLAIM = "profilestream-shared"
SHARED_MOUNT = "/mnt/profilestream"
WORKER_IMAGE = "profilestream-worker"
WORKER_POOL_CONTAINER = "beam-worker-pool"
KINDS = {
    "FlinkDeployment": "flink.apache.org/v1beta1",
    "Deployment": "apps/v1",
    "Service": "v1",
    "PersistentVolumeClaim": "v1",
    "ConfigMap": "v1",
    "Job": "batch/v1",
}
# The flags of Beam's FlinkJobServerDriver and of the JobServerDriver it extends (apache/beam,
# runners/flink/.../FlinkJobServerDriver.java and runners/java-job-service/.../JobServerDriver.java).
JOB_SERVER_FLAGS = {
    "--flink-master",
    "--flink-master-url",
    "--flink-conf-dir",
    "--job-host",
    "--job-port",
    "--artifact-port",
    "--expansion-port",
    "--artifacts-dir",
    "--clean-artifacts-per-job",
    "--history-size",
    "--sdk-worker-parallelism",
}
_RESOURCE = {
    "type": "object",
    "properties": {"cpu": {"type": "number"}, "memory": {"type": "string"}, "ephemeralStorage": {"type": "string"}},
    "additionalProperties": False,
}
_POD_TEMPLATE = {"type": "object", "properties": {"spec": {"type": "object"}, "metadata": {"type": "object"}}}
# The JobManager's and the TaskManager's specs have the same fields.
_COMPONENT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "resource": _RESOURCE,
        "replicas": {"type": "integer", "minimum": 1},
        "podTemplate": _POD_TEMPLATE,
    },
}
# FlinkDeploymentSpec as the operator documents it (docs/content/docs/custom-resource/reference.md and the CRD in
# helm/flink-kubernetes-operator/crds/flinkdeployments.flink.apache.org-v1.yml). flinkVersion: v1_16 to v1_20 from the
# CRD, v2_0 since operator 1.11, v2_1 since 1.13 (FLINK-38147); v2_2 is what FLINK_VERSION needs and is not confirmed
# by those sources, which the guide says and checks on the installed CRD.
FLINK_DEPLOYMENT_SPEC_SCHEMA = {
    "type": "object",
    "required": ["image", "flinkVersion", "serviceAccount", "jobManager", "taskManager"],
    "additionalProperties": False,
    "properties": {
        "image": {"type": "string"},
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "serviceAccount": {"type": "string"},
        "flinkVersion": {"enum": ["v1_16", "v1_17", "v1_18", "v1_19", "v1_20", "v2_0", "v2_1", "v2_2"]},
        "mode": {"enum": ["native", "standalone"]},
        "flinkConfiguration": {"type": "object", "additionalProperties": {"type": "string"}},
        "logConfiguration": {"type": "object", "additionalProperties": {"type": "string"}},
        "restartNonce": {"type": "integer"},
        "ingress": {"type": "object"},
        "podTemplate": _POD_TEMPLATE,
        "job": {"type": "object"},
        "jobManager": _COMPONENT,
        "taskManager": _COMPONENT,
    },
}


def manifests() -> list[dict[str, Any]]:
    """Every Kubernetes object in the folder's manifests (the kustomization is configuration, not an object)."""
    return [
        document
        for path in sorted(FLINK_DIR.glob("*.yaml"))
        if path.name != "kustomization.yaml"
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8"))
    ]


def manifest(kind: str) -> dict[str, Any]:
    """The one object of ``kind``."""
    (found,) = [document for document in manifests() if document["kind"] == kind]
    return found


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((FLINK_DIR / "kustomization.yaml").read_text(encoding="utf-8"))


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [candidate for candidate in pod_spec["containers"] if candidate["name"] == name]
    return found


def flink_pod_spec(role: str) -> dict[str, Any]:
    """The JobManager's or TaskManager's pod spec as the operator merges it: the shared template, then the role's
    (containers merged by name)."""
    spec = manifest("FlinkDeployment")["spec"]
    shared, own = spec["podTemplate"]["spec"], spec[role].get("podTemplate", {}).get("spec", {})
    containers = {entry["name"]: dict(entry) for entry in shared.get("containers", [])}
    for entry in own.get("containers", []):
        containers[entry["name"]] = {**containers.get(entry["name"], {}), **entry}
    return {
        **shared,
        **own,
        "containers": list(containers.values()),
        "volumes": shared["volumes"] + own.get("volumes", []),
    }


def pod_specs() -> dict[str, dict[str, Any]]:
    """Every pod spec the manifests make, by the object (and Flink role) that makes it."""
    return {
        "jobManager": flink_pod_spec("jobManager"),
        "taskManager": flink_pod_spec("taskManager"),
        "Deployment": manifest("Deployment")["spec"]["template"]["spec"],
        "Job": manifest("Job")["spec"]["template"]["spec"],
    }


def flink_rest_address() -> str:
    """The session cluster's REST service in the cluster, which the operator names ``<FlinkDeployment>-rest``."""
    return f"{manifest('FlinkDeployment')['metadata']['name']}-rest:{REST_PORT}"


def dockerfile_args(path: Path) -> dict[str, str | None]:
    """A Dockerfile's ``ARG`` names with their defaults."""
    found = re.findall(r"^ARG (\w+)(?:=(\S+))?$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return {name: default or None for name, default in found}


def dockerfile_base(path: Path) -> str:
    (base,) = re.findall(r"^FROM (\S+)$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    return base


def test_every_document_parses_as_the_kind_the_guide_names() -> None:
    objects = manifests()

    assert sorted(document["kind"] for document in objects) == sorted(KINDS)
    assert all(document["apiVersion"] == KINDS[document["kind"]] for document in objects)
    assert all(document["metadata"]["name"] for document in objects)
    assert all("namespace" not in document["metadata"] for document in objects)  # the kustomization sets it


def test_kustomization_applies_every_manifest_in_one_namespace() -> None:
    listed = kustomization()["resources"]

    assert sorted(listed) == sorted(path.name for path in FLINK_DIR.glob("*.yaml") if path.name != "kustomization.yaml")
    assert kustomization()["namespace"] == "profilestream"


def test_images_are_pinned_to_the_installed_beam_and_the_local_clusters_flink() -> None:
    spec = manifest("FlinkDeployment")["spec"]
    job_server = container(pod_specs()["Deployment"], "job-server")
    (worker_image,) = kustomization()["images"]
    dockerfile = FLINK_DIR / "Dockerfile"

    assert spec["image"] == f"flink:{FLINK_VERSION}"
    assert spec["flinkVersion"] == "v" + FLINK_MINOR.replace(".", "_")
    assert job_server["image"] == f"apache/beam_flink{FLINK_MINOR}_job_server:{beam_version}"
    assert dockerfile_args(dockerfile)["BEAM_VERSION"] == beam_version
    assert worker_image["name"] == WORKER_IMAGE
    assert worker_image["newTag"].endswith(f"-beam{beam_version}")


def test_worker_image_is_the_sdk_image_of_the_dataflow_templates_python() -> None:
    """The worker image is Beam's SDK image, its registry a build argument as in the Dataflow Dockerfile, and its
    Python the one the Dataflow launcher base runs (python311 there, python3.11 here)."""
    flink, dataflow = FLINK_DIR / "Dockerfile", REPO / "deploy" / "dataflow" / "Dockerfile"

    base = dockerfile_base(flink)
    (python,) = re.findall(r"beam_python(\d)\.(\d+)_sdk", base)

    assert base == "${BEAM_SDK_REGISTRY}/apache/beam_python3.11_sdk:${BEAM_VERSION}"
    assert dockerfile_args(flink)["BEAM_SDK_REGISTRY"] is None
    assert f"python{''.join(python)}-template-launcher-base" in dockerfile_base(dataflow)
    assert "pip install" in flink.read_text(encoding="utf-8")


def test_worker_pool_sidecar_listens_where_the_job_looks_for_it() -> None:
    task_manager, job = pod_specs()["taskManager"], pod_specs()["Job"]
    sidecar = container(task_manager, WORKER_POOL_CONTAINER)
    submit = container(job, "submit")

    assert sidecar["image"] == submit["image"] == WORKER_IMAGE
    assert sidecar["args"] == ["--worker_pool"]
    assert [port["containerPort"] for port in sidecar["ports"]] == [WORKER_POOL_PORT]
    assert f"--environment_config=localhost:{WORKER_POOL_PORT}" in submit["args"]
    assert "--environment_type=EXTERNAL" in submit["args"]
    assert WORKER_POOL_CONTAINER not in {entry["name"] for entry in pod_specs()["jobManager"]["containers"]}


def test_slots_parallelism_and_checkpoints_are_the_local_clusters_on_durable_storage() -> None:
    configuration = manifest("FlinkDeployment")["spec"]["flinkConfiguration"]

    assert configuration["taskmanager.numberOfTaskSlots"] == str(PARALLELISM)
    assert configuration["parallelism.default"] == str(PARALLELISM)
    assert configuration["execution.checkpointing.interval"] == f"{CHECKPOINT_INTERVAL_MS} ms"
    assert configuration["state.backend.type"] == "rocksdb"
    assert configuration["high-availability.type"] == "kubernetes"
    for key in ("execution.checkpointing.dir", "execution.checkpointing.savepoint-dir", "high-availability.storageDir"):
        assert configuration[key].startswith(f"file://{SHARED_MOUNT}/"), key


def test_flink_deployment_is_a_session_cluster_that_matches_the_operators_schema() -> None:
    spec = manifest("FlinkDeployment")["spec"]

    jsonschema.validate(spec, FLINK_DEPLOYMENT_SPEC_SCHEMA)
    assert "job" not in spec


def test_job_server_submits_to_the_session_clusters_rest_service() -> None:
    job_server = container(pod_specs()["Deployment"], "job-server")
    flags = dict(argument.split("=", 1) for argument in job_server["args"])

    assert set(flags) <= JOB_SERVER_FLAGS
    assert flags["--flink-master"] == flink_rest_address()
    assert flags["--job-host"] == "0.0.0.0"
    assert flags["--artifacts-dir"].startswith(f"{SHARED_MOUNT}/")
    assert {str(port["containerPort"]) for port in job_server["ports"]} == {
        flags["--job-port"],
        flags["--artifact-port"],
        flags["--expansion-port"],
    }


def test_pods_reference_only_volumes_claims_and_config_maps_that_exist() -> None:
    config_maps = {document["metadata"]["name"] for document in manifests() if document["kind"] == "ConfigMap"}
    claims = {document["metadata"]["name"] for document in manifests() if document["kind"] == "PersistentVolumeClaim"}

    for owner, spec in pod_specs().items():
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for entry in spec["containers"]:
            assert entry["name"], owner
            assert entry.get("image") or entry["name"] == "flink-main-container", owner  # the operator sets that one
            assert {mount["name"] for mount in entry.get("volumeMounts", [])} <= set(volumes), owner
            assert {source["configMapRef"]["name"] for source in entry.get("envFrom", [])} <= config_maps, owner
        assert {volume["persistentVolumeClaim"]["claimName"] for volume in volumes.values()} <= claims, owner


def test_every_pod_that_touches_the_lake_artifacts_or_checkpoints_mounts_the_shared_claim() -> None:
    mounting = {
        (owner, entry["name"])
        for owner, spec in pod_specs().items()
        for entry in spec["containers"]
        for mount in entry.get("volumeMounts", [])
        if mount["mountPath"] == SHARED_MOUNT
        and {volume["name"]: volume for volume in spec["volumes"]}[mount["name"]]["persistentVolumeClaim"]["claimName"]
        == SHARED_CLAIM
    }

    assert mounting == {
        ("jobManager", "flink-main-container"),
        ("taskManager", "flink-main-container"),
        ("taskManager", WORKER_POOL_CONTAINER),
        ("Deployment", "job-server"),
        ("Job", "submit"),
    }
    claim = manifest("PersistentVolumeClaim")
    assert claim["metadata"]["name"] == SHARED_CLAIM
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"]["resources"]["requests"]["storage"]


def test_service_selects_the_job_server_and_targets_its_named_ports() -> None:
    deployment, service = manifest("Deployment"), manifest("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    port_names = {port["name"] for port in container(pod_specs()["Deployment"], "job-server")["ports"]}

    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert {port["targetPort"] for port in service["spec"]["ports"]} == port_names


def test_submit_job_waits_for_the_cluster_and_submits_once() -> None:
    """A retried submitter would submit a second Flink job beside the first, so the Job waits instead, for the
    addresses the submission uses."""
    job = manifest("Job")["spec"]
    (wait,) = job["template"]["spec"]["initContainers"]
    rest_host, rest_port = flink_rest_address().split(":")
    job_server = manifest("Service")
    job_port = {port["name"]: port["port"] for port in job_server["spec"]["ports"]}["job"]

    assert job["backoffLimit"] == 0
    assert job["template"]["spec"]["restartPolicy"] == "Never"
    assert wait["image"] == WORKER_IMAGE
    assert f'("{rest_host}", {rest_port})' in wait["command"][-1]
    assert f'("{job_server["metadata"]["name"]}", {job_port})' in wait["command"][-1]
