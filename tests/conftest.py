"""Fixtures that start real servers for integration tests, one per test session (per xdist worker).

``redis_server`` starts ``redis-server`` on a free loopback port, in a temporary folder and without persistence, and
yields its URL (``redis://127.0.0.1:PORT/0``). Tests share it, so each empties what it uses (``FLUSHDB``). Without a
``redis-server`` binary the tests that need it are skipped, except under CI (``CI=true``), where that is a failure.
"""

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

SERVER_START_TIMEOUT_S = 10.0


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        reason = "redis-server not found (Debian package redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    folder = tmp_path_factory.mktemp("redis")
    port = _free_port()
    log = folder / "redis.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(folder),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        url = f"redis://127.0.0.1:{port}/0"
        _wait_until_ready(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=SERVER_START_TIMEOUT_S)


def _free_port() -> int:
    # The port is free when asked; the server binds it a moment later, a race other processes rarely win.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    client = redis.Redis.from_url(url)
    deadline = time.monotonic() + SERVER_START_TIMEOUT_S
    try:
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not start: {log.read_text(errors='replace')}")
                time.sleep(0.02)
    finally:
        client.close()
