"""Private Redis and Bigtable-emulator servers on free loopback ports, for benchmarks and tests."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import redis

from tools.local_servers import free_port, local_server


@contextlib.contextmanager
def private_redis(folder: str) -> Iterator[str]:
    """A ``redis-server`` of our own on a free loopback port, without persistence; its URL while it runs."""
    port = free_port()
    arguments = ["--port", str(port), "--bind", "127.0.0.1", "--dir", folder, "--save", "", "--appendonly", "no"]
    url = f"redis://127.0.0.1:{port}/0"
    command = [shutil.which("redis-server"), *arguments]
    with (
        redis.Redis.from_url(url) as client,
        local_server("redis-server", command, Path(folder, "redis.log"), lambda: redis_answers(client), port=port),
    ):
        yield url


def redis_answers(client: redis.Redis) -> bool:
    try:
        return client.ping()
    except redis.exceptions.ConnectionError:
        return False


def bigtable_emulator_binary() -> Path | None:
    """``cbtemulator`` on the PATH, or in the Google Cloud CLI that ``gcloud`` runs from (its bigtable emulator)."""
    found = shutil.which("cbtemulator")
    if found is not None:
        return Path(found)
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        return None
    binary = Path(gcloud).resolve().parent.parent / "platform" / "bigtable-emulator" / "cbtemulator"
    return binary if os.access(binary, os.X_OK) else None


@contextlib.contextmanager
def private_bigtable_emulator(folder: str, binary: Path) -> Iterator[str]:
    """Google's Bigtable emulator on a free loopback port, its tables in memory; its ``HOST:PORT`` while it runs."""
    port = free_port()
    command = [str(binary), "-host", "127.0.0.1", "-port", str(port)]
    with local_server("the Bigtable emulator", command, Path(folder, "bigtable.log"), port=port):
        yield f"127.0.0.1:{port}"
