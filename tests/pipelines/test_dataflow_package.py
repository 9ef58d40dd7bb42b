"""Dataflow packaging: the sdist workers install, the Flex Template metadata, and the job Dataflow would be sent.

Nothing here reaches Google: the sdist is built from a copy of the checkout, the metadata from the CLI's parser, and
the job with Beam's own ``--dry_run``, which makes :class:`DataflowRunner` stop after it has translated the pipeline
into the Dataflow job, just before it would open the Dataflow client.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner
from google.cloud.dataflow import JobType

from pipelines.config import Config
from pipelines.flex_template import launcher_argv, metadata, run_parser
from pipelines.ingest import Ingest
from schemas.registry import SchemaRegistry
from transforms.pubsub import ReadPubSub

REPO = Path(__file__).resolve().parents[2]
# Every package of the checkout but the development tools (a distribution of their own) and the tests.
NOT_SHIPPED = ("tools", "tests")
SHIPPED_PACKAGES = tuple(
    sorted(path.parent.name for path in REPO.glob("*/__init__.py") if path.parent.name not in NOT_SHIPPED)
)
# Data files the code reads beside the XDM schema library (schemas/xdm/**/*.json): the ingestion contract, the
# example configuration and the sample stream (tools.bench).
RUNTIME_DATA_FILES = (
    "schemas/ingestion.json",
    "pipelines/profilestream.example.yaml",
    "pipelines/samples/stream.jsonl",
)
# Dataflow rejects "p" as a project id, and Beam a Pub/Sub name in it, so the job names a valid one.
PROJECT = "profilestream-dev"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/xdm-events"
DATAFLOW_ARGS = [
    "--runner=DataflowRunner",
    f"--project={PROJECT}",
    "--region=us-central1",
    "--temp_location=gs://bucket/tmp",
    "--streaming",
    f"--setup_file={REPO / 'setup.py'}",
    "--dry_run=True",
]


def tracked_files(*paths: str) -> list[str]:
    listed = subprocess.run(["git", "ls-files", *paths], cwd=REPO, capture_output=True, text=True, check=True)
    return listed.stdout.split()


def copy_checkout(out: Path) -> Path:
    """A copy of the tracked files, so that no build artefact of the working tree (an old
    ``*.egg-info/SOURCES.txt``) can add a file a fresh clone would not ship."""
    checkout = out / "checkout"
    for name in tracked_files():
        if (REPO / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, checkout / name)
    return checkout


def build_sdist(out: Path) -> set[str]:
    """Builds the sdist from a copy of the tracked files, as Beam's stager does for ``--setup_file``; returns its
    member paths without their ``profilestream-VERSION/`` prefix."""
    checkout = copy_checkout(out)
    subprocess.run(
        [sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(out / "dist")],
        cwd=checkout,
        capture_output=True,
        check=True,
    )
    (sdist,) = (out / "dist").glob("profilestream-*.tar.gz")
    with tarfile.open(sdist) as archive:
        return {member.name.partition("/")[2] for member in archive.getmembers() if member.isfile()}


def test_sdist_ships_every_module_and_data_file(tmp_path: Path) -> None:
    shipped = build_sdist(tmp_path)

    modules = [name for name in tracked_files(*SHIPPED_PACKAGES) if name.endswith(".py")]
    xdm_schemas = [name for name in tracked_files("schemas/xdm") if name.endswith(".json")]
    assert modules and xdm_schemas
    assert set(modules) - shipped == set()
    assert set(xdm_schemas) - shipped == set()
    assert set(RUNTIME_DATA_FILES) - shipped == set()


def test_the_workers_package_holds_no_development_tool(tmp_path: Path) -> None:
    checkout = copy_checkout(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), "."],
        cwd=checkout,
        capture_output=True,
        check=True,
    )
    (wheel,) = tmp_path.glob("profilestream-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
    in_sdist = build_sdist(tmp_path / "sdist")

    assert {name.split("/")[0] for name in in_wheel if name.endswith(".py")} == set(SHIPPED_PACKAGES)
    for members in (in_wheel, in_sdist):
        assert [name for name in members if name.startswith("tools/")] == []


def test_flex_template_has_one_parameter_per_run_flag() -> None:
    flags = [
        action.option_strings[0].removeprefix("--")
        for action in run_parser()._actions
        if action.option_strings and not isinstance(action, argparse._HelpAction)
    ]

    parameters = metadata()["parameters"]

    assert [parameter["name"] for parameter in parameters] == flags
    assert {parameter["name"] for parameter in parameters if not parameter["isOptional"]} == {"source"}
    assert all(parameter["label"] and parameter["helpText"] for parameter in parameters)


def test_committed_metadata_is_what_make_flex_template_builds() -> None:
    committed = json.loads((REPO / "deploy/dataflow/metadata.json").read_text(encoding="utf-8"))

    assert committed == metadata(), "deploy/dataflow/metadata.json is stale: run `make flex-template`"


def test_launcher_turns_switch_parameters_into_flags() -> None:
    argv = ["--source=pubsub:" + SUBSCRIPTION, "--batch=true", "--runner=DataflowRunner"]

    assert launcher_argv(argv) == ["--source=pubsub:" + SUBSCRIPTION, "--batch", "--runner=DataflowRunner"]
    assert launcher_argv(["--batch=false", "--lake=gs://bucket/lake"]) == ["--lake=gs://bucket/lake"]


def test_dataflow_runner_translates_the_job_offline() -> None:
    options = PipelineOptions(DATAFLOW_ARGS)
    pipeline = beam.Pipeline(options=options)
    messages = pipeline | "ReadPubSub" >> ReadPubSub(SUBSCRIPTION)
    _ = messages | "Ingest" >> Ingest(
        SchemaRegistry.load(), Config(), "gs://bucket/lake", "redis://identity:6379/0", "redis://profiles:6379/0"
    )
    runner = DataflowRunner()

    job = runner.run_pipeline(pipeline, options).job

    assert job.proto.type_ == JobType.JOB_TYPE_STREAMING
    transforms = {transform.unique_name: transform for transform in job.proto_pipeline.components.transforms.values()}
    assert transforms["ReadPubSub/Pull/Read"].spec.urn == "beam:transform:pubsub_read:v1"
    stateful = {
        name
        for name, transform in transforms.items()
        if transform.spec.urn == "beam:transform:pardo:v1"
        and beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload).state_specs
    }
    assert stateful == {"Ingest/WriteLake/BufferAndWritePanes", "Ingest/MergeProfiles/MergeAndFlush"}
    (environment,) = job.proto_pipeline.components.environments.values()
    staged = {
        beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dependency.role_payload).staged_name
        for dependency in environment.dependencies
    }
    assert "workflow.tar.gz" in staged  # the sdist --setup_file built, which every worker installs
