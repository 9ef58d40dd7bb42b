"""``profilestream run`` on Prism, Beam's Go local runner: the same lake and profile store as the DirectRunner, and
a Pub/Sub read (:class:`transforms.pubsub_source.ReadPubSubAcknowledged`) that SIGTERM drains as it does there.

Prism is the binary ``make prism`` builds; without it the test is skipped, except under CI (``CI=true``), where that
is a failure. Each run is a separate process, killed with its Prism server if it outlives ``RUN_TIMEOUT_S``: a
streaming job that still holds a processing-time timer does not finish on Prism.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import dataset_files, finished, lake_rows, stream_lines
from tests.pipelines.test_pubsub_run import EVENT_IDS, FAILED, MESSAGES, MINUTES, VALID, publish_stream, start_run
from tests.pipelines.test_run import profile_store_contents, stores_beside
from tests.service.test_inlet import pull_all

RUN_TIMEOUT_S = 120

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def run_replay(stream: Path, lake: Path, *runner_args: str) -> None:
    """A streaming replay of ``stream`` into ``lake`` and stores beside it, in its own process group."""
    command = [sys.executable, "-m", "pipelines.cli", "run", "--source", f"replay:{stream}", "--lake", str(lake)]
    run = finished([*command, *stores_beside(lake), *runner_args], RUN_TIMEOUT_S)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]


def test_prism_writes_the_lake_and_profiles_of_the_direct_runner(prism, small_stream, tmp_path):
    run_replay(small_stream, tmp_path / "prism", "--runner", "PrismRunner", "--prism_location", str(prism))
    run_replay(small_stream, tmp_path / "direct")

    assert lake_rows(tmp_path / "prism", "experience_events")
    for dataset in ("experience_events", "failed_records", "identity_changes", "profile_records"):
        assert lake_rows(tmp_path / "prism", dataset) == lake_rows(tmp_path / "direct", dataset)
    assert dataset_files(tmp_path / "prism") == dataset_files(tmp_path / "direct")
    assert profile_store_contents(tmp_path / "prism") == profile_store_contents(tmp_path / "direct")


def test_a_pubsub_run_on_prism_reads_every_message_once_and_drains_on_sigterm(prism, topology, tmp_path):
    publish_stream(topology.topic, stream_lines(minutes=MINUTES, per_minute=10))
    run = start_run(topology, tmp_path, "--runner", "PrismRunner", "--prism_location", str(prism))
    try:
        # Failures are spread over the stream, so once all have reached the dead-letter topic the read has pulled it.
        assert len(pull_all(topology.dead_letter_subscription, FAILED, timeout_s=RUN_TIMEOUT_S)) == FAILED
        time.sleep(1)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 0, err[-4000:]
    summary = json.loads(out.strip().splitlines()[-1])

    assert summary["messages"] == MESSAGES
    assert (summary["valid"], summary["failed"]) == (VALID, FAILED)
    assert summary["records"] == summary["valid"] + summary["failed"]
    # The DirectRunner's read of the same stream (test_pubsub_run) holds exactly these events.
    assert sorted(row["_id"] for row in lake_rows(tmp_path / "lake", "experience_events")) == sorted(EVENT_IDS)
