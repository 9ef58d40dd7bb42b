"""A privacy delete while a streaming run writes into the same lake and stores (Google's Pub/Sub emulator).

The run reads Ann's and Bob's page views from Pub/Sub and commits the lake every second. Once the first ones are in
the lake, Ann is deleted by her cookie; then both send more. Afterwards the lake holds each of Bob's rows once, none of
Ann's rows written before the delete, and her later rows only when the delete did not suppress her: with
``--suppress`` the run dropped them and its summary counts them, and records = valid + failed + suppressed.
"""

from __future__ import annotations

import datetime
import json
import signal
import time
from pathlib import Path

import pytest

from pipelines.cli import main
from tests.helpers import envelope, event, lake_rows, rest_line
from tests.pipelines.test_pubsub_run import RUN_TIMEOUT_S, publish_stream, start_run
from tests.service.test_inlet import pull_all

ANN_COOKIE = "2" * 38
ANN_EMAIL = "Ann.Privacy@Example.com"
BOB_COOKIE = "3" * 38
KEY = "a-privacy-key-for-tests-only-0123456789"


def page_views(who: str, cookie: str, first: int, count: int) -> list[str]:
    now = datetime.datetime.now(datetime.UTC)
    lines = []
    for n in range(first, first + count):
        entity = event(f"{who}-{n}", now, cookie)
        if who == "ann":
            entity["identityMap"]["Email"] = [{"id": ANN_EMAIL, "authenticatedState": "authenticated"}]
        lines.append(rest_line(envelope(entity), f"{who}-{n}", now))
    return lines


def wait_for_events(lake: Path, count: int) -> list[dict]:
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        rows = lake_rows(lake, "experience_events") if lake.exists() else []
        if len(rows) >= count:
            return rows
        time.sleep(0.5)
    raise AssertionError(f"the lake did not reach {count} events in {RUN_TIMEOUT_S} s")


@pytest.mark.integration
def test_a_delete_while_a_streaming_run_writes_the_lake(topology, tmp_path, monkeypatch):
    delete_while_streaming(topology, tmp_path, monkeypatch, suppress=False)


@pytest.mark.integration
def test_a_delete_with_suppress_while_a_streaming_run_writes_the_lake(topology, tmp_path, monkeypatch):
    delete_while_streaming(topology, tmp_path, monkeypatch, suppress=True)


def delete_while_streaming(topology, tmp_path: Path, monkeypatch, *, suppress: bool) -> None:
    monkeypatch.setenv("PROFILESTREAM_PRIVACY_KEY", KEY)
    privacy_store = f"--privacy-store=sqlite:///{tmp_path}/privacy.sqlite"
    run = start_run(topology, tmp_path, "--commit-interval=1", privacy_store)
    try:
        publish_stream(topology.topic, page_views("ann", ANN_COOKIE, 0, 4) + page_views("bob", BOB_COOKIE, 0, 4))
        wait_for_events(tmp_path / "lake", 8)

        delete = [
            "privacy",
            "delete",
            f"--identity=ECID:{ANN_COOKIE}",
            f"--lake={tmp_path / 'lake'}",
            f"--identity-store=sqlite:///{tmp_path}/identity.sqlite",
            f"--profile-store=sqlite:///{tmp_path}/profiles.sqlite",
            privacy_store,
            *(["--suppress"] if suppress else []),
        ]
        assert main(delete) == 0
        # The run re-reads the suppression list within a second.
        time.sleep(1.5)

        later = page_views("ann", ANN_COOKIE, 4, 3) + page_views("bob", BOB_COOKIE, 4, 3)
        publish_stream(
            topology.topic, [*later, rest_line(b'{"not json', "marker", datetime.datetime.now(datetime.UTC))]
        )
        assert len(pull_all(topology.dead_letter_subscription, 1, timeout_s=RUN_TIMEOUT_S)) == 1
        wait_for_events(tmp_path / "lake", 4 + 3 + (0 if suppress else 3))
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        run.kill()
    assert run.returncode == 0, err

    events = sorted(row["_id"] for row in lake_rows(tmp_path / "lake", "experience_events"))
    bob = [f"bob-{n}" for n in range(7)]
    ann_later = [] if suppress else [f"ann-{n}" for n in range(4, 7)]
    assert events == sorted(bob + ann_later)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["suppressed"] == (3 if suppress else 0)
    assert summary["records"] == summary["valid"] + summary["failed"] + summary["suppressed"]
    lake_bytes = b"".join(
        json.dumps(row, default=repr).encode()
        for dataset in ("experience_events", "identity_changes", "failed_records")
        for row in lake_rows(tmp_path / "lake", dataset)
    )
    if suppress:
        assert ANN_COOKIE.encode() not in lake_bytes and ANN_EMAIL.lower().encode() not in lake_bytes.lower()
