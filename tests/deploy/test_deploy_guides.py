"""The deploy guides' commands, checked against the code and the manifests they describe.

The guides' command blocks are fenced ``sh`` blocks, read here as a shell would split them (``shlex``). The Flink
guide's submission must be what the ``profilestream-run`` Job runs, and must carry every option ``profilestream run
--runner FlinkRunner`` adds for ``make flink-up``'s cluster (:func:`pipelines.flink.flink_runner_args`), with
the in-cluster addresses, except the two that pick and start a local job-server jar: when those defaults change, this
fails until the guide follows. The Dataflow guide's template parameters must be exactly those of
``deploy/dataflow/metadata.json``, and its direct run may use only ``profilestream run``'s flags and Beam's options.
README links both guides.
"""

from __future__ import annotations

import re
import shlex
from itertools import pairwise
from pathlib import Path

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.version import __version__ as beam_version

from pipelines.flex_template import metadata, run_parser
from pipelines.flink import flink_runner_args
from tests.deploy.test_flink_kubernetes import (
    FLINK_DIR,
    container,
    dockerfile_args,
    flink_rest_address,
    kustomization,
    manifest,
)
from tests.pipelines.test_dataflow_package import REPO

FLINK_GUIDE = FLINK_DIR / "README.md"
DATAFLOW_DIR = REPO / "deploy" / "dataflow"
DATAFLOW_GUIDE = DATAFLOW_DIR / "README.md"
# The options of the local cluster that choose and start a job server from a jar on the submitting machine; in the
# cluster the job server is a Deployment that --job_endpoint names.
LOCAL_JOB_SERVER_OPTIONS = {"--flink_job_server_jar", "--flink_version"}


def sh_commands(guide: Path) -> list[list[str]]:
    """Every command of the guide's fenced ``sh`` blocks, split as the shell would (continuation lines joined)."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", guide.read_text(encoding="utf-8"), flags=re.MULTILINE | re.DOTALL)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [argv for argv in (shlex.split(line, comments=True) for line in lines) if argv]


def command(guide: Path, *prefix: str) -> list[str]:
    """The guide's one command that starts with ``prefix``."""
    (found,) = [argv for argv in sh_commands(guide) if argv[: len(prefix)] == list(prefix)]
    return found


def options(argv: list[str]) -> dict[str, str]:
    """``--name=value`` arguments as a mapping (the guides write every option in that form)."""
    return dict(argument.split("=", 1) for argument in argv if argument.startswith("--") and "=" in argument)


def build_args(docker_build: list[str]) -> set[str]:
    """The names a ``docker build`` command gives with ``--build-arg NAME=value``."""
    return {value.split("=", 1)[0] for flag, value in pairwise(docker_build) if flag == "--build-arg"}


def required_build_args(dockerfile: Path) -> set[str]:
    """The build arguments a Dockerfile has no default for."""
    return {name for name, default in dockerfile_args(dockerfile).items() if default is None}


def submission() -> list[str]:
    return command(FLINK_GUIDE, "profilestream", "run")


def test_flink_guide_submits_what_the_job_runs() -> None:
    submit = container(manifest("Job")["spec"]["template"]["spec"], "submit")
    # Kubernetes expands $(NAME) in a container's arguments from its environment, as the shell expands $NAME.
    job_argv = [re.sub(r"\$\((\w+)\)", r"$\1", argument) for argument in submit["command"] + submit["args"]]

    assert submission() == job_argv
    assert {name.strip("$") for name in re.findall(r"\$\w+", " ".join(job_argv))} == set(manifest("ConfigMap")["data"])


def test_flink_guide_submission_carries_the_local_clusters_options_with_in_cluster_addresses() -> None:
    local = options(flink_runner_args([]))
    guide = options(submission())

    assert set(local) - set(guide) == LOCAL_JOB_SERVER_OPTIONS
    assert guide["--flink_master"] == flink_rest_address()
    assert {flag: guide[flag] for flag in local.keys() - LOCAL_JOB_SERVER_OPTIONS - {"--flink_master"}} == {
        flag: value for flag, value in local.items() if flag not in LOCAL_JOB_SERVER_OPTIONS | {"--flink_master"}
    }


def test_flink_guide_submits_through_the_job_servers_service() -> None:
    guide = options(submission())
    service = manifest("Service")
    ports = {port["name"]: port["port"] for port in service["spec"]["ports"]}
    name = service["metadata"]["name"]

    assert guide["--runner"] == "PortableRunner"
    assert guide["--job_endpoint"] == f"{name}:{ports['job']}"
    assert guide["--artifact_endpoint"] == f"{name}:{ports['artifact']}"


def test_flink_guide_submission_uses_only_run_flags_before_its_beam_options() -> None:
    known, beam_args = run_parser().parse_known_args(submission()[2:])

    assert known.source == "$SOURCE"
    assert [argument.split("=", 1)[0] for argument in beam_args] == [
        "--job_endpoint",
        "--artifact_endpoint",
        "--flink_master",
        "--environment_type",
        "--environment_config",
        "--parallelism",
        "--checkpointing_interval",
    ]


def test_flink_guide_builds_and_names_the_worker_image_the_manifests_use() -> None:
    build = command(FLINK_GUIDE, "docker", "build")
    (worker_image,) = kustomization()["images"]

    assert build[build.index("-f") + 1] == "deploy/flink-kubernetes/Dockerfile"
    assert build_args(build) == required_build_args(FLINK_DIR / "Dockerfile")
    assert build[build.index("-t") + 1].endswith(f":{worker_image['newTag']}")
    assert command(FLINK_GUIDE, "docker", "push")[-1] == build[build.index("-t") + 1]
    assert f"beam{beam_version}" in worker_image["newTag"]


def test_flink_guide_names_every_manifest_and_the_objects_its_commands_address() -> None:
    guide = FLINK_GUIDE.read_text(encoding="utf-8")
    names = " ".join(" ".join(argv) for argv in sh_commands(FLINK_GUIDE))

    assert all(f"`{path.name}`" in guide for path in FLINK_DIR.glob("*.yaml"))
    for kind in ("FlinkDeployment", "Deployment", "Job"):
        assert manifest(kind)["metadata"]["name"] in names, kind
    assert f"namespace {kustomization()['namespace']}" in names


def test_dataflow_guide_template_parameters_are_the_templates() -> None:
    run = command(DATAFLOW_GUIDE, "gcloud", "dataflow", "flex-template", "run")
    given = [
        pair.split("=", 1)[0] for flag, value in pairwise(run) if flag == "--parameters" for pair in value.split(",")
    ]
    table = re.findall(r"^\| `([\w-]+)` \|", DATAFLOW_GUIDE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    parameters = metadata()["parameters"]

    assert set(given) <= {parameter["name"] for parameter in parameters}
    assert {parameter["name"] for parameter in parameters if not parameter["isOptional"]} <= set(given)
    assert [name for name in table if name in {parameter["name"] for parameter in parameters}] == [
        parameter["name"] for parameter in parameters
    ]


def test_dataflow_guide_builds_the_committed_template() -> None:
    build = command(DATAFLOW_GUIDE, "gcloud", "dataflow", "flex-template", "build")
    docker = command(DATAFLOW_GUIDE, "docker", "build")

    assert build[build.index("--metadata-file") + 1] == "deploy/dataflow/metadata.json"
    assert build[build.index("--sdk-language") + 1] == "PYTHON"
    assert docker[docker.index("-f") + 1] == "deploy/dataflow/Dockerfile"
    assert build_args(docker) == required_build_args(DATAFLOW_DIR / "Dockerfile")


def test_dataflow_guide_direct_run_uses_run_flags_and_beam_options_only() -> None:
    known, beam_args = run_parser().parse_known_args(command(DATAFLOW_GUIDE, ".venv/bin/profilestream", "run")[2:])
    beam_options = PipelineOptions([]).get_all_options()

    assert known.runner == "DataflowRunner"
    assert beam_args
    assert all(argument.split("=", 1)[0].removeprefix("--") in beam_options for argument in beam_args)


def test_readme_links_both_guides() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")

    for heading, guide in (
        ("## Deploying to Dataflow", DATAFLOW_GUIDE),
        ("## Deploying to Flink on Kubernetes", FLINK_GUIDE),
    ):
        section = readme.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
        assert f"]({guide.relative_to(REPO)})" in section, heading
