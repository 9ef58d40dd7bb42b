"""``profilestream run --source pubsub:...`` against Google's Pub/Sub emulator, end to end, as a user runs it.

Messages are published with attributes, the run reads them in streaming mode on the local runner, and SIGTERM stops
it: the read ends, the pipeline flushes what it holds, and the summary is printed. The lake, the profile store and
the dead-letter topic then hold what a replay of the same stream would give.
"""

from __future__ import annotations

import base64
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stores.opening import open_profile_store
from tests.helpers import envelope, event, lake_rows, rest_line, stream_lines
from tests.service.test_inlet import pull_all
from tools.pubsub_emulator import Topology

MINUTES = 4
MESSAGES = MINUTES * 11  # stream_lines: 10 a minute and a redelivery
VALID = MINUTES * (7 + 3 + 1)
FAILED = MINUTES * 2
DUPLICATES = MINUTES
RUN_TIMEOUT_S = 120.0
# The events the stream's valid messages hold, one each whatever the redeliveries.
EVENT_IDS = {f"e{m}-{n}" for m in range(MINUTES) for n in (0, 1, 2, 4, 6, 8, 9)} | {
    f"e{m}-7-{k}" for m in range(MINUTES) for k in range(3)
}


def publish_stream(topic: str, lines: list[str]) -> None:
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    futures = []
    for line in lines:
        rest = json.loads(line)
        attributes = {**rest.get("attributes", {}), "connectionId": "test-conn"}
        futures.append(publisher.publish(topic, base64.b64decode(rest["data"]), **attributes))
    for future in futures:
        future.result(timeout=30)
    publisher.stop()


def start_run(topology: Topology, folder: Path, *runner_args: str) -> subprocess.Popen:
    """``profilestream run`` on the topology's subscription, in a process group of its own (with any runner's)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "run",
            "--source",
            f"pubsub:{topology.subscription}",
            "--dead-letter-topic",
            topology.dead_letter_topic,
            "--lake",
            str(folder / "lake"),
            "--identity-store",
            f"sqlite:///{folder}/identity.sqlite",
            "--profile-store",
            f"sqlite:///{folder}/profiles.sqlite",
            *runner_args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
        start_new_session=True,
    )


def test_published_messages_reach_the_lake_the_profiles_and_the_dead_letter_topic(topology, tmp_path):
    publish_stream(topology.topic, stream_lines(minutes=MINUTES, per_minute=10))
    run = start_run(topology, tmp_path)
    try:
        # Failures are spread over the stream, so once all have reached the dead-letter topic the read has pulled it.
        dead_letters = pull_all(topology.dead_letter_subscription, FAILED, timeout_s=RUN_TIMEOUT_S)
        assert len(dead_letters) == FAILED
        time.sleep(1)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        run.kill()
    assert run.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])

    assert summary["messages"] == MESSAGES
    assert (summary["valid"], summary["failed"]) == (VALID, FAILED)
    assert summary["records"] == summary["valid"] + summary["failed"]
    assert summary["duplicates"] == DUPLICATES
    assert summary["profiles_written"] > 0
    assert summary["profile_freshness_ms"]["p99"] is not None
    events = lake_rows(tmp_path / "lake", "experience_events")
    assert len(events) == VALID - DUPLICATES
    assert {row["_id"] for row in events} == EVENT_IDS
    failed_rows = lake_rows(tmp_path / "lake", "failed_records")
    assert len(failed_rows) == FAILED
    assert all(dict(row["attributes"])["connectionId"] == "test-conn" for row in failed_rows)
    codes = sorted(message.attributes["profilestream.errorCode"] for message in dead_letters)
    assert codes == sorted(["DECODE.NOT_JSON", "SCHEMA.REQUIRED"] * MINUTES)
    assert {bytes(message.data) for message in dead_letters} >= {b'{"not json'}
    with open_profile_store(f"sqlite:///{tmp_path}/profiles.sqlite") as store:
        assert store.view_by_identity("ECID:" + "1" * 38) is not None


def run_until_dead_letter(topology: Topology, folder: Path, event_ids: list[str]) -> None:
    """Publishes a valid event for each id and one message that is not JSON, runs until that message reaches the
    dead-letter topic (the read has pulled what came before it), and stops the run with SIGTERM."""
    now = datetime.datetime.now(datetime.UTC)
    lines = [rest_line(envelope(event(event_id, now)), event_id, now) for event_id in event_ids]
    publish_stream(topology.topic, [*lines, rest_line(b'{"not json', "bad", now)])
    run = start_run(topology, folder)
    try:
        assert len(pull_all(topology.dead_letter_subscription, 1, timeout_s=RUN_TIMEOUT_S)) == 1
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        run.kill()
    assert run.returncode == 0, err


def test_a_run_restarted_into_the_same_commit_window_keeps_what_the_first_run_wrote(topology, tmp_path):
    first, second = [f"first-{n}" for n in range(6)], [f"second-{n}" for n in range(4)]

    run_until_dead_letter(topology, tmp_path, first)
    assert sorted(row["_id"] for row in lake_rows(tmp_path / "lake", "experience_events")) == sorted(first)
    run_until_dead_letter(topology, tmp_path, second)

    assert sorted(row["_id"] for row in lake_rows(tmp_path / "lake", "experience_events")) == sorted(first + second)


def test_a_missing_subscription_is_one_line_and_exit_2(topology, tmp_path):
    missing = topology.subscription + "-missing"
    run = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run", "--source", f"pubsub:{missing}", "--lake", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )

    assert run.returncode == 2
    assert run.stderr.strip() == f"profilestream: error: {missing}: not found"
