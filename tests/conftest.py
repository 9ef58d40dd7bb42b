"""Fixtures that start real servers for integration tests, one per test session (per xdist worker).

``redis_server`` starts ``redis-server`` on a free loopback port, in a temporary folder and without persistence, and
yields its URL (``redis://127.0.0.1:PORT/0``). Tests share it, so each empties what it uses (``FLUSHDB``). Without a
``redis-server`` binary the tests that need it are skipped, except under CI (``CI=true``), where that is a failure.

``bigtable_emulator`` starts Google's Bigtable emulator (``cbtemulator``, from the Google Cloud CLI's bigtable emulator
component) on a free loopback port and yields its ``HOST:PORT``. It sets nothing in the environment: a test hands it
to Google's client as ``BIGTABLE_EMULATOR_HOST`` itself (``monkeypatch.setenv``). Its tables are in memory, so tests
share it by each using tables of its own. Missing, it is skipped as ``redis-server`` is (and fails under CI).

``pubsub_emulator`` starts Google's Pub/Sub emulator (:mod:`tools.pubsub_emulator`) on a free loopback port and
yields its ``HOST:PORT``; like the Bigtable emulator it sets nothing in the environment (tests set
``PUBSUB_EMULATOR_HOST`` themselves), and tests share it by each making topics of their own
(:func:`tools.pubsub_emulator.create_topology`). Missing (no gcloud, no emulator component, no Java), it is
skipped, and fails under CI.

``gcs_emulator`` starts fake-gcs-server, an open-source Cloud Storage emulator (``make gcs-emulator`` builds it), in
memory on a free loopback port and yields its URL for ``STORAGE_EMULATOR_HOST``; missing, it is skipped as the others
are.

``prism`` is the path of the Prism binary ``make prism`` builds; missing, it is skipped as the servers are.

Every server here starts through :mod:`tools.local_servers`: only on a port no other program holds, and counted
up only once its own process group is alone listening there; otherwise it is stopped (its whole group) and the test
fails with that one line and the end of the server's log.
"""

import contextlib
import gc
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import redis

from pipelines.local_runner import prism_binary
from tests.helpers import small_stream, topology  # noqa: F401  (fixtures offered to every test)
from tools import pubsub_emulator as pubsub
from tools.local_servers import PortTakenError, ServerStartError, free_port, local_server, start_server
from tools.store_servers import bigtable_emulator_binary, redis_answers

SERVER_START_TIMEOUT_S = 10.0
LOG_TAIL_CHARS = 4000
FAKE_GCS_SERVER_ENV = "FAKE_GCS_SERVER"


def missing_prerequisite(reason: str) -> NoReturn:
    """Skips the test for want of a program it needs, with ``reason`` as the one line; under CI (``CI=true``),
    where every prerequisite must be there, fails it instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def prism() -> Path:
    """The Prism binary ``make prism`` builds, to pass as ``--prism_location``."""
    binary = prism_binary()
    if not os.access(binary, os.X_OK):
        missing_prerequisite(f"no Prism binary at {binary} (make prism)")
    return binary


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("redis")
    port = free_port()
    process = start_redis(folder, port)
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=SERVER_START_TIMEOUT_S)


def start_redis(folder: Path, port: int, *, durable: bool = False) -> subprocess.Popen:
    """``redis-server`` on ``port`` with its files in ``folder``, once it answers there, it and no other program:
    without persistence, or ``durable``, with an append-only file synced on every write (what survives a SIGKILL
    and a restart)."""
    binary = shutil.which("redis-server")
    if binary is None:
        missing_prerequisite("redis-server not found (Debian package redis-server)")
    persistence = ["--appendonly", "yes", "--appendfsync", "always"] if durable else ["--appendonly", "no"]
    command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "", *persistence]
    with redis.Redis.from_url(f"redis://127.0.0.1:{port}/0") as client:
        try:
            return start_server(
                "redis-server",
                command,
                folder / "redis.log",
                port=port,
                ready=lambda: redis_answers(client),
                timeout_s=SERVER_START_TIMEOUT_S,
            )
        except (PortTakenError, ServerStartError) as error:
            did_not_start(error)


def did_not_start(error: PortTakenError | ServerStartError) -> NoReturn:
    """Fails the test with the server's one line and, when it ran, the end of its log."""
    log = getattr(error, "log", None)
    if log is None or not log.exists():
        pytest.fail(str(error))
    pytest.fail(f"{error}\n{log.read_text(errors='replace')[-LOG_TAIL_CHARS:]}")


@pytest.fixture(scope="session")
def bigtable_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = bigtable_emulator_binary()
    if binary is None:
        missing_prerequisite("Bigtable emulator not found (the Google Cloud CLI's component, cbtemulator)")
    port = free_port()
    command = [str(binary), "-host", "127.0.0.1", "-port", str(port)]
    with _listening("the Bigtable emulator", command, port, tmp_path_factory.mktemp("bigtable") / "emulator.log"):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="session")
def gcs_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = fake_gcs_server_binary()
    if binary is None:
        missing_prerequisite("fake-gcs-server not found (make gcs-emulator)")
    port = free_port()
    address = f"127.0.0.1:{port}"
    command = [str(binary), "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1", "-port", str(port)]
    command += ["-public-host", address, "-external-url", f"http://{address}", "-log-level", "warn"]
    with _listening("fake-gcs-server", command, port, tmp_path_factory.mktemp("gcs") / "emulator.log"):
        yield f"http://{address}"


def fake_gcs_server_binary() -> Path | None:
    """The Cloud Storage emulator ``make gcs-emulator`` builds (``$FAKE_GCS_SERVER``, which ``make test`` sets, or
    the newest under ``~/.cache/profilestream/fake-gcs-server``), or None."""
    if FAKE_GCS_SERVER_ENV in os.environ:
        binary = Path(os.environ[FAKE_GCS_SERVER_ENV])
        return binary if os.access(binary, os.X_OK) else None
    built = sorted(Path.home().glob(".cache/profilestream/fake-gcs-server/v*/fake-gcs-server"))
    return built[-1] if built else None


@contextlib.contextmanager
def _listening(name: str, command: list[str], port: int, log: Path) -> Iterator[None]:
    """Runs ``command`` (output in ``log``) while the block runs, entered once it, and no other program, listens on
    ``port`` (:func:`tools.local_servers.local_server`)."""
    with contextlib.ExitStack() as server:
        try:
            server.enter_context(local_server(name, command, log, port=port, start_timeout_s=SERVER_START_TIMEOUT_S))
        except (PortTakenError, ServerStartError) as error:
            did_not_start(error)
        yield


@pytest.fixture(scope="session")
def pubsub_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    try:
        pubsub.emulator_binary()
    except pubsub.EmulatorNotFoundError as missing:
        missing_prerequisite(str(missing))
    with contextlib.ExitStack() as emulator:
        try:
            host = emulator.enter_context(pubsub.running_emulator(tmp_path_factory.mktemp("pubsub")))
        except (PortTakenError, ServerStartError) as error:
            did_not_start(error)
        yield host


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Collects the session's garbage before a worker reports itself finished.

    Under xdist the controller ends a worker once it reports finished, and execnet sends a worker whose main thread is
    still busy five seconds later a SIGINT. A garbage collection in that window (after thousands of pipelines, on a
    loaded machine, it takes seconds) runs the finalisers of unreachable Redis clients, and the SIGINT then surfaces as
    a ``KeyboardInterrupt`` traceback from a Redis client's ``__del__`` just above the pass line: seen once, not
    reproduced since. Collecting here, before xdist's report, leaves that window no garbage to collect.
    """
    gc.collect()
