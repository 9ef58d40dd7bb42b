"""``profilestream run --runner FlinkRunner``: with no other flag it submits to the cluster ``make flink-up`` starts
(README, "`profilestream run`"); a user's own Flink options win; a missing cluster or job-server jar is one line and
exit 2."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest
from apache_beam.options.pipeline_options import FlinkRunnerOptions, PortableOptions, StandardOptions

from pipelines import flink as local_flink
from pipelines.cli import main
from pipelines.ingest import RunRequest, pipeline_options
from tests.pipelines.test_cli import one_line_error
from tools.pubsub_emulator import free_port


def flink_options(*beam_args: str) -> tuple[FlinkRunnerOptions, PortableOptions, StandardOptions, dict]:
    """The Python views of a FlinkRunner run's options, and every option as the job server receives them."""
    request = RunRequest(None, "lake", "sqlite:///i", "sqlite:///p", runner="FlinkRunner", beam_args=beam_args)
    options = pipeline_options(request)
    passed_on = options.get_all_options(retain_unknown_options=True)
    views = (options.view_as(view) for view in (FlinkRunnerOptions, PortableOptions, StandardOptions))
    return (*views, passed_on)


def test_flink_runner_with_no_other_flag_submits_to_the_local_cluster():
    flink, portable, standard, passed_on = flink_options()

    assert flink.flink_master == f"localhost:{local_flink.REST_PORT}"
    assert flink.flink_version == local_flink.FLINK_MINOR
    assert flink.flink_job_server_jar == str(local_flink.job_server_jar())
    assert flink.parallelism == local_flink.PARALLELISM
    # The Java job server's option, which Beam passes on as it was given.
    assert int(passed_on["checkpointing_interval"]) == local_flink.CHECKPOINT_INTERVAL_MS
    assert portable.environment_type == "EXTERNAL"
    assert portable.environment_config == f"localhost:{local_flink.WORKER_POOL_PORT}"
    assert standard.runner == "FlinkRunner"
    assert standard.streaming


def test_the_users_own_flink_options_win_in_either_spelling():
    flink, portable, _, _ = flink_options("--flink_master=flink.example:8081", "--parallelism", "8")

    assert flink.flink_master == "flink.example:8081"
    assert flink.parallelism == 8
    assert portable.environment_type == "EXTERNAL"


def test_other_runners_get_no_flink_options():
    options = pipeline_options(RunRequest(None, "lake", "sqlite:///i", "sqlite:///p"))

    assert options.view_as(PortableOptions).environment_type is None
    assert options.view_as(StandardOptions).runner == "BundleBasedDirectRunner"


@pytest.fixture
def answering_cluster() -> Iterator[str]:
    """A loopback HTTP server that answers Flink's ``/overview`` as a cluster would, enough for the CLI's check."""

    class Overview(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/overview" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"taskmanagers": 1, "slots-total": 2}')

        def log_message(self, *_args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), Overview)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_on_flink(tmp_path, *beam_args: str) -> int:
    stream = tmp_path / "s.jsonl"
    stream.write_text("{}\n")
    stores = ["--identity-store", f"sqlite:///{tmp_path}/i.sqlite", "--profile-store", f"sqlite:///{tmp_path}/p.sqlite"]
    run = ["run", "--source", f"replay:{stream}", "--lake", str(tmp_path / "lake"), *stores, "--runner", "FlinkRunner"]
    return main([*run, *beam_args])


def test_no_cluster_is_one_line_naming_make_flink_up(tmp_path, capsys):
    master = f"127.0.0.1:{free_port()}"

    assert run_on_flink(tmp_path, f"--flink_master={master}") == 2
    error = one_line_error(capsys)
    assert f"no Flink cluster answers at {master}" in error
    assert "make flink-up" in error


def test_a_missing_job_server_jar_is_one_line_naming_the_artifact(answering_cluster, tmp_path, capsys):
    jar = tmp_path / "missing-job-server.jar"

    assert run_on_flink(tmp_path, f"--flink_master={answering_cluster}", f"--flink_job_server_jar={jar}") == 2
    error = one_line_error(capsys)
    assert f"no Flink job server jar at {jar}" in error
    assert local_flink.JOB_SERVER_ARTIFACT in error
