"""Tests for tools/loadgen.py: the traffic, the pacing on a fake clock, and each target against a real receiver
(a stand-in HTTP server on loopback, the Pub/Sub emulator)."""

from __future__ import annotations

import collections
import io
import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.records import FailedRecord, Message
from messages.decoding import decode_message
from schemas.registry import SchemaRegistry
from schemas.validation import validate_decoded
from tests.service.test_inlet import pull_all
from tools.loadgen import (
    DUPLICATE,
    INVALID,
    INVALID_KINDS,
    VALID,
    Delivery,
    LoadMessage,
    Pacer,
    Target,
    Traffic,
    TrafficShape,
    main,
    pubsub_attributes,
    send_load,
)
from tools.pubsub_emulator import Topology, create_topology

NOW_US = 1_795_000_000_000_000  # 2026-11-18T11:06:40Z: any fixed time will do, the traffic only stamps it
EXPERIENCE_EVENT = "https://ns.adobe.com/xdm/context/experienceevent"


def generate(shape: TrafficShape, seed: int = 11, count: int = 2000) -> list[LoadMessage]:
    traffic = Traffic(shape, seed)
    return [traffic.message(NOW_US + index * 1000) for index in range(count)]


def ingest(message: LoadMessage, registry: SchemaRegistry) -> tuple[str, ...]:
    """The error codes decode and validation give the message as the inlet would publish it (none when valid)."""
    received = Message(message.data, pubsub_attributes(message, NOW_US), "1", NOW_US, NOW_US)
    (outcome,) = decode_message(received, registry.avro_schema_for)
    if not isinstance(outcome, FailedRecord):
        outcome = validate_decoded(outcome, registry)
    return tuple(error.code for error in outcome.errors) if isinstance(outcome, FailedRecord) else ()


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


def test_the_same_seed_gives_the_same_messages():
    shape = TrafficShape(people=50, invalid_fraction=0.1, duplicate_fraction=0.1)
    assert generate(shape, seed=3, count=300) == generate(shape, seed=3, count=300)
    assert generate(shape, seed=3, count=300) != generate(shape, seed=4, count=300)


def test_valid_messages_and_duplicates_pass_ingestion(registry):
    messages = generate(TrafficShape(people=100, duplicate_fraction=0.1), count=600)
    assert {message.kind for message in messages} == {VALID, DUPLICATE}
    assert [ingest(message, registry) for message in messages] == [()] * len(messages)
    header = json.loads(messages[0].data)["header"]
    assert header["source"] == {"name": "profilestream-loadgen"}
    assert header["schemaRef"]["contentType"] == "application/vnd.adobe.xed-full+json;version=1"


def test_each_invalid_kind_fails_with_its_code(registry):
    messages = generate(TrafficShape(people=20, invalid_fraction=1.0), count=200)
    assert {message.problem for message in messages} == set(INVALID_KINDS)
    for message in messages:
        assert message.kind == INVALID
        codes = ingest(message, registry)
        assert codes and set(codes) <= set(INVALID_KINDS[message.problem]), (message.problem, codes)


def test_invalid_and_duplicate_fractions_are_kept():
    messages = generate(TrafficShape(people=200, invalid_fraction=0.1, duplicate_fraction=0.05), count=4000)
    kinds = collections.Counter(message.kind for message in messages)
    assert kinds[INVALID] / 4000 == pytest.approx(0.1, abs=0.02)
    assert kinds[DUPLICATE] / 4000 == pytest.approx(0.05, abs=0.02)


def test_a_duplicate_resends_an_earlier_valid_message_and_other_ids_are_unique():
    messages = generate(TrafficShape(people=100, invalid_fraction=0.05, duplicate_fraction=0.2), count=1000)
    sent: dict[str, bytes] = {}
    for message in messages:
        if message.kind == DUPLICATE:
            assert sent[message.entity_id] == message.data
        elif message.entity_id is not None:
            assert message.entity_id not in sent
            sent[message.entity_id] = message.data
            assert json.loads(message.data)["body"]["xdmEntity"]["_id"] == message.entity_id


def test_people_have_up_to_k_devices_and_a_login_share_of_them_sign_in():
    messages = generate(TrafficShape(people=200, devices_per_person=3, login_share=0.3), count=6000)
    devices: dict[int, set[str]] = collections.defaultdict(set)
    signed_in: set[int] = set()
    for message in messages:
        if message.kind != VALID or json.loads(message.data)["header"]["schemaRef"]["id"] != EXPERIENCE_EVENT:
            continue
        namespaces = [identity.split(":", 1)[0] for identity in message.identities]
        assert namespaces in (["ECID"], ["ECID", "Email", "CRMID"])
        devices[message.person].add(message.identities[0])
        if len(namespaces) == 3:
            signed_in.add(message.person)
    counts = collections.Counter(len(ecids) for ecids in devices.values())
    assert set(counts) == {1, 2, 3}
    assert sum(size * people for size, people in counts.items()) / len(devices) == pytest.approx(2.0, abs=0.25)
    assert len(signed_in) / len(devices) == pytest.approx(0.3, abs=0.1)


def test_profile_records_belong_to_people_who_sign_in():
    traffic = Traffic(TrafficShape(people=100, login_share=0.5), 11)
    messages = [traffic.message(NOW_US) for _ in range(2000)]
    profiles = [message for message in messages if message.dataset_id == "profile_records"]
    assert 40 <= len(profiles) <= 170  # about 5%
    for message in profiles:
        entity = json.loads(message.data)["body"]["xdmEntity"]
        assert entity["person"]["name"]["firstName"]
        assert entity["extSourceSystemAudit"]["lastUpdatedDate"] == "2026-11-18T11:06:40.000Z"
        assert [identity.split(":", 1)[0] for identity in message.identities] == ["CRMID", "Email"]


def test_nobody_signs_in_with_a_login_share_of_zero():
    messages = generate(TrafficShape(people=30, login_share=0.0), count=300)
    assert all(len(message.identities) == 1 for message in messages)


class FakeTime:
    """A monotonic clock that only ``sleep`` moves, each sleep running ``oversleep_s`` late as a real one does."""

    def __init__(self, oversleep_s: float = 0.0):
        self.now = 500.0
        self.oversleep_s = oversleep_s

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds + self.oversleep_s

    def clock_us(self) -> int:
        return round(self.now * 1_000_000)


class RecordingTarget(Target):
    """Notes when each send came and how many messages it held; one send can take ``stall_s`` of fake time."""

    def __init__(self, fake: FakeTime, chunk: int = 1, stall_at: int | None = None, stall_s: float = 0.0):
        self.fake = fake
        self.chunk = chunk
        self.stall_at, self.stall_s = stall_at, stall_s
        self.sends: list[tuple[float, int]] = []

    def send(self, messages: Sequence[LoadMessage], sent_us: int) -> None:
        self.sends.append((self.fake.now, len(messages)))
        if len(self.sends) == self.stall_at:
            self.fake.now += self.stall_s

    def close(self) -> Delivery:
        return Delivery({}, 0)


def due_times(sends: list[tuple[float, int]], start: float, rate: float) -> Iterator[tuple[float, float]]:
    """(release time, due time of the last message released) per send."""
    released = 0
    for at, count in sends:
        released += count
        yield at, start + (released - 1) / rate


def paced(fake: FakeTime, target: RecordingTarget, rate: float, count: int) -> Pacer:
    pacer = Pacer(rate, clock=fake.clock, sleep=fake.sleep)
    send_load(Traffic(TrafficShape(people=10), 1), target, pacer, count, clock_us=fake.clock_us)
    return pacer


def test_the_schedule_does_not_drift_when_sleeps_run_late():
    fake = FakeTime(oversleep_s=0.0003)
    target = RecordingTarget(fake)
    pacer = paced(fake, target, rate=1000, count=2000)
    assert sum(count for _, count in target.sends) == 2000
    for at, due in due_times(target.sends, 500.0, 1000):
        assert due <= at <= due + 0.0011
    # Sleeping 1 ms per message would have ended 0.6 s late; the schedule ends when it said.
    assert fake.now == pytest.approx(500.0 + 1.999, abs=0.002)
    assert pacer.achieved_rate == pytest.approx(1000, rel=0.01)
    assert pacer.behind_max_s < 0.002


def test_a_stall_is_caught_up_in_small_bursts():
    fake = FakeTime()
    target = RecordingTarget(fake, stall_at=1000, stall_s=0.5)
    pacer = paced(fake, target, rate=1000, count=3000)
    assert pacer.behind_max_s == pytest.approx(0.5, abs=0.002)
    assert max(count for _, count in target.sends) == 10  # 10 ms of the schedule at most
    catching_up = [count for at, count in target.sends if 501.0 < at < 501.5]
    assert catching_up and set(catching_up) == {10}
    assert fake.now == pytest.approx(500.0 + 2.999, abs=0.002)
    assert pacer.achieved_rate == pytest.approx(1000, rel=0.01)


def test_a_batch_target_gets_whole_batches_when_they_are_due():
    fake = FakeTime()
    target = RecordingTarget(fake, chunk=50)
    paced(fake, target, rate=500, count=420)
    assert [count for _, count in target.sends] == [50] * 8 + [20]
    for at, due in due_times(target.sends, 500.0, 500):
        assert at == pytest.approx(due)


def test_the_send_log_has_a_line_per_message_as_it_went_out():
    fake = FakeTime()
    log = io.StringIO()
    shape = TrafficShape(people=20, invalid_fraction=0.2, duplicate_fraction=0.1)
    pacer = Pacer(100, clock=fake.clock, sleep=fake.sleep)
    kinds = send_load(Traffic(shape, 9), RecordingTarget(fake), pacer, 200, send_log=log, clock_us=fake.clock_us)
    lines = [json.loads(line) for line in log.getvalue().splitlines()]
    assert collections.Counter(line["kind"] for line in lines) == kinds
    assert sum(kinds.values()) == 200
    assert [line["sent_us"] for line in lines] == [500_000_000 + index * 10_000 for index in range(200)]
    assert set(lines[0]) == {"id", "sent_us", "kind", "identities", "person", "schema"}
    assert all(line["id"] is None for line in lines if line["kind"] == INVALID and not line["identities"])
    assert all(line["identities"] and line["person"] is not None for line in lines if line["kind"] == VALID)


class StandIn:
    """A stand-in for the HTTP inlet on a loopback port: answers 200, or ``status``; a batch 207, refusing entries
    that are not envelopes (all of them with ``refuse_all``)."""

    def __init__(self, status: int | None = None, refuse_all: bool = False):
        self.requests: list[tuple[str, str | None, bytes]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so the client's connection pool is used
            disable_nagle_algorithm = True  # headers and body go out in two writes; don't hold the second back

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stand_in.requests.append((self.path, self.headers.get("Authorization"), body))
                answer = b"{}"
                if status is not None:
                    self.send_response(status)
                elif "/collection/batch/" in self.path:
                    self.send_response(207)
                    entries = json.loads(body)["messages"]
                    refused = [refuse_all or not isinstance(entry, dict) for entry in entries]
                    responses = [{"statusCode": 400, "message": "no"} if no else {"xactionId": "x"} for no in refused]
                    answer = json.dumps({"responses": responses}).encode()
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stand_in() -> Iterator[StandIn]:
    server = StandIn()
    yield server
    server.stop()


def run_loadgen(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, dict]:
    code = main(argv)
    return code, json.loads(capsys.readouterr().out.splitlines()[-1])


def logged(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_http_target_posts_each_message_with_the_token(stand_in, tmp_path, capsys):
    log = tmp_path / "sent.jsonl"
    code, report = run_loadgen(
        [
            *("--target", f"{stand_in.url}/collection/conn-1", "--rate", "2000", "--count", "60", "--seed", "5"),
            *("--invalid-fraction", "0.2", "--duplicate-fraction", "0.1", "--token", "s3cret", "--send-log", str(log)),
        ],
        capsys,
    )
    assert code == 0
    assert report["sent"] == 60 == report["valid"] + report["invalid"] + report["duplicates"]
    assert report["statuses"] == {"200": 60} and report["failed"] == 0 and report["seed"] == 5
    assert {(path, token) for path, token, _ in stand_in.requests} == {("/collection/conn-1", "Bearer s3cret")}
    received_ids = collections.Counter()
    for _, _, body in stand_in.requests:
        try:
            received_ids[json.loads(body)["body"]["xdmEntity"]["_id"]] += 1
        except (ValueError, KeyError):
            received_ids[None] += 1
    assert received_ids == collections.Counter(line["id"] for line in logged(log))


def test_http_batch_target_posts_batches_of_batch_size(stand_in, capsys):
    argv = ["--target", f"{stand_in.url}/collection/batch/conn-1", "--rate", "2000", "--count", "60"]
    code, report = run_loadgen([*argv, "--batch-size", "25", "--invalid-fraction", "0.3", "--seed", "2"], capsys)
    assert code == 0
    assert report["statuses"] == {"207": 3}
    batches = [json.loads(body)["messages"] for _, _, body in stand_in.requests]
    assert sorted(len(batch) for batch in batches) == [10, 25, 25]
    entries = [entry for batch in batches for entry in batch]
    not_json = [entry for entry in entries if isinstance(entry, str)]
    assert not_json and len(not_json) < report["invalid"]
    assert all("header" in entry or "body" in entry for entry in entries if isinstance(entry, dict))


def test_batch_entries_refused_count_as_failed_unless_invalid(capsys):
    server = StandIn(refuse_all=True)
    try:
        argv = ["--target", f"{server.url}/collection/batch/c1", "--count", "40", "--rate", "2000"]
        code, report = run_loadgen([*argv, "--invalid-fraction", "0.3", "--duplicate-fraction", "0.1"], capsys)
    finally:
        server.stop()
    assert code == 1
    assert report["statuses"] == {"207": 1}
    assert report["failed"] == report["valid"] + report["duplicates"] < 40


def test_http_answers_that_turn_valid_messages_away_count_as_failed(capsys):
    server = StandIn(status=503)
    try:
        code, report = run_loadgen(
            ["--target", f"{server.url}/collection/c1", "--count", "20", "--rate", "2000"], capsys
        )
    finally:
        server.stop()
    assert code == 1
    assert report["statuses"] == {"503": 20} and report["failed"] == 20


@pytest.mark.integration
def test_pubsub_target_delivers_every_message_with_the_inlet_attributes(pubsub_emulator, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub_emulator)
    topology = Topology.named("loadgen-test", "loadgen-events", "loadgen-events-read", "loadgen-events-failed")
    create_topology(pubsub_emulator, topology)
    log = tmp_path / "sent.jsonl"
    code, report = run_loadgen(
        [
            *("--target", f"pubsub:{topology.topic}", "--rate", "500", "--count", "80", "--seed", "3"),
            *("--invalid-fraction", "0.25", "--duplicate-fraction", "0.1", "--send-log", str(log)),
        ],
        capsys,
    )
    assert code == 0
    assert report["statuses"] == {"ok": 80} and report["failed"] == 0
    sent = logged(log)
    received = pull_all(topology.subscription, 80)
    assert len(received) == 80
    sent_ms = collections.Counter((line["id"], str(line["sent_us"] // 1000)) for line in sent)
    received_ms = collections.Counter()
    for message in received:
        attributes = dict(message.attributes)
        assert attributes["connectionId"] == "loadgen"
        try:
            envelope = json.loads(message.data)
        except ValueError:
            assert set(attributes) == {"connectionId", "receivedTimeMs"}
            received_ms[None, attributes["receivedTimeMs"]] += 1
            continue
        assert attributes["datasetId"] == envelope["header"]["datasetId"]
        assert attributes.get("schemaRef") == envelope["header"].get("schemaRef", {}).get("id")
        received_ms[envelope["body"]["xdmEntity"]["_id"], attributes["receivedTimeMs"]] += 1
    assert received_ms == sent_ms


LOCAL_INLET = ("--target", "http://127.0.0.1:8080/collection/c1")


@pytest.mark.parametrize(
    "argv",
    [
        ["--target", "ftp://127.0.0.1/collection/c1", "--count", "1"],
        ["--target", "http://127.0.0.1:8080/other/c1", "--count", "1"],
        ["--target", "http://127.0.0.1:99999/collection/c1", "--count", "1"],
        ["--target", "pubsub:projects/p/subscriptions/s", "--count", "1"],
        [*LOCAL_INLET, "--count", "1", "--rate", "-5"],
        [*LOCAL_INLET, "--count", "0"],
        [*LOCAL_INLET, "--count", "1", "--invalid-fraction", "1.5"],
        [*LOCAL_INLET, "--count", "1", "--login-share", "x"],
        [*LOCAL_INLET, "--count", "1", "--invalid-fraction", "0.6", "--duplicate-fraction", "0.6"],
        [*LOCAL_INLET],
    ],
)
def test_bad_input_is_one_line_and_exit_2(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit:
        code = exit.code
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "Traceback" not in captured.err
