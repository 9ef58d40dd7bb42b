"""The local Flink session cluster that ``make flink-up`` starts; :mod:`pipelines.flink` submits runs to it.

Three processes, each in a process group of its own, with pid files and logs in a run folder (``cache_dir()/run``
unless ``--run-dir`` says otherwise): a Flink **JobManager** with its REST API on ``localhost:REST_PORT``, a Flink
**TaskManager** with ``PARALLELISM`` slots, and Beam's Python **worker pool** on ``WORKER_POOL_PORT``
(``--environment_type=EXTERNAL``). :func:`cluster_commands` builds their command lines (README, "What `make flink-up`
runs").

    python -m tools.flink_cluster up [--rest-port 8081] [--worker-pool-port 50000] [--run-dir DIR]
    python -m tools.flink_cluster status [--run-dir DIR]
    python -m tools.flink_cluster down [--run-dir DIR]

``up`` refuses a port another program holds, and returns once the TaskManager has registered its slots and the worker
pool listens (the JobManager and the worker pool alone on their ports: :mod:`tools.local_servers`), then fetches
Beam's Flink job-server jar (:data:`JOB_SERVER_ARTIFACT`) with Maven if it is not there yet; when Maven cannot
provide it, ``up`` says so in one line and the cluster stays up. Exit codes: 0 up (or already up), 1 the cluster
did not start (the line names the log to read), 2 bad input or no Java.

Why Flink runs from PyPI's jars, started as Flink's own scripts would start it:
docs/decisions/0028-a-local-flink-cluster-from-pypi-jars.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

import yaml

from pipelines.flink import (
    FLINK_VERSION,
    JOB_SERVER_ARTIFACT,
    PARALLELISM,
    REST_PORT,
    WORKER_POOL_PORT,
    cache_dir,
    job_server_jar,
)
from pipelines.one_line_parser import USAGE_ERROR, OneLineParser
from tools.local_servers import Listener, PortTakenError, free_port, refuse_taken_port, stop, who_listens

FLINK_PACKAGE = "apache-flink-libraries"
JOBMANAGER_CLASS = "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint"
TASKMANAGER_CLASS = "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"
BASH_JAVA_UTILS_CLASS = "org.apache.flink.runtime.util.bash.BashJavaUtils"
# BashJavaUtils marks its answer lines with this prefix among its log lines, as Flink's config.sh expects.
BASH_JAVA_UTILS_RESULT = "BASH_JAVA_UTILS_EXEC_RESULT:"
JOBMANAGER_MEMORY = "1024m"
TASKMANAGER_MEMORY = "1600m"
JOBMANAGER = "jobmanager"
TASKMANAGER = "taskmanager"
WORKER_POOL = "worker-pool"
PROCESSES = (JOBMANAGER, TASKMANAGER, WORKER_POOL)
START_TIMEOUT_S = 90.0
PIP_TIMEOUT_S = 600.0
MAVEN_TIMEOUT_S = 120.0
BASH_JAVA_UTILS_TIMEOUT_S = 60.0

# Flink's own log4j layout, writing to the file each process names in -Dlog.file (the web UI serves that file).
LOG4J_PROPERTIES = """\
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = MainAppender
appender.main.name = MainAppender
appender.main.type = File
appender.main.append = false
appender.main.fileName = ${sys:log.file}
appender.main.layout.type = PatternLayout
appender.main.layout.pattern = %d{yyyy-MM-dd HH:mm:ss,SSS} %-5p %-60c %x - %m%n
"""


class ClusterError(RuntimeError):
    """The cluster cannot start or be set up; the message is one line for the user."""


def default_run_dir() -> Path:
    """Where ``up`` keeps the running cluster's configuration, pid files, logs and checkpoints."""
    return cache_dir() / "run"


def ensure_distribution() -> Path:
    """The folder of the Flink jars (``lib/*.jar``, ``bin/bash-java-utils.jar``), ``cache_dir()/dist``, unpacked
    from the ``apache-flink-libraries`` wheel (which pip downloads, or takes from its cache) on first use."""
    dist = cache_dir() / "dist"
    if (dist / "lib" / f"flink-dist-{FLINK_VERSION}.jar").is_file():
        return dist
    dist.parent.mkdir(parents=True, exist_ok=True)
    requirement = f"{FLINK_PACKAGE}=={FLINK_VERSION}"
    with tempfile.TemporaryDirectory(dir=dist.parent, prefix="download-") as download:
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
        try:
            subprocess.run(
                [*command, "--dest", download, requirement],
                check=True,
                capture_output=True,
                text=True,
                timeout=PIP_TIMEOUT_S,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            last_line = (getattr(error, "stderr", None) or "").strip().splitlines()[-1:] or [str(error)]
            raise ClusterError(f"pip could not download {requirement}: {last_line[0]}") from None
        (wheel,) = Path(download).glob("*.whl")
        # Unpacked beside the final folder and renamed into place, so a half-unpacked folder is never taken as done.
        partial = Path(tempfile.mkdtemp(dir=dist.parent, prefix="dist-"))
        with zipfile.ZipFile(wheel) as archive:
            for member in archive.namelist():
                if member.startswith("pyflink/lib/") or member == "pyflink/bin/bash-java-utils.jar":
                    archive.extract(member, partial)
        shutil.rmtree(dist, ignore_errors=True)
        (partial / "pyflink").rename(dist)
        partial.rmdir()
    return dist


def default_java_options(dist: Path) -> str:
    """``env.java.opts.all`` of the default ``config.yaml`` inside ``flink-dist``: the ``--add-opens`` and
    ``--add-exports`` flags this Flink version needs on Java 17 and later."""
    with zipfile.ZipFile(dist / "lib" / f"flink-dist-{FLINK_VERSION}.jar") as jar:
        defaults = yaml.safe_load(jar.read("config.yaml"))
    return defaults["env"]["java"]["opts"]["all"]


def flink_config(*, rest_port: int, rpc_port: int, checkpoint_dir: Path, java_options: str) -> dict[str, object]:
    """The ``config.yaml`` (flat keys, which Flink 2 reads as it reads nested ones) of a loopback-only session
    cluster: one TaskManager with :data:`PARALLELISM` slots, modest memory, checkpoints under ``checkpoint_dir``."""
    return {
        "jobmanager.rpc.address": "localhost",
        "jobmanager.rpc.port": rpc_port,
        "jobmanager.bind-host": "localhost",
        "jobmanager.memory.process.size": JOBMANAGER_MEMORY,
        "jobmanager.execution.failover-strategy": "region",
        "taskmanager.bind-host": "localhost",
        "taskmanager.host": "localhost",
        "taskmanager.numberOfTaskSlots": PARALLELISM,
        "taskmanager.memory.process.size": TASKMANAGER_MEMORY,
        "parallelism.default": PARALLELISM,
        "rest.address": "localhost",
        "rest.bind-address": "localhost",
        "rest.port": rest_port,
        "execution.checkpointing.dir": checkpoint_dir.resolve().as_uri(),
        "env.java.opts.all": java_options,
    }


def parse_resource_params(output: str) -> tuple[list[str], list[str]]:
    """The JVM flags and the dynamic properties (``-D key=value`` pairs) in the output of ``BashJavaUtils
    GET_TM_RESOURCE_PARAMS`` or ``GET_JM_RESOURCE_PARAMS``: its two result lines, split on spaces as Flink's
    ``taskmanager.sh`` splits them."""
    results = [
        line[len(BASH_JAVA_UTILS_RESULT) :] for line in output.splitlines() if line.startswith(BASH_JAVA_UTILS_RESULT)
    ]
    if len(results) != 2:
        raise ClusterError(f"BashJavaUtils gave {len(results)} result lines, not 2: {output.strip()[-500:]}")
    jvm_flags, dynamic_properties = results
    return jvm_flags.split(), dynamic_properties.split()


def resource_params(dist: Path, conf_dir: Path, command: str) -> tuple[list[str], list[str]]:
    """Runs ``BashJavaUtils command`` on the configuration in ``conf_dir``; its JVM flags and dynamic properties."""
    classpath = f"{dist / 'bin' / 'bash-java-utils.jar'}:{dist / 'lib' / f'flink-dist-{FLINK_VERSION}.jar'}"
    completed = subprocess.run(
        ["java", "-classpath", classpath, BASH_JAVA_UTILS_CLASS, command, "--configDir", str(conf_dir)],
        capture_output=True,
        text=True,
        timeout=BASH_JAVA_UTILS_TIMEOUT_S,
    )
    if completed.returncode != 0:
        raise ClusterError(f"BashJavaUtils {command} failed: {(completed.stdout + completed.stderr).strip()[-500:]}")
    return parse_resource_params(completed.stdout)


def flink_command(
    dist: Path,
    conf_dir: Path,
    log: Path,
    main_class: str,
    resources: tuple[list[str], list[str]],
    java_options: str,
) -> list[str]:
    """The ``java`` command line of one Flink process, laid out as Flink's ``flink-daemon.sh`` lays it out: memory
    flags, Java options, log settings, class path, main class, ``--configDir`` and the dynamic properties."""
    jvm_flags, dynamic_properties = resources
    return [
        "java",
        *jvm_flags,
        *shlex.split(java_options),
        f"-Dlog.file={log}",
        f"-Dlog4j.configurationFile=file:{conf_dir / 'log4j.properties'}",
        "-classpath",
        f"{dist / 'lib'}/*",
        main_class,
        "--configDir",
        str(conf_dir),
        *dynamic_properties,
    ]


def worker_pool_command(port: int) -> list[str]:
    """Beam's Python worker pool on ``port``, run by this Python, so its SDK workers import this project."""
    return [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={port}"]


def worker_pool_environment() -> dict[str, str]:
    """This process's environment with this Python's folder first on ``PATH``: Beam's worker pool starts each SDK
    worker as ``python`` from ``PATH``, which must be the Python that has Beam and this project (in a container, the
    image's own)."""
    path = os.environ.get("PATH", "")
    return {**os.environ, "PATH": os.pathsep.join(filter(None, (str(Path(sys.executable).parent), path)))}


def running(run_dir: Path) -> dict[str, int]:
    """The cluster's processes that still run, by name, with their pids (each leads its own process group)."""
    alive = {}
    for name in PROCESSES:
        pid_file = run_dir / f"{name}.pid"
        try:
            pid = int(pid_file.read_text())
            os.killpg(pid, 0)
        except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
            continue
        alive[name] = pid
    return alive


def overview(rest_port: int) -> dict | None:
    """The JobManager's REST ``/overview`` (TaskManagers, slots, jobs), or None while it does not answer."""
    try:
        with urllib.request.urlopen(f"http://localhost:{rest_port}/overview", timeout=2) as response:
            return json.load(response)
    except (OSError, ValueError):
        return None


def accepts_connections(port: int) -> bool:
    """Whether something listens on loopback ``port``."""
    try:
        socket.create_connection(("localhost", port), timeout=1).close()
    except OSError:
        return False
    return True


def cluster_commands(dist: Path, run_dir: Path, *, rest_port: int, worker_pool_port: int) -> dict[str, list[str]]:
    """Writes the cluster's configuration into ``run_dir`` and returns the command line of each of its processes, by
    name, as :func:`up` starts them (README "Running on Flink" shows them)."""
    java_options = default_java_options(dist)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = flink_config(
        rest_port=rest_port,
        rpc_port=free_port(),
        checkpoint_dir=run_dir / "checkpoints",
        java_options=java_options,
    )
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (run_dir / "log4j.properties").write_text(LOG4J_PROPERTIES)
    return {
        JOBMANAGER: flink_command(
            dist,
            run_dir,
            run_dir / f"{JOBMANAGER}.log",
            JOBMANAGER_CLASS,
            resource_params(dist, run_dir, "GET_JM_RESOURCE_PARAMS"),
            java_options,
        ),
        TASKMANAGER: flink_command(
            dist,
            run_dir,
            run_dir / f"{TASKMANAGER}.log",
            TASKMANAGER_CLASS,
            resource_params(dist, run_dir, "GET_TM_RESOURCE_PARAMS"),
            java_options,
        ),
        WORKER_POOL: worker_pool_command(worker_pool_port),
    }


def up(run_dir: Path, *, rest_port: int = REST_PORT, worker_pool_port: int = WORKER_POOL_PORT) -> dict[str, int]:
    """Starts the JobManager, the TaskManager and the worker pool, and returns their pids once the TaskManager's
    slots are registered and the worker pool listens, the JobManager and the worker pool each alone on its port.
    Whatever it started is stopped again when that does not happen within :data:`START_TIMEOUT_S`
    (:class:`ClusterError`, naming the log to read), or at once when another program listens on one of the ports."""
    for port in (rest_port, worker_pool_port):
        try:
            refuse_taken_port(port)
        except PortTakenError:
            raise ClusterError(
                f"port {port} is already in use; choose others with --rest-port / --worker-pool-port"
            ) from None
    commands = cluster_commands(ensure_distribution(), run_dir, rest_port=rest_port, worker_pool_port=worker_pool_port)
    pids = {}
    try:
        for name, command in commands.items():
            (run_dir / f"{name}.command").write_text(shlex.join(command) + "\n")
            with (run_dir / f"{name}.out").open("wb") as output:
                process = subprocess.Popen(
                    command,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env=worker_pool_environment(),
                )
            pids[name] = process.pid
            (run_dir / f"{name}.pid").write_text(str(process.pid))
        _wait_until_ready(run_dir, rest_port, worker_pool_port)
    except BaseException:
        down(run_dir)
        raise
    return pids


def _wait_until_ready(run_dir: Path, rest_port: int, worker_pool_port: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        alive = running(run_dir)
        stopped = [name for name in PROCESSES if name not in alive]
        if stopped:
            raise ClusterError(f"the {stopped[0]} exited while starting: see {_log_of(run_dir, stopped[0])}")
        # A program that took a port after up checked it would answer for the cluster: only our processes count.
        for name, port in ((JOBMANAGER, rest_port), (WORKER_POOL, worker_pool_port)):
            if who_listens(alive[name], port) is Listener.ANOTHER:
                raise ClusterError(f"another program listens on port {port} too; the {name} cannot serve there")
        summary = overview(rest_port)
        if summary is None:
            waiting_for = JOBMANAGER
        elif summary.get("taskmanagers") != 1 or summary.get("slots-total") != PARALLELISM:
            waiting_for = TASKMANAGER
        elif who_listens(alive[WORKER_POOL], worker_pool_port) is not Listener.OURS:
            waiting_for = WORKER_POOL
        else:
            return
        if time.monotonic() > deadline:
            raise ClusterError(
                f"the {waiting_for} was not ready within {START_TIMEOUT_S:.0f} s: see {_log_of(run_dir, waiting_for)}"
            )
        time.sleep(0.5)


def _log_of(run_dir: Path, name: str) -> Path:
    # Flink's processes log through log4j; the worker pool (and a JVM that dies before log4j starts) to stdout.
    log = run_dir / f"{name}.log"
    return log if log.is_file() and log.stat().st_size else run_dir / f"{name}.out"


def down(run_dir: Path) -> list[str]:
    """Stops every process of the cluster in ``run_dir`` (SIGTERM to its group, SIGKILL when it outlives the bound)
    and removes the pid files; the names of those that were running. Stopping a stopped cluster does nothing."""
    alive = running(run_dir)
    # The TaskManager first, so it does not spend its shutdown reconnecting to a JobManager already gone.
    for name in (TASKMANAGER, JOBMANAGER, WORKER_POOL):
        if name in alive:
            stop(alive[name])
        (run_dir / f"{name}.pid").unlink(missing_ok=True)
    return [name for name in PROCESSES if name in alive]


def fetch_job_server_jar(log: Path) -> str | None:
    """Copies :data:`JOB_SERVER_ARTIFACT` to :func:`job_server_jar` with Maven (one bounded attempt, its output in
    ``log``) unless it is there; None when the jar is in place, else one line saying why it is not."""
    jar = job_server_jar()
    if jar.is_file():
        return None
    unavailable = f"Beam's Flink job server {JOB_SERVER_ARTIFACT} is not available from Maven"
    consequence = "the cluster is up, but FlinkRunner jobs cannot be submitted"
    if shutil.which("mvn") is None:
        return f"{unavailable} (mvn is not on PATH): {consequence}"
    jar.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=jar.parent) as copy_dir, log.open("wb") as output:
        # -U: a refusal Maven remembers from an earlier attempt is asked again, so a newly published jar is found.
        command = [
            "mvn",
            "-B",
            "-U",
            "dependency:copy",
            f"-Dartifact={JOB_SERVER_ARTIFACT}",
            f"-DoutputDirectory={copy_dir}",
        ]
        try:
            completed = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, timeout=MAVEN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"{unavailable} within {MAVEN_TIMEOUT_S:.0f} s (see {log}): {consequence}"
        copied = list(Path(copy_dir).glob("*.jar"))
        if completed.returncode != 0 or not copied:
            return f"{unavailable} (see {log}): {consequence}"
        copied[0].rename(jar)
    return None


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (1 to 65535)")
    return int(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m tools.flink_cluster", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    up_parser = commands.add_parser("up", help="start the cluster and the worker pool in the background")
    status_parser = commands.add_parser("status", help="say which of the cluster's processes run")
    down_parser = commands.add_parser("down", help="stop what up started")
    up_parser.add_argument("--rest-port", type=_port, default=REST_PORT, help="the JobManager's REST port")
    up_parser.add_argument("--worker-pool-port", type=_port, default=WORKER_POOL_PORT, help="the worker pool's port")
    for command in (up_parser, status_parser, down_parser):
        command.add_argument("--run-dir", type=Path, default=default_run_dir(), help="pid files, logs, checkpoints")
    args = parser.parse_args(argv)
    if args.command == "down":
        stopped = down(args.run_dir)
        print(f"stopped {', '.join(stopped)}" if stopped else "the Flink cluster was not running")
        return 0
    if args.command == "status":
        return _status(args.run_dir)
    if running(args.run_dir).keys() == set(PROCESSES):
        print(f"the Flink cluster is already up (run folder {args.run_dir}); make flink-down stops it")
        return 0
    if shutil.which("java") is None:
        print("flink_cluster: Flink needs Java (17 or later), which is not on PATH", file=sys.stderr)
        return USAGE_ERROR
    # What is left of a cluster that lost a process goes before a new one starts.
    down(args.run_dir)
    try:
        started = time.monotonic()
        up(args.run_dir, rest_port=args.rest_port, worker_pool_port=args.worker_pool_port)
    except ClusterError as error:
        print(f"flink_cluster: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # up() has already stopped what it started.
        return 130
    print(
        f"Flink {FLINK_VERSION} session cluster up in {time.monotonic() - started:.0f} s: "
        f"REST http://localhost:{args.rest_port} (1 TaskManager, {PARALLELISM} slots), "
        f"Beam worker pool localhost:{args.worker_pool_port}, logs in {args.run_dir}"
    )
    missing_job_server = fetch_job_server_jar(args.run_dir / "maven.log")
    print(missing_job_server or f"Beam's Flink job server: {job_server_jar()}")
    return 0


def _status(run_dir: Path) -> int:
    alive = running(run_dir)
    for name in PROCESSES:
        print(f"{name}: running, pid {alive[name]}" if name in alive else f"{name}: stopped")
    if JOBMANAGER in alive:
        rest_port = yaml.safe_load((run_dir / "config.yaml").read_text())["rest.port"]
        summary = overview(rest_port)
        print(
            f"REST http://localhost:{rest_port}: {summary['taskmanagers']} TaskManager(s), "
            f"{summary['slots-available']} of {summary['slots-total']} slots free, "
            f"{summary['jobs-running']} job(s) running"
            if summary
            else f"REST http://localhost:{rest_port}: not answering"
        )
    return 0 if alive.keys() == set(PROCESSES) else 1


if __name__ == "__main__":
    sys.exit(main())
