"""ReadPubSubAcknowledged: its pure parts (watermark estimate, ack leases, message conversion) without Beam, its DoFn's
leases against Google's Pub/Sub emulator with a finaliser held back as a slow checkpoint would, and the transform on
Prism against the emulator.

Each Prism run is a separate process (this module run as ``python -m``: :func:`read_job`), in a process group of
its own that is killed if it outlives ``RUN_TIMEOUT_S``. Its messages go to a JSON-lines sink the test reads; SIGTERM
sets the read's stop event, as ``profilestream run`` does. The test subscriptions have the shortest ack deadline
Pub/Sub allows (10 s), so a pull once it has run out shows what was acknowledged and what comes back.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import apache_beam as beam
import pytest
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.sdf_utils import RestrictionTrackerView, ThreadsafeRestrictionTracker

from core.clock import wall_clock_us
from pipelines.ingest import RunRequest, pipeline_options, pubsub_source
from pipelines.local_runner import disable_prism_splits
from pipelines.runners import capabilities, run_capabilities
from tools.pubsub_emulator import EMULATOR_HOST_ENV
from transforms.pubsub import ReadPubSub, message_from_pubsub
from transforms.pubsub_source import (
    AckLeases,
    ReadPubSubAcknowledged,
    _PullAndAcknowledgeOnFinalisation,
    _ReadTracker,
    watermark_after_pull,
)

PROJECT = "pubsub-source-test"
ACK_DEADLINE_S = 10
MESSAGES = 60
RUN_TIMEOUT_S = 60.0
FAIL_ON = "fail"


def test_the_watermark_is_the_oldest_publish_time_pulled():
    assert watermark_after_pull([30, 10, 20], now_us=100) == 10


def test_an_empty_pull_moves_the_watermark_to_the_clock():
    assert watermark_after_pull([], now_us=100) == 100


def test_a_lease_is_extended_each_time_half_its_deadline_has_run():
    leases = AckLeases(ack_deadline_s=10, max_hold_s=600)
    leases.hold(["a", "b"], now=0)

    assert leases.due(now=4) == []
    assert leases.due(now=5) == ["a", "b"]
    assert leases.due(now=9) == []
    assert leases.due(now=10) == ["a", "b"]


def test_a_released_lease_is_no_longer_extended():
    leases = AckLeases(ack_deadline_s=10, max_hold_s=600)
    leases.hold(["a", "b"], now=0)
    leases.release(["a"])

    assert leases.due(now=5) == ["b"]
    assert leases.take_all() == ["b"]
    assert leases.take_all() == []


def test_a_lease_held_past_the_bound_is_left_to_expire():
    leases = AckLeases(ack_deadline_s=10, max_hold_s=12)
    leases.hold(["a"], now=0)
    leases.hold(["b"], now=6)

    assert leases.due(now=12) == ["b"]
    assert leases.take_all() == ["b"]


def test_a_pulled_message_becomes_a_message_read_now():
    pulled = SimpleNamespace(
        data=b"{}",
        attributes={"connectionId": "web"},
        message_id="42",
        publish_time=datetime.datetime(2026, 11, 1, 9, 0, 0, 250000, tzinfo=datetime.UTC),
    )

    message = message_from_pubsub(pulled, clock=lambda: 7)

    assert message.attributes == {"connectionId": "web"}
    assert (message.message_id, message.publish_time_us, message.read_time_us) == ("42", 1_793_523_600_250_000, 7)


@pytest.mark.parametrize("runner", ["PrismRunner", "FlinkRunner", "PortableRunner"])
def test_portable_runners_get_this_read(runner):
    read = pubsub_source(capabilities(runner), "projects/p/subscriptions/s", threading.Event())

    assert isinstance(read, ReadPubSubAcknowledged)


@pytest.mark.parametrize("runner", ["BundleBasedDirectRunner", "DirectRunner", "direct", "DataflowRunner"])
def test_the_runners_beam_reads_pub_sub_on_keep_beams_read(runner):
    assert isinstance(pubsub_source(capabilities(runner), "projects/p/subscriptions/s", threading.Event()), ReadPubSub)


@pytest.mark.parametrize(
    ("runner", "beam_args", "reached"),
    [
        ("PrismRunner", [], True),
        ("PrismRunner", ["--environment_type=EXTERNAL", "--environment_config=localhost:50000"], False),
        ("FlinkRunner", [], False),
        ("PortableRunner", [], False),
        ("PortableRunner", ["--environment_type=LOOPBACK"], True),
    ],
)
def test_a_stop_reaches_the_read_only_where_the_workers_run_in_this_process(runner, beam_args, reached):
    request = RunRequest(None, "lake", "sqlite:///i", "sqlite:///p", runner=runner, beam_args=tuple(beam_args))

    assert run_capabilities(pipeline_options(request)).workers_in_this_process is reached


@pytest.fixture
def subscription(pubsub_emulator, monkeypatch, request) -> tuple[str, str]:
    """A topic and a subscription of its own with a 10 s ack deadline: (topic, subscription)."""
    from google.cloud import pubsub_v1

    monkeypatch.setenv(EMULATOR_HOST_ENV, pubsub_emulator)
    name = "read-" + request.node.name[-40:].replace("_", "-")
    topic, subscription = f"projects/{PROJECT}/topics/{name}", f"projects/{PROJECT}/subscriptions/{name}"
    publisher, subscriber = pubsub_v1.PublisherClient(), pubsub_v1.SubscriberClient()
    try:
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=ACK_DEADLINE_S)
    finally:
        subscriber.close()
        publisher.transport.close()
    return topic, subscription


def publish(topic: str, count: int) -> dict[str, dict[str, str]]:
    """Publishes ``count`` messages with attributes; returns the attributes by message id."""
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    futures = {
        n: publisher.publish(topic, f"payload {n}".encode(), n=str(n), connectionId="test-conn") for n in range(count)
    }
    published = {future.result(timeout=30): {"n": str(n), "connectionId": "test-conn"} for n, future in futures.items()}
    publisher.stop()
    return published


def pull_after_the_deadline(subscription: str) -> list:
    """Every message the subscription delivers once the ack deadline of anything pulled before has run out."""
    from google.api_core.exceptions import DeadlineExceeded
    from google.cloud import pubsub_v1

    time.sleep(ACK_DEADLINE_S + 1)
    subscriber = pubsub_v1.SubscriberClient()
    received = []
    try:
        while True:
            try:
                response = subscriber.pull(subscription=subscription, max_messages=1000, timeout=2)
            except DeadlineExceeded:
                break
            if not response.received_messages:
                break
            received += response.received_messages
            ack_ids = [message.ack_id for message in response.received_messages]
            subscriber.acknowledge(subscription=subscription, ack_ids=ack_ids)
    finally:
        subscriber.close()
    return received


def start_read(subscription: str, sink: Path, prism: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.transforms.test_pubsub_source", subscription, str(sink), str(prism), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def finish(run: subprocess.Popen) -> str:
    try:
        output, _ = run.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(run.pid, signal.SIGKILL)
        output, _ = run.communicate()
        pytest.fail(f"the read did not finish within {RUN_TIMEOUT_S} s: {output[-4000:]}")
    return output


def sink_lines(sink: Path, expected: int) -> list[dict]:
    """The sink's records once it holds ``expected`` of them (or after ``RUN_TIMEOUT_S``)."""
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        lines = sink.read_text().splitlines() if sink.exists() else []
        if len(lines) >= expected or time.monotonic() > deadline:
            return [json.loads(line) for line in lines]
        time.sleep(0.2)


@pytest.mark.integration
@pytest.mark.slow
def test_every_message_arrives_once_with_its_attributes_and_is_acknowledged(prism, subscription, tmp_path):
    topic, name = subscription
    published = publish(topic, MESSAGES)
    sink = tmp_path / "sink.jsonl"
    run = start_read(name, sink, prism)
    try:
        sink_lines(sink, MESSAGES)
        time.sleep(1)
        run.send_signal(signal.SIGTERM)
        output = finish(run)
    finally:
        run.kill()
    assert run.returncode == 0, output[-4000:]
    read = sink_lines(sink, MESSAGES)

    assert sorted(record["message_id"] for record in read) == sorted(published)
    assert all(record["attributes"] == published[record["message_id"]] for record in read)
    assert all(record["timestamp_us"] == record["publish_time_us"] <= record["read_time_us"] for record in read)
    assert pull_after_the_deadline(name) == []


@pytest.mark.integration
@pytest.mark.slow
def test_messages_of_a_bundle_that_fails_downstream_come_back(prism, subscription, tmp_path):
    topic, name = subscription
    published = publish(topic, MESSAGES)
    run = start_read(name, tmp_path / "sink.jsonl", prism, "--fail")
    try:
        output = finish(run)
    finally:
        run.kill()
    assert run.returncode != 0
    assert FAIL_ON in output

    assert sorted(message.message.message_id for message in pull_after_the_deadline(name)) == sorted(published)


class _HeldFinaliser:
    """Keeps what a bundle registers for its finalisation, as a runner does until it holds the bundle's output (on
    Flink, until the next checkpoint completes)."""

    def __init__(self) -> None:
        self._callbacks: list = []

    def register(self, callback) -> None:
        self._callbacks.append(callback)

    def finalise(self) -> None:
        for callback in self._callbacks:
            callback()


def pull_one_bundle(subscription: str) -> tuple[_PullAndAcknowledgeOnFinalisation, _HeldFinaliser, list]:
    """The read's DoFn, set up and called once as a worker does (with the tracker view the SDK harness gives it):
    the DoFn, its bundle's finaliser (not yet called) and the messages it output."""
    read = _PullAndAcknowledgeOnFinalisation(
        subscription, stop=None, max_messages=100, max_hold_s=600, clock=wall_clock_us
    )
    read.setup()
    finaliser = _HeldFinaliser()
    watermark = ManualWatermarkEstimator(None)
    tracker = RestrictionTrackerView(ThreadsafeRestrictionTracker(_ReadTracker(True)))
    output = read.process(b"", finaliser=finaliser, tracker=tracker, watermark=watermark)
    return read, finaliser, [value.value for value in output]


def pulled_by_another_reader(subscription: str, seconds: float) -> list[str]:
    """The message ids another subscriber is delivered within ``seconds`` (it acknowledges nothing)."""
    from google.api_core.exceptions import DeadlineExceeded
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    delivered = []
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(DeadlineExceeded):
                response = subscriber.pull(subscription=subscription, max_messages=100, timeout=1)
                delivered += [received.message.message_id for received in response.received_messages]
            time.sleep(0.5)
    finally:
        subscriber.close()
    return delivered


@pytest.mark.integration
@pytest.mark.slow
def test_messages_awaiting_finalisation_outlive_their_ack_deadline_and_are_acknowledged_by_it(subscription):
    topic, name = subscription
    published = publish(topic, 5)
    read, finaliser, output = pull_one_bundle(name)
    try:
        assert sorted(message.message_id for message in output) == sorted(published)
        # Two and a half deadlines: a slow checkpoint. The leases keep every message from being delivered again.
        assert pulled_by_another_reader(name, ACK_DEADLINE_S * 2.5) == []
        finaliser.finalise()
    finally:
        read.teardown()

    assert pull_after_the_deadline(name) == []


@pytest.mark.integration
@pytest.mark.slow
def test_a_torn_down_read_hands_back_what_was_never_finalised_at_once(subscription):
    topic, name = subscription
    published = publish(topic, 5)
    read, _, output = pull_one_bundle(name)
    assert len(output) == len(published)

    read.teardown()

    # Well within the 10 s deadline: handed back, not expired.
    assert sorted(pulled_by_another_reader(name, ACK_DEADLINE_S / 3)) == sorted(published)


class _AppendTo(beam.DoFn):
    """Writes each message to a JSON-lines file or, with ``fail``, fails its bundle."""

    def __init__(self, path: str, fail: bool) -> None:
        self._path = path
        self._fail = fail

    def setup(self) -> None:
        self._file = open(self._path, "a")  # noqa: SIM115 - open for the DoFn's life, closed in teardown

    def process(self, message, timestamp=beam.DoFn.TimestampParam):
        if self._fail:
            raise RuntimeError(f"{FAIL_ON}: downstream step fails on message {message.message_id}")
        record = {
            "message_id": message.message_id,
            "attributes": dict(message.attributes),
            "publish_time_us": message.publish_time_us,
            "read_time_us": message.read_time_us,
            "timestamp_us": timestamp.micros,
        }
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def teardown(self) -> None:
        self._file.close()


def read_job(subscription: str, sink: str, prism: str, *, fail: bool) -> None:
    """Reads ``subscription`` on Prism into ``sink`` until SIGTERM; with ``fail``, every bundle fails downstream."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _number, _frame: stop.set())
    options = PipelineOptions(["--runner", "PrismRunner", "--prism_location", prism, "--streaming"])
    disable_prism_splits(options)
    with beam.Pipeline(options=options) as pipeline:
        _ = (
            pipeline
            | "Read" >> ReadPubSubAcknowledged(subscription, stop=stop)
            | "Sink" >> beam.ParDo(_AppendTo(sink, fail))
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    for argument in ("subscription", "sink", "prism"):
        parser.add_argument(argument)
    parser.add_argument("--fail", action="store_true")
    args = parser.parse_args()
    read_job(args.subscription, args.sink, args.prism, fail=args.fail)
