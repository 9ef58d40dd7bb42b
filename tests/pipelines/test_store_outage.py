"""Store outages in the middle of a Pub/Sub run: the run waits them out, says so, catches up, and loses nothing.

``profilestream run`` reads a subscription of Google's Pub/Sub emulator on the local streaming runner, with its
identity and profile stores on a Redis server of the test's own (an append-only file synced on every write, so that a
SIGKILL loses nothing the server acknowledged). Messages are published at ``RATE`` a second for ``PUBLISH_S``
seconds. Meanwhile the Redis server is stopped (SIGSTOP) for ``OUTAGE_S`` seconds and continued, then killed
(SIGKILL) and restarted ``OUTAGE_S`` seconds later on the same port and files. Then the run must catch up: every
event published is in the profile store, and after SIGTERM in the lake, and the run's log says when each store could
not be reached and when it answered again. The same with the SQLite stores, whose file another process holds locked.

The recovery times are printed (``pytest -s``).
"""

from __future__ import annotations

import datetime
import json
import os
import re
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from google.cloud import pubsub_v1

from profiles.model import view_from_bytes
from stores.opening import open_profile_store
from tests.conftest import start_redis
from tests.helpers import envelope, event, lake_rows
from tests.pipelines.test_pubsub_run import start_run
from tools.pubsub_emulator import free_port

RATE = 200
PUBLISH_S = 50
OUTAGE_S = 20
DEVICES = 40
CATCH_UP_S = 180
START = datetime.datetime(2026, 11, 1, 9, 0, tzinfo=datetime.UTC)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def device(n: int) -> str:
    return f"{n + 1:038d}"


def publish_at_rate(topic: str, count: int, published: list[str]) -> None:
    """Publishes ``count`` events, ``RATE`` a second, spread over ``DEVICES`` devices; appends each event id."""
    publisher = pubsub_v1.PublisherClient()
    started = time.monotonic()
    futures = []
    for n in range(count):
        delay = started + n / RATE - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        event_id = f"e{n}"
        at = START + datetime.timedelta(milliseconds=5 * n)
        data = json.dumps(envelope(event(event_id, at, ecid=device(n % DEVICES)))).encode()
        futures.append(publisher.publish(topic, data))
        published.append(event_id)
    for future in futures:
        future.result(timeout=60)
    publisher.stop()


def events_in_profiles(profile_store: str) -> int:
    total = 0
    with open_profile_store(profile_store) as store:
        for n in range(DEVICES):
            view = store.view_by_identity(f"ECID:{device(n)}")
            total += 0 if view is None else view_from_bytes(view)["events"]["count"]
    return total


def run_through_outages(
    topology, folder: Path, stores: list[str], outages: Callable[[], None], profile_store: str
) -> tuple[dict, str, float]:
    """Runs ``profilestream run`` on the stores while publishing and while ``outages`` runs; returns the summary,
    the run's log and how long after the outages the profile store held every event."""
    run = start_run(topology, folder, *stores)
    published: list[str] = []
    publisher = threading.Thread(target=publish_at_rate, args=(topology.topic, RATE * PUBLISH_S, published))
    try:
        time.sleep(3)  # the run subscribes
        publisher.start()
        outages()
        outages_over = time.monotonic()
        publisher.join(timeout=PUBLISH_S + 60)
        deadline = time.monotonic() + CATCH_UP_S
        while events_in_profiles(profile_store) < len(published):
            assert run.poll() is None, run.communicate()[1][-4000:]
            assert time.monotonic() < deadline, f"{events_in_profiles(profile_store)} of {len(published)} events"
            time.sleep(1)
        caught_up_s = time.monotonic() - outages_over
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=CATCH_UP_S)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 0, err[-4000:]
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["messages"] == len(published) == summary["valid"]
    assert sorted(row["_id"] for row in lake_rows(folder / "lake", "experience_events")) == sorted(published)
    assert events_in_profiles(profile_store) == len(published)
    return summary, err, caught_up_s


def said(log: str) -> list[float]:
    """The outages the run's log tells of, as it tells them (each store object tells of its own): how long each
    lasted, in seconds, from the first call it held up."""
    told = re.findall(r"(?:identity|profile) store \S+ cannot be reached \(.+\): waiting for it", log)
    back = [float(seconds) for seconds in re.findall(r"store \S+ answers again, after ([0-9.]+) s", log)]
    assert told and len(back) == len(told), log[-4000:]
    return back


def test_a_redis_store_stopped_then_killed_and_restarted_is_waited_out_and_nothing_is_lost(topology, tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = [start_redis(tmp_path, port, durable=True)]

    def outages() -> None:
        time.sleep(5)
        server[0].send_signal(signal.SIGSTOP)
        time.sleep(OUTAGE_S)
        server[0].send_signal(signal.SIGCONT)
        time.sleep(5)
        server[0].kill()
        server[0].wait()
        time.sleep(OUTAGE_S)
        server[0] = start_redis(tmp_path, port, durable=True)

    try:
        summary, log, caught_up_s = run_through_outages(
            topology, tmp_path, ["--identity-store", url, "--profile-store", url], outages, url
        )
    finally:
        server[0].kill()
        server[0].wait()
    print(f"Redis outages: back after {said(log)} s; every event in the profiles {caught_up_s:.1f} s later")
    assert summary["lake"]["experience_events"]["rows"] == RATE * PUBLISH_S


def test_a_sqlite_store_locked_by_another_process_is_waited_out_and_nothing_is_lost(topology, tmp_path):
    identity, profiles = tmp_path / "identity.sqlite", tmp_path / "profiles.sqlite"
    stores = ["--identity-store", f"sqlite:///{identity}", "--profile-store", f"sqlite:///{profiles}"]

    def outages() -> None:
        time.sleep(5)
        for path in (identity, profiles):
            with sqlite3.connect(path, isolation_level=None) as locker:
                locker.execute("BEGIN EXCLUSIVE")
                time.sleep(OUTAGE_S / 2)
                locker.execute("COMMIT")

    summary, log, caught_up_s = run_through_outages(topology, tmp_path, stores, outages, f"sqlite:///{profiles}")
    print(f"SQLite locks: waited {said(log)} s; every event in the profiles {caught_up_s:.1f} s later")
    assert summary["lake"]["experience_events"]["rows"] == RATE * PUBLISH_S
