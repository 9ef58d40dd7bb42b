"""Inlet contract: every published request example replayed against the HTTP inlet, beside the documented responses.

The examples are ``tests/data/xdm/payloads`` (``MANIFEST.md`` there says where each comes from), sorted into requests
and the rest by ``tests/transforms/test_payload_examples.py``, whose ``REQUESTS`` table also says how each request
decodes. A request with ``messages`` goes to ``POST /collection/batch/{id}``, any other to ``POST /collection/{id}``;
the OpenAPI ``BatchMessageArray`` header and ``BatchMessageBody`` examples are put together into the one batch they
describe. The connection is the documented 207 responses' ``inletId``, so our ``inletId`` is theirs; the two examples
that are bare entities (their schema given as an attribute in ``REQUESTS``) go to connections whose ``schema`` is
that one. Statuses and response shapes (keys, value types, per-message ``statusCode``) are compared with the
documented responses; values such as ids and times are ours.

Placeholders. Without ``syncValidation`` the inlet needs no schema registered, so tenant schema ids and
``{DATASET_ID}`` placeholders are accepted as they are: the pipeline judges them later. Postman's ``{{vars}}`` are
filled in as a Postman environment would fill them (our built-in schema ids and dataset names), which lets those
examples run with ``syncValidation=true`` against our registry; ids of tenants we do not have answer 400
``SCHEMA.UNKNOWN_SCHEMA`` there.

Where the documents disagree, and what we follow:

- ``receivedTimeMs``: an integer in the tutorials' responses and in the OpenAPI schema, a string in the OpenAPI
  example. We send an integer.
- Without ``syncValidation``, the HTTP API source's 200 and the OpenAPI response have no ``syncValidation`` key; the
  streaming-validation page shows ``"syncValidation": {"skipped": true}``. We follow the first two (two documents
  against one) and add ``"syncValidation": {"status": "pass"}`` only when asked, as the tutorials show.
- The older record tutorial (``.v036bda27``) asks ``synchronousValidation=true`` and answers a
  ``synchronousValidation`` key; the current one renamed both to ``syncValidation``. We take only the current name:
  the older request gets a plain 200.
- The 5-message batch has a 4-entry documented 207: we read entries 0-3 as answering messages 0, 1, 2 and 4, as
  ``test_payload_examples`` explains. We answer all five. Message 2 is refused there for its ``imsOrgId``; we do not
  authenticate organisations (a connection's token does that), so we accept it, as we accept message 3.
- Failed batch entries: the tutorials give ``{"statusCode", "message"}``, the Kafka connector's fixture
  ``{"xactionId", "status", "message"}``. We follow the tutorials (and the issue).
- The connector's fixture refuses a message without a ``header``; our decoder takes the schema from
  ``body.xdmMeta`` (README, "Payload forms"), so we accept it.
- Error bodies have the problem shape of the documented 400s; the documented 401 has ``status`` as a string, ours is
  an integer like the 400s'.
- Files that are not strict JSON as published (trailing commas, an extra brace) are what the documents show: they get
  400 (``DECODE.NOT_JSON``), which is what a client copying them would get. The troubleshooting page's 207 (line
  breaks inside a string) cannot be read, so its shape is not compared.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pipelines.config import load_config
from schemas.registry import SchemaRegistry
from schemas.validation import UNKNOWN_SCHEMA
from service.api import create_app
from service.inlet import Inlet, Judge
from service.settings import InletConnection, InletSettings
from tests.messages.test_decoding import EVENT_ID, PROFILE_ID
from tests.service.test_inlet import FakePublisher
from tests.service.test_profile_lookup import sample_store
from tests.transforms.test_payload_examples import (
    ALL_SUCCESS,
    CONNECTOR_MESSAGES,
    MULTIPLE_MESSAGES,
    PARTIAL_FAILURE,
    REQUESTS,
    RESPONSE_ENTRY_FOR_MESSAGE,
    TWO_VALID,
    VALID,
    Entity,
    read,
)

INLET_ID = "9b0cb233972f3b0092992284c7353f5eead496218e8441a79b25e9421ea127f5"
CONNECTION_BY_SCHEMA = {EVENT_ID: "bare-events", PROFILE_ID: "bare-profiles"}
OPENAPI_HEADER = "openapi-streaming-ingestion__BatchMessageArray.items.header.example.json"
OPENAPI_BODY = "openapi-streaming-ingestion__BatchMessageBody.example.json"
SINGLE_200 = (
    "aepdocs__sources-http-api__response-200.json",
    "openapi-streaming-ingestion__StreamingIngestionResponse.example.json",
)
SYNC_200 = (
    "aepdocs__streaming-record-data__response-200-syncValidation-pass.json",
    "aepdocs__streaming-time-series-data__response-200-syncValidation-pass.json",
)
ASYNC_SKIPPED = "aepdocs__streaming-validation__response-200-async-syncValidation-skipped.json"
OLDER_SYNC_REQUEST = "aepdocs__streaming-record-data__request-profile-record.v036bda27.json"
OLDER_SYNC_200 = "aepdocs__streaming-record-data__response-200-synchronousValidation-pass.v036bda27.json"
SYNC_400 = "aepdocs__streaming-validation__response-400-syncValidation-invalid-xdm.json"
UNAUTHORIZED = "aepdocs__sources-http-api__response-401-authenticated-connection.json"
CONNECTOR_SUCCESS = "streaming-connect__aep-connector-inlet-successful-response.json"
CONNECTOR_MULTI = "streaming-connect__aep-connector-inlet-multi-message-response.json"
CONNECTOR_MESSAGE = "streaming-connect__xdm-data.json"
# What a Postman environment would hold, in our terms.
POSTMAN_VARIABLES = {
    "EXPEVENTSCHEMAURL": EVENT_ID,
    "PROFILESCHEMAURL": PROFILE_ID,
    "NEWEXPEVENTDATASETID": "experience_events",
    "NEWPROFILEDATASETID": "profile_records",
    "IMS_ORG": "5C1328435BF324E90A49402A@AdobeOrg",
    "RUNDESIGNATION": "run1",
}
POSTMAN_REQUESTS = sorted(name for name in REQUESTS if name.startswith("postman-"))
ACCEPTED = "accepted"
TOKEN = "connection-token"


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


@pytest.fixture
def client(registry) -> Iterator[TestClient]:
    connections = {INLET_ID: InletConnection(), "secured": InletConnection(token=TOKEN)}
    connections |= {name: InletConnection(schema=schema) for schema, name in CONNECTION_BY_SCHEMA.items()}
    inlet = Inlet(InletSettings(connections=connections), Judge(registry), FakePublisher(), environ={})
    app = create_app(sample_store(), load_config(None).stitch_settings(), "api-token", inlet=inlet)
    with TestClient(app) as test_client:
        yield test_client


def document(name: str) -> Any:
    return json.loads(read(name))


def is_batch(body: bytes) -> bool:
    try:
        payload = json.loads(body)
    except ValueError:
        return False
    return isinstance(payload, dict) and "messages" in payload


def replay(client: TestClient, name: str, body: bytes | None = None, **params: str) -> Any:
    body = read(name) if body is None else body
    schema = dict(REQUESTS[name].attributes).get("schemaRef") if name in REQUESTS else None
    connection = CONNECTION_BY_SCHEMA.get(schema, INLET_ID)
    route = f"/collection/batch/{connection}" if is_batch(body) else f"/collection/{connection}"
    return client.post(route, content=body, params=params)


def shape(value: Any) -> Any:
    """The keys and value types of a JSON value, without the values."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    return type(value).__name__


def answer(entry: dict) -> str | int:
    return ACCEPTED if set(entry) == {"xactionId"} else entry["statusCode"]


def expected_answer(output) -> str | int:
    return ACCEPTED if isinstance(output, Entity) else 400


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_every_request_example_gets_the_status_its_decoding_gives(client, name):
    response = replay(client, name)
    expected = [expected_answer(output) for output in REQUESTS[name].outputs]
    if is_batch(read(name)):
        assert response.status_code == 207
        assert [answer(entry) for entry in response.json()["responses"]] == expected
    else:
        assert response.status_code == (200 if expected == [ACCEPTED] else 400)


@pytest.mark.parametrize("name", sorted(name for name in REQUESTS if not is_batch(read(name))))
def test_single_answers_have_the_documented_shape(client, name):
    response = replay(client, name)
    expected = shape(document(SINGLE_200[0])) if response.status_code == 200 else one_violation(SYNC_400)
    assert shape(response.json()) == expected


def test_the_documented_200_bodies_and_ours_differ_only_where_the_documents_do(client):
    ours = replay(client, "openapi-streaming-ingestion__streamingMessage.example.json").json()
    tutorial, openapi = (document(name) for name in SINGLE_200)
    assert shape(ours) == shape(tutorial)
    assert set(ours) == set(openapi)
    assert (type(openapi["receivedTimeMs"]), type(ours["receivedTimeMs"])) == (str, int)
    assert set(document(ASYNC_SKIPPED)) - set(ours) == {"syncValidation"}


def test_the_older_sync_validation_parameter_is_not_ours(client):
    response = replay(client, OLDER_SYNC_REQUEST, synchronousValidation="true")
    assert response.status_code == 200
    assert set(document(OLDER_SYNC_200)) - set(response.json()) == {"synchronousValidation"}


def one_violation(name: str) -> Any:
    """The shape of a documented 400 cut to its first violation: ours list as many as there are, the same way."""
    expected = shape(document(name))
    violations = expected["report"]["cause"]["_streamingValidation"][0]
    violations["causingExceptions"] = violations["causingExceptions"][:1]
    return expected


def fill(text: str) -> str:
    return re.sub(r"\{\{(\w+)\}\}", lambda match: POSTMAN_VARIABLES[match[1]], text)


def filled(name: str) -> bytes:
    return fill(read(name).decode()).encode()


@pytest.mark.parametrize("name", POSTMAN_REQUESTS)
def test_postman_requests_with_their_variables_filled_get_their_ingestion_verdict(client, registry, name):
    response = replay(client, name, filled(name), syncValidation="true")
    [output] = REQUESTS[name].outputs
    if not isinstance(output, Entity):
        assert response.status_code == 400  # not JSON as published
        return
    registered = registry.get(fill(output.schema_id)) is not None
    expected_verdict = output.verdict if registered else ((UNKNOWN_SCHEMA, ""),)
    if expected_verdict == VALID:
        assert response.status_code == 200
        assert shape(response.json()) == shape(document(SYNC_200[0])) == shape(document(SYNC_200[1]))
    else:
        assert response.status_code == 400
        [violations] = response.json()["report"]["cause"]["_streamingValidation"]
        found = [(cause["keyword"], cause["pointerToViolation"][1:]) for cause in violations["causingExceptions"]]
        assert sorted(found) == sorted(expected_verdict)


def test_the_sync_validation_400_has_the_documented_shape(client):
    name = "postman-identitylink__streaming-expevent-ingest-crm-id-1-profile-link.json"
    ours = replay(client, name, filled(name), syncValidation="true").json()
    documented = document(SYNC_400)
    assert shape(ours) == one_violation(SYNC_400)
    assert (ours["status"], ours["title"]) == (documented["status"], documented["title"])


def test_the_unauthorised_answer_has_the_documented_shape_with_an_integer_status(client):
    response = client.post("/collection/secured", content=read(CONNECTOR_MESSAGE))
    documented = document(UNAUTHORIZED)
    assert response.status_code == 401
    assert shape(response.json()) == shape(documented) | {"status": "int"}
    assert (response.json()["title"], documented["status"]) == (documented["title"], "401")


def test_the_two_message_batch_answers_as_documented(client):
    ours = replay(client, TWO_VALID).json()
    assert shape(ours) == shape(document(ALL_SUCCESS))
    assert ours["inletId"] == document(ALL_SUCCESS)["inletId"]
    assert [entry["xactionId"] for entry in ours["responses"]] == [f"{ours['batchId']}:{index}" for index in (0, 1)]


def test_the_five_message_batch_beside_its_four_entry_response(client):
    ours = replay(client, MULTIPLE_MESSAGES).json()["responses"]
    documented = document(PARTIAL_FAILURE)["responses"]
    rows = [
        (None if entry is None else answer(documented[entry]), answer(ours[message]))
        for message, entry in RESPONSE_ENTRY_FOR_MESSAGE.items()
    ]
    assert rows == [(ACCEPTED, ACCEPTED), (400, 400), (400, ACCEPTED), (None, ACCEPTED), (400, 400)]
    for message, entry in RESPONSE_ENTRY_FOR_MESSAGE.items():
        if entry is not None and answer(documented[entry]) == answer(ours[message]):
            assert shape(ours[message]) == shape(documented[entry])


def test_the_openapi_batch_put_together_from_its_header_and_body_examples(client):
    body = json.dumps({"messages": [{"header": document(OPENAPI_HEADER), "body": document(OPENAPI_BODY)}]})
    response = replay(client, OPENAPI_HEADER, body.encode())
    assert response.status_code == 207
    assert shape(response.json()) == shape(document(CONNECTOR_SUCCESS))


def test_the_connectors_messages_as_the_connector_sends_them(client):
    """The connector posts its array as a batch: both messages are taken here (its fixture refuses the first, which
    has no header), and the answer takes the tutorials' shape."""
    messages = document(CONNECTOR_MESSAGES)
    response = replay(client, CONNECTOR_MESSAGES, json.dumps({"messages": messages}).encode())
    documented = document(CONNECTOR_MULTI)["responses"]
    assert [answer(entry) for entry in response.json()["responses"]] == [ACCEPTED, ACCEPTED]
    assert (set(documented[0]), set(documented[1])) == ({"xactionId", "status", "message"}, {"xactionId"})
    single = replay(client, CONNECTOR_MESSAGE, json.dumps({"messages": [document(CONNECTOR_MESSAGE)]}).encode())
    assert shape(single.json()) == shape(document(CONNECTOR_SUCCESS))
