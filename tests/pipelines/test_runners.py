"""The runner capabilities table: each runner's row, the default for any other runner, and the environment a run
names deciding where the workers run."""

from __future__ import annotations

import dataclasses

import pytest

from pipelines.ingest import RunRequest, pipeline_options
from pipelines.runners import PORTABLE, RunnerCapabilities, capabilities, run_capabilities, runner_name


@pytest.mark.parametrize(
    "spelling", ["PrismRunner", "prism", "Prism", "apache_beam.runners.portability.prism_runner.PrismRunner"]
)
def test_every_spelling_of_a_runner_is_one_name(spelling):
    assert runner_name(spelling) == "prism"


@pytest.mark.parametrize(
    ("runner", "expected"),
    [
        ("DirectRunner", RunnerCapabilities(beam_pubsub_read=True, workers_in_this_process=True, direct_runner=True)),
        (
            "BundleBasedDirectRunner",
            RunnerCapabilities(beam_pubsub_read=True, workers_in_this_process=True, direct_runner=True),
        ),
        ("FnApiRunner", RunnerCapabilities(workers_in_this_process=True)),
        ("PrismRunner", RunnerCapabilities(workers_in_this_process=True, splits_bundles_in_progress=True)),
        ("DataflowRunner", RunnerCapabilities(beam_pubsub_read=True)),
        ("FlinkRunner", PORTABLE),
        ("PortableRunner", PORTABLE),
    ],
)
def test_each_runner_has_its_row(runner, expected):
    assert capabilities(runner) == expected


def test_a_runner_the_table_does_not_name_is_a_portable_runner_with_workers_elsewhere():
    assert capabilities("SparkRunner") == PORTABLE
    assert not (PORTABLE.beam_pubsub_read or PORTABLE.workers_in_this_process or PORTABLE.direct_runner)


def test_only_the_direct_runners_get_the_direct_runner_patches():
    names = ("direct", "bundlebaseddirect", "fnapi", "prism", "dataflow", "flink", "spark")

    assert {name for name in names if capabilities(name).direct_runner} == {"direct", "bundlebaseddirect"}


@pytest.mark.parametrize(
    ("runner", "environment", "in_this_process"),
    [
        ("PrismRunner", None, True),
        ("PrismRunner", "EXTERNAL", False),
        ("PortableRunner", None, False),
        ("PortableRunner", "LOOPBACK", True),
        ("SparkRunner", "LOOPBACK", True),
    ],
)
def test_the_environment_a_run_names_decides_where_the_workers_run(runner, environment, in_this_process):
    beam_args = () if environment is None else (f"--environment_type={environment}",)
    request = RunRequest(None, "lake", "sqlite:///i", "sqlite:///p", runner=runner, beam_args=beam_args)

    found = run_capabilities(pipeline_options(request))

    assert found == dataclasses.replace(capabilities(runner), workers_in_this_process=in_this_process)


def test_a_run_without_a_runner_is_on_the_local_streaming_or_batch_runner():
    streaming = RunRequest("replay", "lake", "sqlite:///i", "sqlite:///p")
    batch = RunRequest("replay", "lake", "sqlite:///i", "sqlite:///p", batch=True)

    assert run_capabilities(pipeline_options(streaming)).direct_runner
    assert run_capabilities(pipeline_options(batch)) == capabilities("FnApiRunner")
