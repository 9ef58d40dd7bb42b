"""The HTTP inlet (:mod:`service.inlet`): its pure parts, its routes, and publishing to the real Pub/Sub emulator.

The pure parts (verdicts, response bodies, the token check, the token bucket, the metrics text) are tested without
HTTP. The routes run in process through FastAPI's TestClient on :class:`FakePublisher`, an in-memory publisher whose
futures a test resolves, fails or leaves hanging. The tests marked ``integration`` publish to the Pub/Sub emulator of
the ``pubsub_emulator`` fixture, each on topics of its own, and pull the messages back.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from core.records import RecordError
from messages.decoding import (
    BATCH_TOO_LARGE,
    EMPTY_BATCH,
    MAX_BATCH_ENTRIES,
    NO_ENTITY,
    NO_SCHEMA_REF,
    NOT_JSON,
    UNKNOWN_ENVELOPE,
)
from pipelines.cli import main
from pipelines.config import ConfigError, load_config
from schemas.registry import SchemaRegistry
from schemas.validation import REQUIRED, UNKNOWN_FIELD
from service.api import create_app
from service.inlet import (
    CONNECTION_ID_ATTRIBUTE,
    DATASET_ID_ATTRIBUTE,
    MAX_ENTRY_MESSAGE_CHARS,
    RECEIVED_TIME_ATTRIBUTE,
    SCHEMA_REF_ATTRIBUTE,
    XACTION_ID_ATTRIBUTE,
    Accepted,
    AuthFailureLimit,
    BadRequest,
    Inlet,
    InletMetrics,
    Judge,
    PubSubPublisher,
    Receipt,
    Rejected,
    TokenBucket,
    TransactionIds,
    batch_entry_count,
    batch_response,
    problem,
    single_response,
    token_status,
)
from service.settings import InletConnection, InletSettings
from tests.helpers import EVENT_SCHEMA, PROFILE_SCHEMA, envelope, event
from tests.service.test_api import SHORT_DEADLINES, running_server, seconds_until_closed
from tests.service.test_profile_lookup import sample_store
from tools.pubsub_emulator import EMULATOR_HOST_ENV, Topology, create_topology, free_port

API_TOKEN = "api-Token_1"
WEB_TOKEN = "web-S3cret"
NOW_S = 1_795_000_000.0
NOW_MS = int(NOW_S * 1000)
RECEIPT = Receipt("web", NOW_MS, f"{NOW_MS}:abc:0")
OPEN = InletConnection()
EVENT = envelope(event("e1", datetime(2026, 11, 1, 9, 0, tzinfo=UTC)))
EVENT_BYTES = json.dumps(EVENT, indent=2).encode()
BARE_PROFILE = {"person": {"name": {"firstName": "Ann"}}}
WEB = InletConnection(token=WEB_TOKEN, rate_per_second=1, burst=3)
SETTINGS = InletSettings(
    max_request_bytes=4096,
    publish_timeout_seconds=0.5,
    connections={
        "web": WEB,
        "open": OPEN,
        "crm": InletConnection(schema=PROFILE_SCHEMA, dataset="profile_records"),
    },
)
AUTH = {"Authorization": f"Bearer {WEB_TOKEN}"}


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


@pytest.fixture(scope="module")
def judge(registry) -> Judge:
    return Judge(registry)


class FakePublisher:
    """Keeps what is published; ``outcome`` decides each future: "ok", "fail" or "hang" (never resolved)."""

    def __init__(self, outcome: str = "ok") -> None:
        self.outcome = outcome
        self.published: list[tuple[bytes, dict[str, str]]] = []
        self.closed = False

    def publish(self, data: bytes, attributes) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self.outcome == "ok":
            self.published.append((data, dict(attributes)))
            future.set_result(str(len(self.published)))
        elif self.outcome == "fail":
            future.set_exception(RuntimeError("topic gone"))
        return future

    def close(self) -> None:
        self.closed = True


class Clock:
    def __init__(self, now: float = NOW_S) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def app_with(inlet: Inlet):
    return create_app(sample_store(), load_config(None).stitch_settings(), API_TOKEN, inlet=inlet)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def inlet(judge, publisher, clock) -> Inlet:
    return Inlet(SETTINGS, judge, publisher, environ={}, clock=clock, ids=TransactionIds("abc"))


@pytest.fixture
def client(inlet) -> Iterator[TestClient]:
    with TestClient(app_with(inlet)) as test_client:
        yield test_client


# --- verdicts ---------------------------------------------------------------------------------------------------


def test_a_single_message_is_published_as_sent_with_its_attributes(judge):
    verdict = judge.single(EVENT_BYTES, RECEIPT, OPEN, sync_validation=False)
    assert verdict == Accepted(
        EVENT_BYTES,
        {
            CONNECTION_ID_ATTRIBUTE: "web",
            RECEIVED_TIME_ATTRIBUTE: str(NOW_MS),
            XACTION_ID_ATTRIBUTE: RECEIPT.xaction_id,
            SCHEMA_REF_ATTRIBUTE: EVENT_SCHEMA,
        },
        RECEIPT.xaction_id,
    )


def test_the_header_dataset_becomes_an_attribute(judge):
    data = json.dumps(envelope(BARE_PROFILE, PROFILE_SCHEMA, "profile_records")).encode()
    verdict = judge.single(data, RECEIPT, OPEN, sync_validation=False)
    assert verdict.attributes[DATASET_ID_ATTRIBUTE] == "profile_records"


def test_a_bare_entity_takes_the_connections_schema_and_dataset(judge):
    connection = InletConnection(schema=PROFILE_SCHEMA, dataset="profile_records")
    verdict = judge.single(json.dumps(BARE_PROFILE).encode(), RECEIPT, connection, sync_validation=True)
    assert isinstance(verdict, Accepted)
    assert (verdict.attributes[SCHEMA_REF_ATTRIBUTE], verdict.attributes[DATASET_ID_ATTRIBUTE]) == (
        PROFILE_SCHEMA,
        "profile_records",
    )


def test_a_bare_entity_without_a_schema_anywhere_is_rejected_as_the_pipeline_would(judge):
    verdict = judge.single(json.dumps(BARE_PROFILE).encode(), RECEIPT, OPEN, sync_validation=False)
    assert [error.code for error in verdict.errors] == [NO_SCHEMA_REF]


def test_a_message_that_names_its_schema_keeps_it_over_the_connections(judge):
    connection = InletConnection(schema=PROFILE_SCHEMA)
    verdict = judge.single(EVENT_BYTES, RECEIPT, connection, sync_validation=False)
    assert verdict.attributes[SCHEMA_REF_ATTRIBUTE] == EVENT_SCHEMA


def test_a_body_that_is_not_strict_json_is_a_bad_request(judge):
    with pytest.raises(BadRequest) as raised:
        judge.single(b'{"header": {},}', RECEIPT, OPEN, sync_validation=False)
    assert raised.value.error.code == NOT_JSON


def test_a_batch_envelope_is_not_one_message(judge):
    data = json.dumps({"messages": [EVENT]}).encode()
    verdict = judge.single(data, RECEIPT, OPEN, sync_validation=False)
    assert [error.code for error in verdict.errors] == [UNKNOWN_ENVELOPE]


def test_an_unregistered_schema_is_accepted_without_sync_validation(judge):
    data = json.dumps(envelope({"anything": 1}, "https://ns.adobe.com/acme/schemas/x")).encode()
    assert isinstance(judge.single(data, RECEIPT, OPEN, sync_validation=False), Accepted)


def test_sync_validation_reports_every_violation(judge):
    bad = dict(EVENT["body"]["xdmEntity"], color="red", shade="dark")
    del bad["_id"]
    data = json.dumps(envelope(bad)).encode()
    verdict = judge.single(data, RECEIPT, OPEN, sync_validation=True)
    assert sorted((error.code, error.path) for error in verdict.errors) == [
        (REQUIRED, "/_id"),
        (UNKNOWN_FIELD, "/color"),
        (UNKNOWN_FIELD, "/shade"),
    ]


def test_sync_validation_judges_timestamps_by_the_received_time(judge):
    late_receipt = Receipt("web", int(datetime(2026, 10, 1, tzinfo=UTC).timestamp() * 1000), "x")
    verdict = judge.single(EVENT_BYTES, late_receipt, OPEN, sync_validation=True)
    assert [error.code for error in verdict.errors] == ["SCHEMA.FUTURE_TIMESTAMP"]


def test_batch_messages_are_judged_and_reserialised_one_by_one(judge):
    second = envelope(BARE_PROFILE, PROFILE_SCHEMA, "profile_records")
    messages = [EVENT, {"header": {}}, second]
    verdicts = judge.batch(json.dumps({"messages": messages}, indent=2).encode(), RECEIPT, OPEN, sync_validation=False)
    assert [type(verdict) for verdict in verdicts] == [Accepted, Rejected, Accepted]
    assert [error.code for error in verdicts[1].errors] == [NO_ENTITY]
    compact = [json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode() for entry in messages]
    assert (verdicts[0].data, verdicts[2].data) == (compact[0], compact[2])
    assert [verdicts[0].xaction_id, verdicts[2].xaction_id] == [f"{RECEIPT.xaction_id}:0", f"{RECEIPT.xaction_id}:2"]
    assert verdicts[2].attributes[XACTION_ID_ATTRIBUTE] == f"{RECEIPT.xaction_id}:2"
    assert verdicts[2].attributes[DATASET_ID_ATTRIBUTE] == "profile_records"


def test_batch_reserialisation_keeps_non_ascii_text_as_utf8(judge):
    entity = dict(EVENT["body"]["xdmEntity"], _id="café-ü")
    verdict = judge.batch(json.dumps({"messages": [envelope(entity)]}).encode(), RECEIPT, OPEN, sync_validation=False)
    assert '"_id":"café-ü"'.encode() in verdict[0].data


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"[1]", UNKNOWN_ENVELOPE),
        (json.dumps(EVENT).encode(), UNKNOWN_ENVELOPE),
        (b'{"messages": [], "extra": 1}', UNKNOWN_ENVELOPE),
        (b'{"messages": []}', EMPTY_BATCH),
        (b'{"messages": {}}', EMPTY_BATCH),
        (b'{"messages": [1,]}', NOT_JSON),
    ],
)
def test_a_batch_body_that_is_not_a_list_of_messages_is_a_bad_request(judge, body, code):
    with pytest.raises(BadRequest) as raised:
        judge.batch(body, RECEIPT, OPEN, sync_validation=False)
    assert raised.value.error.code == code


def test_a_batch_inside_a_batch_is_one_rejected_message(judge):
    body = json.dumps({"messages": [{"messages": [EVENT]}, EVENT]}).encode()
    verdicts = judge.batch(body, RECEIPT, OPEN, sync_validation=False)
    assert [type(verdict) for verdict in verdicts] == [Rejected, Accepted]


# --- response bodies --------------------------------------------------------------------------------------------


def test_the_single_response_has_the_documented_keys():
    assert single_response(RECEIPT, sync_validation=False) == {
        "inletId": "web",
        "xactionId": RECEIPT.xaction_id,
        "receivedTimeMs": NOW_MS,
    }
    assert single_response(RECEIPT, sync_validation=True)["syncValidation"] == {"status": "pass"}


def test_the_batch_response_answers_each_message_in_order():
    verdicts = [Accepted(b"{}", {}, "t:0"), Rejected((broken(NO_ENTITY),))]
    body = batch_response(RECEIPT, verdicts)
    assert body == {
        "inletId": "web",
        "batchId": RECEIPT.xaction_id,
        "receivedTimeMs": NOW_MS,
        "responses": [
            {"xactionId": "t:0"},
            {"statusCode": 400, "message": f"inletId: [web] {NO_ENTITY} at /body: broken"},
        ],
    }


def test_a_problem_lists_each_violation_as_a_causing_exception():
    body = problem(400, "Invalid XDM Message Format", "web", "bad", [broken(REQUIRED, "/_id"), broken(NO_ENTITY)])
    [violations] = body["report"]["cause"]["_streamingValidation"]
    assert violations["message"] == "2 violations found"
    assert violations["causingExceptions"][0] == {
        "schemaLocation": "#",
        "pointerToViolation": "#/_id",
        "causingExceptions": [],
        "keyword": REQUIRED,
        "message": "broken",
    }
    assert "cause" not in problem(404, "Unknown Connection", "x", "no such connection")["report"]


def broken(code: str, path: str = "/body") -> RecordError:
    return RecordError(code, path, "broken")


# --- token, rate limit, ids, metrics ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        ("", 401),
        ("Bearer", 401),
        ("Basic d2ViOnM=", 401),
        ("Bearer wrong", 403),
        (f"Bearer {WEB_TOKEN}x", 403),
        (f"Bearer {WEB_TOKEN}", None),
        (f"bearer  {WEB_TOKEN} ", None),
    ],
)
def test_token_status(authorization, status):
    assert token_status(WEB_TOKEN, authorization) == status


def test_a_connection_without_a_token_asks_none():
    assert token_status(None, None) is None


@given(st.text(min_size=1).filter(lambda text: text.strip() == text and " " not in text and text != WEB_TOKEN))
def test_any_other_token_is_forbidden(token):
    assert token_status(WEB_TOKEN, f"Bearer {token}") == 403


def test_the_bucket_lets_a_burst_through_then_waits_for_the_rate():
    clock = Clock(0.0)
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [0.0, 0.0, 0.0, 0.5]
    clock.now = 0.5
    assert (bucket.take(), bucket.take()) == (0.0, 0.5)


def test_a_clock_stepping_back_refills_nothing():
    clock = Clock(10.0)
    bucket = TokenBucket(rate=1, burst=1, clock=clock)
    assert bucket.take() == 0.0
    clock.now = 5.0
    assert bucket.take() > 0
    clock.now = 6.0
    assert bucket.take() == 0.0


@given(
    st.floats(min_value=0.1, max_value=100),
    st.integers(min_value=1, max_value=20),
    st.lists(st.floats(min_value=0, max_value=5), max_size=60),
)
def test_the_bucket_never_grants_more_than_burst_plus_rate_times_elapsed(rate, burst, steps):
    clock = Clock(0.0)
    bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
    granted = 0
    for step in steps:
        clock.now += step
        granted += bucket.take() == 0.0
    assert granted <= burst + rate * clock.now + 1e-9


@given(st.floats(min_value=0.1, max_value=100), st.integers(min_value=1, max_value=20))
def test_the_wait_a_refused_request_is_told_is_enough(rate, burst):
    clock = Clock(0.0)
    bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
    for _ in range(burst):
        bucket.take()
    wait = bucket.take()
    clock.now += wait + 1e-9
    assert bucket.take() == 0.0


@given(
    st.floats(min_value=0.1, max_value=100),
    st.integers(min_value=1, max_value=20),
    st.lists(st.tuples(st.floats(min_value=0, max_value=5), st.integers(min_value=1, max_value=50)), max_size=40),
)
def test_a_bucket_taking_many_at_once_never_grants_more_than_burst_plus_rate_times_elapsed(rate, burst, takes):
    clock = Clock(0.0)
    bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
    granted = 0
    for step, count in takes:
        clock.now += step
        granted += count if bucket.take(count) == 0.0 else 0
    # A count above the burst may leave the bucket in debt by at most the count less the burst.
    assert granted <= burst + rate * clock.now + max((count for _, count in takes), default=0) + 1e-9


def test_a_count_above_the_burst_takes_a_full_bucket_and_leaves_it_in_debt():
    clock = Clock(0.0)
    bucket = TokenBucket(rate=1, burst=3, clock=clock)
    assert (bucket.take(5), bucket.wait_s()) == (0.0, 3.0)
    clock.now = 2.5
    assert bucket.take() == 0.5
    clock.now = 3.0
    assert (bucket.wait_s(), bucket.take()) == (0.0, 0.0)


def test_failed_authentications_are_limited_per_address_and_refill_over_the_window():
    clock = Clock(0.0)
    limit = AuthFailureLimit(3, 30.0, clock=clock)
    for _ in range(3):
        assert limit.wait_s("10.0.0.1") == 0.0
        limit.failed("10.0.0.1")
    assert (limit.wait_s("10.0.0.1"), limit.wait_s("10.0.0.2")) == (10.0, 0.0)
    clock.now = 10.0
    assert limit.wait_s("10.0.0.1") == 0.0


def test_the_failed_authentication_limit_forgets_the_least_recent_addresses_beyond_its_size():
    limit = AuthFailureLimit(1, 60.0, clock=Clock(0.0), max_clients=2)
    for address in ("a", "b", "c"):
        limit.failed(address)
    assert [limit.wait_s(address) > 0 for address in ("a", "b", "c")] == [False, True, True]


@pytest.mark.parametrize(
    ("body", "count"),
    [
        (b'{"messages": []}', 0),
        (b'{"messages":[1]}', 1),
        (b' {\n "messages" : [ {"a": [1, {"b": "]"}]} ,\t"x]" , 3 ] } ', 3),
        (b'{"messages":[1,2,3,4,5,6]}', 4),  # no further than the limit + 1
        (b'{"messages":[1,2,3,4,5,6', 4),
        (b'{"messages":[1,2', None),
        (b'{"messages":[1 2]}', None),
        (b'{"other":[1], "messages":[1]}', None),
        (b"[1, 2]", None),
        (b'{"messages":[' + b"[" * 100_000 + b"]" * 100_000 + b"]}", None),
        ('{"messages":["\u00e9"]}'.encode("latin-1"), None),
    ],
)
def test_batch_entries_are_counted_without_parsing_past_the_limit(body, count):
    assert batch_entry_count(body, 3) == count


def test_transaction_ids_have_the_reference_form_and_never_repeat():
    ids = TransactionIds("7f3a")
    assert [ids.next(NOW_MS) for _ in range(2)] == [f"{NOW_MS}:7f3a:0", f"{NOW_MS}:7f3a:1"]
    assert TransactionIds().next(1) != TransactionIds().next(1)


def test_metrics_render_as_prometheus_text():
    metrics = InletMetrics()
    metrics.count_response("single", 200)
    metrics.count_response("single", 200)
    metrics.count_response("batch", 503)
    metrics.count_rate_limited("web")
    metrics.count_publishes(5, 2)
    lines = metrics.prometheus_text().splitlines()
    assert 'profilestream_inlet_requests_total{route="single",status="200"} 2' in lines
    assert 'profilestream_inlet_requests_total{route="batch",status="503"} 1' in lines
    assert 'profilestream_inlet_rate_limited_total{connection="web"} 1' in lines
    assert "profilestream_inlet_messages_published_total 5" in lines
    assert "profilestream_inlet_publish_failures_total 2" in lines
    assert "# TYPE profilestream_inlet_requests_total counter" in lines


# --- configuration ----------------------------------------------------------------------------------------------


def test_the_inlet_section_of_the_configuration(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "inlet:\n  max_request_bytes: 2048\n  connections:\n"
        "    web: {token_env: WEB_TOKEN, rate_per_second: 2.5, burst: 5, schema: S, dataset: D}\n"
    )
    inlet = load_config(path).inlet
    assert inlet.max_request_bytes == 2048
    assert inlet.connections["web"] == InletConnection(
        token_env="WEB_TOKEN", rate_per_second=2.5, burst=5, schema="S", dataset="D"
    )
    assert inlet.connections["web"].resolved_token({"WEB_TOKEN": " t "}) == "t"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("inlet: {connections: {web: {tokn: x}}}", "inlet.connections.web: unknown key 'tokn'"),
        ("inlet: {connections: {web: {burst: 1.5}}}", "inlet.connections.web.burst must be int"),
        ("inlet: {connections: {web: {rate_per_second: 0}}}", "must be positive"),
        ("inlet: {connections: {web: {token: a, token_env: B}}}", "token or token_env, not both"),
        ("inlet: {connections: {batch: {}}}", "'batch' is not a connection id"),
        ("inlet: {connections: {'a/b': {}}}", "'a/b' is not a connection id"),
        ("inlet: {connections: {web: 1}}", "inlet.connections.web must be a mapping"),
        ("inlet: {max_request_bytes: 0}", "must be positive"),
        ("inlet: []", "inlet must be dict"),
    ],
)
def test_a_bad_inlet_section_is_one_line_naming_the_key(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(path)


def test_a_token_variable_that_is_not_set_stops_the_inlet(judge):
    settings = InletSettings(connections={"web": InletConnection(token_env="NOT_SET_ANYWHERE")})
    with pytest.raises(ConfigError, match="NOT_SET_ANYWHERE"):
        Inlet(settings, judge, FakePublisher(), environ={})


def test_the_example_file_sets_every_default_of_the_inlet():
    import pipelines

    assert load_config(pipelines.__path__[0] + "/profilestream.example.yaml").inlet == InletSettings()


# --- routes -----------------------------------------------------------------------------------------------------


def test_one_message_answers_200_once_published(client, publisher):
    response = client.post("/collection/web", content=EVENT_BYTES, headers=AUTH)
    assert (response.status_code, response.json()) == (
        200,
        {"inletId": "web", "xactionId": f"{NOW_MS}:abc:0", "receivedTimeMs": NOW_MS},
    )
    assert publisher.published == [
        (
            EVENT_BYTES,
            {
                CONNECTION_ID_ATTRIBUTE: "web",
                RECEIVED_TIME_ATTRIBUTE: str(NOW_MS),
                XACTION_ID_ATTRIBUTE: f"{NOW_MS}:abc:0",
                SCHEMA_REF_ATTRIBUTE: EVENT_SCHEMA,
            },
        )
    ]


def test_a_batch_answers_207_with_a_status_per_message(client, publisher):
    body = json.dumps({"messages": [EVENT, {"header": {}}]}).encode()
    response = client.post("/collection/batch/web", content=body, headers=AUTH)
    assert response.status_code == 207
    answers = response.json()["responses"]
    assert answers[0] == {"xactionId": f"{NOW_MS}:abc:0:0"}
    assert (answers[1]["statusCode"], NO_ENTITY in answers[1]["message"]) == (400, True)
    assert len(publisher.published) == 1


def test_sync_validation_pass_is_said_in_the_answer(client):
    response = client.post("/collection/web", params={"syncValidation": "true"}, content=EVENT_BYTES, headers=AUTH)
    assert response.json()["syncValidation"] == {"status": "pass"}


def test_a_sync_validation_failure_is_400_with_every_violation_and_nothing_published(client, publisher):
    bad = dict(EVENT["body"]["xdmEntity"], color="red", shade="dark")
    response = client.post(
        "/collection/web?syncValidation=true", content=json.dumps(envelope(bad)).encode(), headers=AUTH
    )
    assert response.status_code == 400
    causes = response.json()["report"]["cause"]["_streamingValidation"][0]["causingExceptions"]
    assert [(cause["keyword"], cause["pointerToViolation"]) for cause in causes] == [
        (UNKNOWN_FIELD, "#/color"),
        (UNKNOWN_FIELD, "#/shade"),
    ]
    assert publisher.published == []


def test_a_sync_validation_value_other_than_true_or_false_is_400(client):
    response = client.post("/collection/web?syncValidation=yes", content=EVENT_BYTES, headers=AUTH)
    assert response.status_code == 400


def test_bad_json_is_400(client, publisher):
    response = client.post("/collection/web", content=b'{"header": ', headers=AUTH)
    assert response.status_code == 400
    assert response.json()["report"]["cause"]["_streamingValidation"][0]["causingExceptions"][0]["keyword"] == NOT_JSON
    assert publisher.published == []


@pytest.mark.parametrize("authorization", [None, "Bearer nope", f"Bearer {WEB_TOKEN}"])
def test_an_unknown_connection_answers_as_a_wrong_token_would(client, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    unknown = client.post("/collection/elsewhere", content=EVENT_BYTES, headers=headers)
    known = client.post("/collection/web", content=EVENT_BYTES, headers={**headers, "Authorization": "Bearer nope"})
    if authorization is None:
        known = client.post("/collection/web", content=EVENT_BYTES)
    assert unknown.status_code == known.status_code
    assert unknown.headers.get("WWW-Authenticate") == known.headers.get("WWW-Authenticate")
    assert unknown.text.replace("[elsewhere]", "[web]") == known.text


def test_a_connection_token_is_asked_and_checked(client):
    missing = client.post("/collection/web", content=EVENT_BYTES)
    wrong = client.post("/collection/web", content=EVENT_BYTES, headers={"Authorization": "Bearer nope"})
    assert (missing.status_code, missing.headers["WWW-Authenticate"], wrong.status_code) == (401, "Bearer", 403)
    assert missing.json()["title"] == "Authorization"


def test_the_api_token_does_not_open_a_connection_and_an_open_connection_needs_none(client):
    api = {"Authorization": f"Bearer {API_TOKEN}"}
    assert client.post("/collection/web", content=EVENT_BYTES, headers=api).status_code == 403
    assert client.post("/collection/open", content=EVENT_BYTES).status_code == 200


def test_a_connections_own_schema_lets_bare_entities_in(client, publisher):
    response = client.post("/collection/crm", content=json.dumps(BARE_PROFILE).encode())
    assert response.status_code == 200
    assert publisher.published[0][1][SCHEMA_REF_ATTRIBUTE] == PROFILE_SCHEMA


def test_over_the_rate_is_429_with_retry_after_until_the_bucket_refills(client, clock):
    answers = [client.post("/collection/web", content=EVENT_BYTES, headers=AUTH) for _ in range(4)]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert answers[3].headers["Retry-After"] == "1"
    assert client.post("/collection/open", content=EVENT_BYTES).status_code == 200  # buckets are per connection
    clock.now += 1
    assert client.post("/collection/web", content=EVENT_BYTES, headers=AUTH).status_code == 200


def test_a_body_over_the_limit_is_413(client, publisher):
    big = json.dumps(envelope(dict(EVENT["body"]["xdmEntity"], pad="x" * 5000))).encode()
    assert client.post("/collection/web", content=big, headers=AUTH).status_code == 413
    assert publisher.published == []


def test_a_streamed_body_is_cut_at_the_limit_without_a_content_length(client):
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 1024

    response = client.post("/collection/web", content=chunks(), headers=AUTH)
    assert "content-length" not in response.request.headers
    assert response.status_code == 413


def test_a_body_at_the_limit_is_read(client):
    body = EVENT_BYTES + b" " * (SETTINGS.max_request_bytes - len(EVENT_BYTES))
    assert client.post("/collection/web", content=body, headers=AUTH).status_code == 200


def test_a_batch_is_paid_for_by_its_messages(client, publisher, clock):
    two = json.dumps({"messages": [EVENT, EVENT]}).encode()
    answers = [client.post("/collection/batch/web", content=two, headers=AUTH) for _ in range(2)]
    assert [answer.status_code for answer in answers] == [207, 429]  # a burst of 3 has room for one batch of 2
    assert (answers[1].headers["Retry-After"], len(publisher.published)) == ("1", 2)


def test_a_batch_above_the_burst_needs_a_full_bucket_and_is_paid_for_in_full(client, publisher, clock):
    five = json.dumps({"messages": [EVENT] * 5}).encode()
    assert client.post("/collection/batch/web", content=five, headers=AUTH).status_code == 207
    clock.now += 2  # the bucket of 3 gave 5: 2 seconds pay the debt back to an empty bucket
    refused = client.post("/collection/web", content=EVENT_BYTES, headers=AUTH)
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "1")
    clock.now += 1
    assert client.post("/collection/web", content=EVENT_BYTES, headers=AUTH).status_code == 200


LARGE_SETTINGS = InletSettings(max_request_bytes=2 * 1024 * 1024, connections={"open": OPEN})
ONES_MIB = b'{"messages":[' + b",".join([b"1"] * 524_278) + b"]}"  # the measured attack: 1 MiB, 524,278 entries


def test_a_mebibyte_batch_of_ones_is_413_at_once_with_a_small_body(registry, clock):
    publisher = FakePublisher()
    inlet = Inlet(LARGE_SETTINGS, Judge(registry), publisher, environ={}, clock=clock)
    with TestClient(app_with(inlet)) as client:
        client.post("/collection/batch/open", content=b'{"messages":[1]}')  # warm: the first request builds the app
        started = time.monotonic()
        response = client.post("/collection/batch/open", content=ONES_MIB)
        elapsed_s = time.monotonic() - started
    print(
        f"1 MiB batch of 524,278 entries: {response.status_code} in {elapsed_s * 1000:.0f} ms, "
        f"{len(response.content)} bytes answered"
    )
    assert response.status_code == 413
    [cause] = response.json()["report"]["cause"]["_streamingValidation"][0]["causingExceptions"]
    assert (cause["keyword"], cause["message"]) == (BATCH_TOO_LARGE, f"at most {MAX_BATCH_ENTRIES} messages per batch")
    assert len(response.content) < 1024
    assert elapsed_s < 1.0  # measured 26 s before; tens of milliseconds in process
    assert publisher.published == []


def test_a_batch_at_the_entry_limit_is_judged(registry, clock):
    inlet = Inlet(LARGE_SETTINGS, Judge(registry, max_batch_entries=3), FakePublisher(), environ={}, clock=clock)
    with TestClient(app_with(inlet)) as client:
        at_limit = client.post("/collection/batch/open", content=json.dumps({"messages": [EVENT] * 3}).encode())
        over = client.post("/collection/batch/open", content=json.dumps({"messages": [EVENT] * 4}).encode())
    assert (at_limit.status_code, over.status_code) == (207, 413)


def test_the_answer_to_a_batch_is_bounded_per_entry(client):
    noisy = dict(EVENT["body"]["xdmEntity"], **{f"field{index}": index for index in range(40)})
    body = json.dumps({"messages": [envelope(noisy), 1]}).encode()
    response = client.post("/collection/batch/open?syncValidation=true", content=body)
    messages = [answer["message"] for answer in response.json()["responses"]]
    assert response.status_code == 207
    assert all(len(message) <= MAX_ENTRY_MESSAGE_CHARS for message in messages)
    assert messages[0].startswith(f"inletId: [open] {UNKNOWN_FIELD} at /field0: ")
    assert messages[0].endswith("\u2026")


def test_failed_authentications_lead_to_429_for_every_token_from_that_address(judge, clock):
    limit = AuthFailureLimit(3, 60.0, clock=clock)
    inlet = Inlet(SETTINGS, judge, FakePublisher(), environ={}, clock=clock)
    app = create_app(sample_store(), load_config(None).stitch_settings(), API_TOKEN, inlet=inlet, auth_failures=limit)
    wrong = {"Authorization": "Bearer nope"}
    with TestClient(app) as client:
        failures = [
            client.post("/collection/web", content=EVENT_BYTES, headers=wrong),
            client.post("/collection/elsewhere", content=EVENT_BYTES),
            client.get("/profiles?identity=CRMID:ann", headers=wrong),
        ]
        assert [failure.status_code for failure in failures] == [403, 401, 403]
        blocked = [
            client.post("/collection/web", content=EVENT_BYTES, headers=AUTH),
            client.get("/profiles?identity=CRMID:ann", headers={"Authorization": f"Bearer {API_TOKEN}"}),
        ]
        assert [(answer.status_code, answer.headers["Retry-After"]) for answer in blocked] == [(429, "20")] * 2
        assert client.post("/collection/open", content=EVENT_BYTES).status_code == 429  # whatever the route
        assert client.get("/health").status_code == 200
        clock.now += 20
        assert client.post("/collection/web", content=EVENT_BYTES, headers=AUTH).status_code == 200


def test_a_client_trickling_its_body_is_closed_at_the_body_timeout(inlet):
    with running_server(app_with(inlet), SHORT_DEADLINES) as url:
        held_s = seconds_until_closed(
            url, b"POST /collection/open HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n", b" "
        )
    assert 0.4 < held_s < 2.0


def test_an_upload_the_client_abandons_is_one_log_line(inlet, caplog):
    server_log = logging.getLogger("uvicorn.error")
    server_log.addHandler(caplog.handler)
    try:
        with running_server(app_with(inlet)) as url, caplog.at_level(logging.INFO):
            host, port = url.removeprefix("http://").split(":")
            with socket.create_connection((host, int(port))) as connection:
                connection.sendall(b"POST /collection/open HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n{")
                time.sleep(0.2)  # the route is reading the body
            deadline = time.monotonic() + 5.0
            while 'status="499"' not in inlet.metrics.prometheus_text() and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.2)  # room for any traceback to be logged after the answer
    finally:
        server_log.removeHandler(caplog.handler)
    records = caplog.records
    assert [(record.name, record.exc_info) for record in records if "went away" in record.getMessage()] == [
        ("service.inlet", None)
    ]
    assert [record.getMessage() for record in records if record.levelno >= logging.WARNING] == []


@pytest.mark.parametrize("outcome", ["fail", "hang"])
def test_a_publish_that_fails_or_times_out_is_503_and_nothing_is_claimed(judge, clock, outcome):
    inlet = Inlet(SETTINGS, judge, FakePublisher(outcome), environ={}, clock=clock)
    with TestClient(app_with(inlet)) as client:
        single = client.post("/collection/open", content=EVENT_BYTES)
        batch = client.post("/collection/batch/open", content=json.dumps({"messages": [EVENT, EVENT]}).encode())
        metrics = client.get("/metrics").text
    for response in (single, batch):
        assert (response.status_code, response.headers["Retry-After"]) == (503, "1")
        assert "xactionId" not in response.text
    assert "profilestream_inlet_publish_failures_total 3" in metrics


def test_a_batch_with_one_failed_publish_is_503_as_a_whole(judge, clock):
    class FailsSecond(FakePublisher):
        def publish(self, data, attributes):
            self.outcome = "fail" if self.published else "ok"
            return super().publish(data, attributes)

    inlet = Inlet(SETTINGS, judge, FailsSecond(), environ={}, clock=clock)
    with TestClient(app_with(inlet)) as client:
        response = client.post("/collection/batch/open", content=json.dumps({"messages": [EVENT, EVENT]}).encode())
    assert response.status_code == 503


def test_the_answer_waits_until_pub_sub_has_the_message(judge, clock):
    delay_s = 0.3

    class Slow(FakePublisher):
        def publish(self, data, attributes):
            future: concurrent.futures.Future = concurrent.futures.Future()
            threading.Timer(delay_s, future.set_result, ["id"]).start()
            return future

    inlet = Inlet(SETTINGS, judge, Slow(), environ={}, clock=clock)
    with TestClient(app_with(inlet)) as client:
        started = time.monotonic()
        response = client.post("/collection/open", content=EVENT_BYTES)
    assert response.status_code == 200
    assert time.monotonic() - started >= delay_s


def test_metrics_count_requests_by_status_and_messages_published(client):
    client.post("/collection/web", content=EVENT_BYTES, headers=AUTH)
    client.post("/collection/web", content=EVENT_BYTES)
    client.post("/collection/batch/open", content=json.dumps({"messages": [EVENT, EVENT]}).encode())
    text = client.get("/metrics").text
    assert 'profilestream_inlet_requests_total{route="single",status="200"} 1' in text
    assert 'profilestream_inlet_requests_total{route="single",status="401"} 1' in text
    assert 'profilestream_inlet_requests_total{route="batch",status="207"} 1' in text
    assert "profilestream_inlet_messages_published_total 3" in text


def test_the_inlet_routes_are_in_the_openapi_document_without_the_api_token(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/collection/{connection_id}", "/collection/batch/{connection_id}"):
        assert "security" not in paths[path]["post"]
    assert "security" not in paths["/metrics"]["get"]


def test_without_the_inlet_there_are_no_inlet_routes_nor_metrics():
    with TestClient(create_app(sample_store(), load_config(None).stitch_settings(), API_TOKEN)) as client:
        assert client.post("/collection/web", content=EVENT_BYTES).status_code == 404
        assert client.get("/metrics").status_code == 404


def test_closing_the_inlet_closes_its_publisher(judge):
    publisher = FakePublisher()
    Inlet(SETTINGS, judge, publisher, environ={}).close()
    assert publisher.closed


# --- the command line -------------------------------------------------------------------------------------------


def test_serve_refuses_a_topic_that_is_not_a_topic_name(capsys, monkeypatch):
    monkeypatch.setenv("PROFILESTREAM_API_TOKEN", API_TOKEN)
    assert main(["serve", "--pubsub-topic", "events"]) == 2
    assert "expected projects/PROJECT/topics/TOPIC" in capsys.readouterr().err


def test_serve_refuses_an_inlet_without_connections(capsys, monkeypatch):
    monkeypatch.setenv("PROFILESTREAM_API_TOKEN", API_TOKEN)
    assert main(["serve", "--pubsub-topic", "projects/inlet-test/topics/events"]) == 2
    assert "inlet.connections" in capsys.readouterr().err


def test_serve_refuses_a_connection_whose_token_variable_is_not_set(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PROFILESTREAM_API_TOKEN", API_TOKEN)
    monkeypatch.setenv(EMULATOR_HOST_ENV, "127.0.0.1:9")
    monkeypatch.delenv("WEB_INLET_TOKEN", raising=False)
    config = tmp_path / "config.yaml"
    config.write_text("inlet: {connections: {web: {token_env: WEB_INLET_TOKEN}}}")
    assert main(["serve", "--config", str(config), "--pubsub-topic", "projects/inlet-test/topics/events"]) == 2
    assert "WEB_INLET_TOKEN" in capsys.readouterr().err


# --- against the Pub/Sub emulator -------------------------------------------------------------------------------


def pull_all(subscription: str, expected: int, timeout_s: float = 30.0) -> list:
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    received = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(received) < expected and time.monotonic() < deadline:
            response = subscriber.pull(subscription=subscription, max_messages=100, timeout=5)
            if response.received_messages:
                ack_ids = [message.ack_id for message in response.received_messages]
                subscriber.acknowledge(subscription=subscription, ack_ids=ack_ids)
            received += [message.message for message in response.received_messages]
    finally:
        subscriber.close()
    return received


@pytest.fixture
def emulator(pubsub_emulator, monkeypatch) -> str:
    monkeypatch.setenv(EMULATOR_HOST_ENV, pubsub_emulator)
    return pubsub_emulator


def test_serve_refuses_a_topic_the_emulator_does_not_have(emulator, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("PROFILESTREAM_API_TOKEN", API_TOKEN)
    config = tmp_path / "config.yaml"
    config.write_text("inlet: {connections: {web: {}}}")
    missing = "projects/inlet-test/topics/never-made"

    assert main(["serve", "--config", str(config), "--pubsub-topic", missing]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line == f"profilestream: error: --pubsub-topic {missing}: not found"


def emulator_inlet(judge, topic: str, timeout_s: float = 10.0) -> Inlet:
    settings = InletSettings(publish_timeout_seconds=timeout_s, connections={"web": OPEN})
    return Inlet(settings, judge, PubSubPublisher(topic, timeout_s=timeout_s), environ={})


@pytest.mark.integration
def test_messages_reach_pub_sub_with_their_attributes(emulator, judge):
    topology = Topology.named("inlet-test", "inlet-events", "inlet-events-read", "inlet-events-failed")
    create_topology(emulator, topology)
    profile = envelope(BARE_PROFILE, PROFILE_SCHEMA, "profile_records")
    inlet = emulator_inlet(judge, topology.topic)
    try:
        with TestClient(app_with(inlet)) as client:
            single = client.post("/collection/web", content=EVENT_BYTES)
            batch = client.post("/collection/batch/web", content=json.dumps({"messages": [profile, {}]}).encode())
    finally:
        inlet.close()
    assert (single.status_code, batch.status_code) == (200, 207)
    received = {message.attributes[XACTION_ID_ATTRIBUTE]: message for message in pull_all(topology.subscription, 2)}
    batch_xaction = batch.json()["responses"][0]["xactionId"]
    assert sorted(received) == sorted([single.json()["xactionId"], batch_xaction])
    first = received[single.json()["xactionId"]]
    assert first.data == EVENT_BYTES
    assert dict(first.attributes) == {
        CONNECTION_ID_ATTRIBUTE: "web",
        RECEIVED_TIME_ATTRIBUTE: str(single.json()["receivedTimeMs"]),
        XACTION_ID_ATTRIBUTE: single.json()["xactionId"],
        SCHEMA_REF_ATTRIBUTE: EVENT_SCHEMA,
    }
    second = received[batch_xaction]
    assert second.data == json.dumps(profile, separators=(",", ":")).encode()
    assert (second.attributes[SCHEMA_REF_ATTRIBUTE], second.attributes[DATASET_ID_ATTRIBUTE]) == (
        PROFILE_SCHEMA,
        "profile_records",
    )


@pytest.mark.integration
def test_a_topic_that_does_not_exist_is_503_and_nothing_is_claimed(emulator, judge):
    inlet = emulator_inlet(judge, "projects/inlet-test/topics/inlet-never-made")
    try:
        with TestClient(app_with(inlet)) as client:
            single = client.post("/collection/web", content=EVENT_BYTES)
            batch = client.post("/collection/batch/web", content=json.dumps({"messages": [EVENT]}).encode())
    finally:
        inlet.close()
    assert (single.status_code, batch.status_code) == (503, 503)
    assert "xactionId" not in single.text + batch.text


@pytest.mark.integration
def test_an_unreachable_pub_sub_is_503_within_the_publish_timeout(monkeypatch, judge):
    monkeypatch.setenv(EMULATOR_HOST_ENV, f"127.0.0.1:{free_port()}")
    inlet = emulator_inlet(judge, "projects/inlet-test/topics/inlet-unreachable", timeout_s=1.0)
    started = time.monotonic()
    try:
        with TestClient(app_with(inlet)) as client:
            response = client.post("/collection/web", content=EVENT_BYTES)
    finally:
        inlet.close()
    assert response.status_code == 503
    assert time.monotonic() - started < 10
