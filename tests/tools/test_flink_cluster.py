"""The local Flink session cluster of ``make flink-up``: a real JobManager, TaskManager and Beam worker pool.

One cluster serves the module, started with ``python -m tools.flink_cluster up`` on free ports and a temporary
run folder (so a developer's own cluster is never touched) and stopped when the module ends, whatever happened. A
Flink job compiled here from a few lines of Java runs on it through the REST API, as a submitted jar does. Without
Java (or ``javac`` for the job) the tests are skipped, except under CI (``CI=true``), where that is a failure. The
helpers that parse ``BashJavaUtils`` output and build the configuration are checked first without starting anything.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import requests
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc

from tests.conftest import missing_prerequisite
from tests.helpers import lake_rows
from tests.pipelines.test_prism_run import run_replay
from tests.pipelines.test_run import profile_store_contents
from tools import flink_cluster
from tools.pubsub_emulator import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = Path(__file__).parents[2] / "README.md"

UP_TIMEOUT_S = flink_cluster.START_TIMEOUT_S + flink_cluster.MAVEN_TIMEOUT_S + 60
JOB_TIMEOUT_S = 90
SQUARES = 1000

# What Flink 2.2.1's BashJavaUtils GET_TM_RESOURCE_PARAMS printed for a 1600m TaskManager with 2 slots (log lines cut).
TM_RESOURCE_OUTPUT = """\
INFO  [] - Using standard YAML parser to load flink configuration file from /run/config.yaml.
INFO  [] - Final TaskExecutor Memory configuration:
BASH_JAVA_UTILS_EXEC_RESULT:-Xmx469762039 -Xms469762039 -XX:MaxDirectMemorySize=255013685 -XX:MaxMetaspaceSize=268435456
BASH_JAVA_UTILS_EXEC_RESULT:-D taskmanager.memory.network.min=120795957b -D taskmanager.numberOfTaskSlots=2
"""

# A streaming job over both slots: a sequence source, a rebalance (so the squares run as a task of their own, whose
# record count the REST API reports) and a sink that drops what it gets.
SQUARES_JOB = f"""\
import org.apache.flink.streaming.api.environment.StreamExecutionEnvironment;
import org.apache.flink.streaming.api.functions.sink.v2.DiscardingSink;

public class Squares {{
    public static void main(String[] args) throws Exception {{
        StreamExecutionEnvironment env = StreamExecutionEnvironment.getExecutionEnvironment();
        env.fromSequence(1, {SQUARES}).rebalance().map(n -> n * n).returns(Long.class).sinkTo(new DiscardingSink<>());
        env.execute("squares");
    }}
}}
"""


@dataclasses.dataclass(frozen=True)
class Cluster:
    run_dir: Path
    rest_port: int
    worker_pool_port: int
    up_output: str

    @property
    def rest(self) -> str:
        return f"http://localhost:{self.rest_port}"


def require(program: str) -> str:
    """The path of ``program``; a skip without it, or a failure under CI."""
    path = shutil.which(program)
    if path is None:
        missing_prerequisite(f"{program} is not on PATH (Flink needs a Java 17 JDK)")
    return path


def cluster_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.flink_cluster", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    require("java")
    run_dir = tmp_path_factory.mktemp("flink") / "run"
    rest_port, worker_pool_port = free_port(), free_port()
    ports = ["--rest-port", str(rest_port), "--worker-pool-port", str(worker_pool_port)]
    try:
        up = cluster_cli("up", *ports, "--run-dir", str(run_dir), timeout=UP_TIMEOUT_S)
        assert up.returncode == 0, up.stdout + up.stderr
        yield Cluster(run_dir, rest_port, worker_pool_port, up.stdout)
    finally:
        flink_cluster.down(run_dir)


def test_bash_java_utils_output_parses_into_jvm_flags_and_dynamic_properties():
    jvm_flags, dynamic_properties = flink_cluster.parse_resource_params(TM_RESOURCE_OUTPUT)

    assert jvm_flags == [
        "-Xmx469762039",
        "-Xms469762039",
        "-XX:MaxDirectMemorySize=255013685",
        "-XX:MaxMetaspaceSize=268435456",
    ]
    assert dynamic_properties == [
        "-D",
        "taskmanager.memory.network.min=120795957b",
        "-D",
        "taskmanager.numberOfTaskSlots=2",
    ]


def test_bash_java_utils_output_without_its_two_results_is_refused():
    with pytest.raises(flink_cluster.ClusterError, match="1 result lines"):
        flink_cluster.parse_resource_params(TM_RESOURCE_OUTPUT.splitlines()[2])


def test_the_config_is_a_loopback_cluster_with_the_runner_parallelism(tmp_path):
    config = flink_cluster.flink_config(
        rest_port=18081, rpc_port=16123, checkpoint_dir=tmp_path / "checkpoints", java_options="--add-opens=x"
    )

    assert config["rest.port"] == 18081
    assert config["jobmanager.rpc.port"] == 16123
    assert config["taskmanager.numberOfTaskSlots"] == config["parallelism.default"] == flink_cluster.PARALLELISM
    assert {config[key] for key in config if key.endswith(("address", "bind-host", ".host"))} == {"localhost"}
    assert config["execution.checkpointing.dir"] == (tmp_path / "checkpoints").as_uri()
    assert config["env.java.opts.all"] == "--add-opens=x"


def test_a_flink_command_puts_memory_and_java_options_before_the_class_and_properties_after_it(tmp_path):
    resources = (["-Xmx1g"], ["-D", "taskmanager.numberOfTaskSlots=2"])
    command = flink_cluster.flink_command(
        tmp_path, tmp_path / "conf", tmp_path / "tm.log", flink_cluster.TASKMANAGER_CLASS, resources, "--add-opens=a b"
    )

    main_class = command.index(flink_cluster.TASKMANAGER_CLASS)
    assert command[1:4] == ["-Xmx1g", "--add-opens=a", "b"]
    assert command[main_class - 2 : main_class] == ["-classpath", f"{tmp_path / 'lib'}/*"]
    assert command[main_class + 1 :] == ["--configDir", str(tmp_path / "conf"), "-D", "taskmanager.numberOfTaskSlots=2"]


def test_the_readme_shows_the_commands_flink_up_runs(tmp_path):
    require("java")
    dist = flink_cluster.ensure_distribution()
    run_dir = tmp_path / "run"
    commands = flink_cluster.cluster_commands(
        dist, run_dir, rest_port=flink_cluster.REST_PORT, worker_pool_port=flink_cluster.WORKER_POOL_PORT
    )
    java_options = flink_cluster.default_java_options(dist).split()

    def as_in_the_readme(command: list[str]) -> str:
        words, at = [], 0
        while at < len(command):
            if command[at : at + len(java_options)] == java_options:
                words.append("$JAVA_OPTS")
                at += len(java_options)
                continue
            word = command[at].replace(str(run_dir), "$RUN").replace(str(dist), "$DIST")
            word = word.replace(sys.executable, "$PYTHON")
            words.append(f'"{word}"' if "*" in word else word)
            at += 1
        return " ".join(words) + " &"

    section = README.read_text().split("### What `make flink-up` runs", 1)[1].split("```sh\n", 1)[1]
    shown = [line for line in section.split("```", 1)[0].splitlines() if line.startswith(("java ", "$PYTHON "))]
    assert shown == [as_in_the_readme(command) for command in commands.values()]


@pytest.mark.parametrize(
    "argv",
    [[], ["start"], ["up", "--rest-port", "x"], ["up", "--rest-port", "70000"], ["down", "--rest-port", "8081"]],
)
def test_bad_input_is_one_line_and_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        flink_cluster.main(argv)

    assert exit_.value.code == flink_cluster.USAGE_ERROR
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_without_java_up_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))

    assert flink_cluster.main(["up", "--run-dir", str(tmp_path / "run")]) == flink_cluster.USAGE_ERROR
    assert capsys.readouterr().err.splitlines() == [
        "flink_cluster: Flink needs Java (17 or later), which is not on PATH"
    ]


def test_up_refuses_a_port_in_use_in_one_line(tmp_path, capsys):
    require("java")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])

        assert flink_cluster.main(["up", "--rest-port", port, "--run-dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"flink_cluster: port {port} is already in use; choose others with --rest-port / --worker-pool-port"
    ]


def test_up_reports_the_cluster_and_whether_beams_job_server_jar_is_there(cluster):
    lines = cluster.up_output.splitlines()

    assert lines[0].startswith(f"Flink {flink_cluster.FLINK_VERSION} session cluster up in ")
    assert f"REST {cluster.rest}" in lines[0]
    # Maven either provides the jar or is refused, which is one line and leaves the cluster up.
    if flink_cluster.job_server_jar().is_file():
        assert lines[1:] == [f"Beam's Flink job server: {flink_cluster.job_server_jar()}"]
    else:
        assert len(lines) == 2
        assert lines[1].startswith(f"Beam's Flink job server {flink_cluster.JOB_SERVER_ARTIFACT} is not available")


def test_the_jobmanager_has_one_taskmanager_with_two_slots(cluster):
    overview = requests.get(f"{cluster.rest}/overview", timeout=10).json()
    (taskmanager,) = requests.get(f"{cluster.rest}/taskmanagers", timeout=10).json()["taskmanagers"]

    assert overview["taskmanagers"] == 1
    assert overview["slots-total"] == flink_cluster.PARALLELISM
    assert overview["flink-version"] == flink_cluster.FLINK_VERSION
    assert taskmanager["slotsNumber"] == flink_cluster.PARALLELISM


def test_the_jvms_open_the_jdk_modules_of_flinks_default_config(cluster):
    java_options = flink_cluster.default_java_options(flink_cluster.ensure_distribution())
    config = {entry["key"]: entry["value"] for entry in requests.get(f"{cluster.rest}/jobmanager/config").json()}

    assert "--add-opens=java.base/java.lang=ALL-UNNAMED" in java_options.split()
    assert config["env.java.opts.all"] == java_options


def test_the_worker_pool_answers_beams_external_worker_pool_service(cluster):
    with grpc.insecure_channel(f"localhost:{cluster.worker_pool_port}") as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        pool = beam_fn_api_pb2_grpc.BeamFnExternalWorkerPoolStub(channel)
        response = pool.StopWorker(beam_fn_api_pb2.StopWorkerRequest(worker_id="no-such-worker"), timeout=10)

    assert response.error == ""


def test_the_worker_pool_runs_the_pipeline_for_a_portable_runner(cluster, prism, small_stream, tmp_path):
    # Flink's pattern with the runner that can run here: the runner asks the pool for SDK workers, which the pool
    # starts as processes of their own; the pipeline must come out as it does on the DirectRunner.
    external = ["--environment_type=EXTERNAL", f"--environment_config=localhost:{cluster.worker_pool_port}"]
    run_replay(small_stream, tmp_path / "pool", "--runner", "PrismRunner", "--prism_location", str(prism), *external)
    run_replay(small_stream, tmp_path / "direct")

    assert "Starting worker with command" in (cluster.run_dir / f"{flink_cluster.WORKER_POOL}.out").read_text()
    assert lake_rows(tmp_path / "pool", "experience_events")
    for dataset in ("experience_events", "failed_records", "identity_changes", "profile_records"):
        assert lake_rows(tmp_path / "pool", dataset) == lake_rows(tmp_path / "direct", dataset)
    # What lookups answer; the fragments' layout may differ: a pool's SDK workers can end without the teardown that
    # folds a writer's deltas into their bases.
    pool, direct = profile_store_contents(tmp_path / "pool"), profile_store_contents(tmp_path / "direct")
    for table in ("views", "identity_index", "redirects"):
        assert pool[table] == direct[table]


def test_the_worker_pools_sdk_workers_are_this_python():
    # The pool starts each worker as `python` from PATH.
    first = flink_cluster.worker_pool_environment()["PATH"].split(os.pathsep)[0]

    assert Path(first, "python").resolve() == Path(sys.executable).resolve()


def test_a_flink_job_submitted_as_a_jar_runs_on_both_slots_to_finished(cluster, tmp_path):
    require("javac")
    source = tmp_path / "Squares.java"
    source.write_text(SQUARES_JOB)
    lib = f"{flink_cluster.ensure_distribution() / 'lib'}/*"
    subprocess.run(["javac", "-classpath", lib, "-d", tmp_path / "classes", source], check=True, timeout=120)
    jar = tmp_path / "squares.jar"
    command = ["jar", "--create", "--file", jar, "--main-class", "Squares", "-C", tmp_path / "classes", "."]
    subprocess.run(command, check=True, timeout=60)

    with jar.open("rb") as upload:
        files = {"jarfile": (jar.name, upload, "application/x-java-archive")}
        uploaded = requests.post(f"{cluster.rest}/jars/upload", files=files, timeout=30).json()
    jar_id = Path(uploaded["filename"]).name
    run = requests.post(f"{cluster.rest}/jars/{jar_id}/run", json={"parallelism": 2}, timeout=60).json()
    job = wait_for_job_end(cluster, run["jobid"])

    assert job["state"] == "FINISHED"
    squares = next(vertex for vertex in job["vertices"] if vertex["name"].startswith("Map"))
    assert squares["parallelism"] == flink_cluster.PARALLELISM
    assert squares["metrics"]["read-records"] == SQUARES


def wait_for_job_end(cluster: Cluster, job_id: str) -> dict:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        job = requests.get(f"{cluster.rest}/jobs/{job_id}", timeout=10).json()
        if job["state"] in ("FINISHED", "FAILED", "CANCELED"):
            return job
        time.sleep(0.5)
    pytest.fail(f"job {job_id} did not end within {JOB_TIMEOUT_S} s")


def test_status_lists_the_three_processes_and_the_slots(cluster):
    status = cluster_cli("status", "--run-dir", str(cluster.run_dir))

    assert status.returncode == 0, status.stderr
    assert [line.split(":")[0] for line in status.stdout.splitlines()[:3]] == list(flink_cluster.PROCESSES)
    assert f"{cluster.rest}: 1 TaskManager(s)" in status.stdout


def test_up_again_says_so_and_keeps_the_running_cluster(cluster):
    before = flink_cluster.running(cluster.run_dir)
    ports = ["--rest-port", str(cluster.rest_port), "--worker-pool-port", str(cluster.worker_pool_port)]

    again = cluster_cli("up", *ports, "--run-dir", str(cluster.run_dir))

    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("the Flink cluster is already up")
    assert flink_cluster.running(cluster.run_dir) == before


# Last in the module: it stops the module's cluster.
def test_down_stops_every_process_frees_the_ports_and_can_be_repeated(cluster):
    pids = flink_cluster.running(cluster.run_dir)
    assert pids.keys() == set(flink_cluster.PROCESSES)

    down = cluster_cli("down", "--run-dir", str(cluster.run_dir))
    down_again = cluster_cli("down", "--run-dir", str(cluster.run_dir))

    assert down.returncode == down_again.returncode == 0
    assert down.stdout == "stopped jobmanager, taskmanager, worker-pool\n"
    assert down_again.stdout == "the Flink cluster was not running\n"
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
    assert not flink_cluster.accepts_connections(cluster.rest_port)
    assert not flink_cluster.accepts_connections(cluster.worker_pool_port)
    assert not list(cluster.run_dir.glob("*.pid"))
