"""The Beam options that submit a run to the local Flink session cluster (:mod:`tools.flink_cluster`).

``profilestream run --runner FlinkRunner`` with no other flag submits to that cluster: :func:`flink_runner_args`
supplies every Flink option the user did not give. Beam's FlinkRunner needs its Flink job-server jar by path, because
Beam would otherwise download it at run time; :func:`job_server_jar` is where ``make flink-up`` keeps it.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

# Beam 2.77 publishes Flink job servers for 1.19 to 2.2; this is the newest Flink of those that PyPI's
# apache-flink-libraries carries.
FLINK_VERSION = "2.2.1"
FLINK_RUNNER = "FlinkRunner"
FLINK_MINOR = ".".join(FLINK_VERSION.split(".")[:2])
REST_PORT = 8081
WORKER_POOL_PORT = 50000
PARALLELISM = 2
CHECKPOINT_INTERVAL_MS = 10_000
FLINK_HOME_ENV = "PROFILESTREAM_FLINK_HOME"
JOB_SERVER_JAR_ENV = "PROFILESTREAM_FLINK_JOB_SERVER_JAR"
# Read from the installed distribution, so that the CLI need not import Beam to know its version.
BEAM_VERSION = importlib.metadata.version("apache-beam")
JOB_SERVER_ARTIFACT = f"org.apache.beam:beam-runners-flink-{FLINK_MINOR}-job-server:{BEAM_VERSION}"


def cache_dir() -> Path:
    """Where the Flink distribution, the job-server jar and the cluster's state live (``$PROFILESTREAM_FLINK_HOME``
    overrides it)."""
    default = Path.home() / ".cache" / "profilestream" / "flink" / FLINK_VERSION
    return Path(os.environ.get(FLINK_HOME_ENV, default))


def job_server_jar() -> Path:
    """Beam's Flink job-server jar for the installed Beam and :data:`FLINK_VERSION`; it may be missing."""
    default = cache_dir() / f"beam-runners-flink-{FLINK_MINOR}-job-server-{BEAM_VERSION}.jar"
    return Path(os.environ.get(JOB_SERVER_JAR_ENV, default))


def flink_runner_args(beam_args: list[str] | tuple[str, ...]) -> list[str]:
    """``beam_args`` with the local cluster's options added wherever the user gave none of their own."""
    defaults = {
        "--flink_master": f"localhost:{REST_PORT}",
        "--flink_version": FLINK_MINOR,
        "--flink_job_server_jar": str(job_server_jar()),
        "--environment_type": "EXTERNAL",
        "--environment_config": f"localhost:{WORKER_POOL_PORT}",
        "--parallelism": str(PARALLELISM),
        "--checkpointing_interval": str(CHECKPOINT_INTERVAL_MS),
    }
    given = {arg.split("=", 1)[0] for arg in beam_args if arg.startswith("--")}
    return [*beam_args, *(f"{flag}={value}" for flag, value in defaults.items() if flag not in given)]
