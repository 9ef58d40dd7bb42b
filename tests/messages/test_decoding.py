"""Tests for messages/decoding.py: strict JSON, every payload form, every decode code, and properties that hold for
any input (nothing raises; one output per non-batch message; failed records keep what a replay needs).

Messages are built from the SAMPLE constants below; the helpers here are shared by the other decode test modules.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
from typing import Any

import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.records import ORIGINAL_BYTES_ATTRIBUTE, ORIGINAL_SHA256_ATTRIBUTE, DecodedEntity, FailedRecord, Message
from messages import decoding
from messages.decoding import (
    AVRO,
    BASE64,
    BATCH_TOO_LARGE,
    DUPLICATE_KEY,
    EMPTY_BATCH,
    FAILED_PREFIX_BYTES,
    INTEGER_OUT_OF_RANGE,
    INVALID_STRING,
    MAX_BATCH_ENTRIES,
    MAX_JSON_DEPTH,
    MAX_MESSAGE_BYTES,
    NO_ENTITY,
    NO_SCHEMA_REF,
    NON_FINITE_NUMBER,
    NOT_JSON,
    NOT_UTF8,
    PUBLISH_TIME_OUT_OF_RANGE,
    REPLAY_ERROR_ATTRIBUTE,
    SCHEMA_REF_MISMATCH,
    TOO_DEEP,
    TOO_LARGE,
    UNKNOWN_ENVELOPE,
    UNKNOWN_SCHEMA,
    JsonRejected,
    decode_message,
    parse_json,
)
from schemas.avro import entity_from_avro, to_avro_datum
from schemas.registry import SchemaRegistry

EVENT_ID = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE_ID = "https://ns.adobe.com/xdm/context/profile"
PUBLISH_TIME_US = 1_793_523_600_000_000  # 2026-11-01T09:00:00Z
READ_TIME_US = PUBLISH_TIME_US + 250_000
SAMPLE_ATTRIBUTES = {"origin": "web"}
SAMPLE_EVENT = {
    "_id": "e1",
    "timestamp": "2026-11-01T08:59:00Z",
    "eventType": "web.webpagedetails.pageViews",
    "identityMap": {"ECID": [{"id": "1" * 38, "authenticatedState": "ambiguous", "primary": True}]},
    "web": {"webPageDetails": {"name": "Startseite – Übersicht", "URL": "https://example.com/"}},
}
SAMPLE_PROFILE = {"person": {"name": {"firstName": "Jane", "lastName": "Doe"}}}
AVRO_ATTRIBUTES = {"contentType": "avro/binary", "schemaRef": EVENT_ID}
DECODE_CODES = frozenset(re.findall(r"^``([A-Z0-9_.]+)``", decoding.__doc__, re.MULTILINE))


def envelope(
    entity: Any = SAMPLE_EVENT,
    *,
    header_id: str | None = EVENT_ID,
    body_id: str | None = EVENT_ID,
    dataset_id: str | None = None,
) -> dict:
    """A streaming envelope; ``None`` leaves the schema reference (or dataset) out of that part."""
    header: dict = {"imsOrgId": "ORG@AdobeOrg", "source": {"name": "tests"}}
    if header_id is not None:
        header["schemaRef"] = {"id": header_id, "contentType": "application/vnd.adobe.xed-full+json;version=1"}
    if dataset_id is not None:
        header["datasetId"] = dataset_id
    body: dict = {"xdmEntity": entity}
    if body_id is not None:
        body["xdmMeta"] = {"schemaRef": {"id": body_id, "contentType": "application/vnd.adobe.xed-full+json;version=1"}}
    return {"header": header, "body": body}


def as_bytes(payload: Any) -> bytes:
    return payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()


def message(payload: Any, message_id: str = "m1", **attributes: str) -> Message:
    """A message whose data is ``payload`` (bytes as given, anything else as JSON)."""
    return Message(as_bytes(payload), {**SAMPLE_ATTRIBUTES, **attributes}, message_id, PUBLISH_TIME_US, READ_TIME_US)


def no_avro_schema(schema_id: str) -> None:
    return None


def decode(
    payload: Any, avro_schema_for=no_avro_schema, *, max_batch_entries: int = MAX_BATCH_ENTRIES, **attributes: str
) -> list[DecodedEntity | FailedRecord]:
    return decode_message(message(payload, **attributes), avro_schema_for, max_batch_entries=max_batch_entries)


def decode_one(payload: Any, avro_schema_for=no_avro_schema, **attributes: str) -> DecodedEntity | FailedRecord:
    [output] = decode(payload, avro_schema_for, **attributes)
    return output


def codes(output: DecodedEntity | FailedRecord) -> list[str]:
    """The error codes of a failed record; ``[]`` for a decoded entity, so a wrong outcome shows in the assertion."""
    return [error.code for error in output.errors] if isinstance(output, FailedRecord) else []


def nested(depth: int, kinds: str = "a") -> bytes:
    """JSON nested ``depth`` levels deep; ``kinds`` cycles through ``a`` (array) and ``o`` (object) from the top."""
    opening, closing = [], []
    for level in range(depth):
        if kinds[level % len(kinds)] == "a":
            opening.append("[")
            closing.append("]")
        else:
            opening.append('{"k":')
            closing.append("}")
    innermost = "[]" if kinds[(depth - 1) % len(kinds)] == "a" else "{}"
    return ("".join(opening[:-1]) + innermost + "".join(reversed(closing[:-1]))).encode()


def avro_bytes(entity: dict, registry: SchemaRegistry, schema_id: str = EVENT_ID) -> bytes:
    buffer = io.BytesIO()
    fastavro.schemaless_writer(
        buffer, registry.avro_schema_for(schema_id), to_avro_datum(entity, registry.get(schema_id).root)
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


# parse_json


def test_parse_json_returns_the_value():
    assert parse_json(b'{"a": [1, 2.5, "x", true, null]}') == {"a": [1, 2.5, "x", True, None]}


def test_parse_json_rejections_are_value_errors_carrying_their_code():
    with pytest.raises(ValueError) as raised:
        parse_json(b"{")
    assert isinstance(raised.value, JsonRejected)
    assert raised.value.code == NOT_JSON


@pytest.mark.parametrize("text", [b"9223372036854775807", b"-9223372036854775808"])
def test_parse_json_accepts_the_int64_bounds(text):
    assert parse_json(text) == int(text)


@pytest.mark.parametrize("text", [b"9223372036854775808", b"-9223372036854775809", b"1" * 5000, b"-" + b"9" * 5000])
def test_parse_json_rejects_integers_outside_int64_however_long(text):
    # 5,000 digits is past CPython's int() conversion limit, whose ValueError once escaped parse_json.
    with pytest.raises(JsonRejected) as raised:
        parse_json(b"[" + text + b"]")
    assert raised.value.code == INTEGER_OUT_OF_RANGE


def test_parse_json_joins_an_escaped_surrogate_pair_into_one_character():
    assert parse_json(b'"\\ud834\\udd1e"') == "\U0001d11e"


def test_parse_json_does_not_mistake_an_escaped_backslash_for_a_surrogate_escape():
    assert parse_json(b'"\\\\ud800"') == "\\ud800"


def test_parse_json_keeps_a_string_with_an_escaped_null():
    assert parse_json(b'"A\\u0000B"') == "A\x00B"


@pytest.mark.parametrize("kinds", ["a", "o", "ao"])
def test_parse_json_accepts_nesting_at_the_depth_limit(kinds):
    parse_json(nested(MAX_JSON_DEPTH, kinds))


@pytest.mark.parametrize("kinds", ["a", "o", "ao"])
def test_parse_json_rejects_nesting_one_level_past_the_limit(kinds):
    with pytest.raises(JsonRejected) as raised:
        parse_json(nested(MAX_JSON_DEPTH + 1, kinds))
    assert raised.value.code == TOO_DEEP


@pytest.mark.parametrize("payload", [b"[" * 100_000 + b"]" * 100_000, b'{"k":' * 100_000 + b"1" + b"}" * 100_000])
def test_parse_json_rejects_100000_levels_as_too_deep_without_crashing(payload):
    with pytest.raises(JsonRejected) as raised:
        parse_json(payload)
    assert raised.value.code == TOO_DEEP


def test_depth_counts_nesting_not_the_number_of_containers():
    payload = b'{"wide": [' + b",".join([b"[]", b"{}"] * 100) + b'], "deep": ' + nested(MAX_JSON_DEPTH - 1) + b"}"
    assert parse_json(payload)["wide"] == [[], {}] * 100


def test_brackets_inside_strings_do_not_count_as_depth():
    assert parse_json(b'{"a": "' + b"[{" * 100 + b'"}') == {"a": "[{" * 100}


# Payload forms


def test_streaming_envelope_gives_one_entity_with_its_schema():
    output = decode_one(envelope())
    assert (type(output), output.index, output.schema_id, output.entity) == (DecodedEntity, 0, EVENT_ID, SAMPLE_EVENT)


def test_streaming_envelope_entity_keeps_the_message_bytes_as_raw():
    output = decode_one(envelope())
    assert output.raw == as_bytes(envelope())


def test_envelope_with_schema_ref_only_in_the_header_takes_it():
    assert decode_one(envelope(body_id=None)).schema_id == EVENT_ID


def test_envelope_with_schema_ref_only_in_the_body_takes_it():
    assert decode_one(envelope(header_id=None, body_id=PROFILE_ID)).schema_id == PROFILE_ID


def test_envelope_whose_header_and_body_name_different_schemas_fails_with_mismatch():
    output = decode_one(envelope(body_id=PROFILE_ID))
    assert (codes(output), output.errors[0].path) == ([SCHEMA_REF_MISMATCH], "/body/xdmMeta")


def test_envelope_naming_no_schema_falls_back_to_the_schema_ref_attribute():
    assert decode_one(envelope(header_id=None, body_id=None), schemaRef=PROFILE_ID).schema_id == PROFILE_ID


def test_envelope_naming_no_schema_anywhere_fails_with_no_schema_ref():
    assert codes(decode_one(envelope(header_id=None, body_id=None))) == [NO_SCHEMA_REF]


def test_envelope_schema_ref_beats_the_attribute():
    assert decode_one(envelope(), schemaRef=PROFILE_ID).schema_id == EVENT_ID


def test_envelope_without_a_body_fails_with_no_entity():
    output = decode_one({"header": envelope()["header"]})
    assert (codes(output), output.errors[0].path) == ([NO_ENTITY], "/body/xdmEntity")


def test_envelope_whose_entity_is_not_an_object_fails_with_no_entity():
    assert codes(decode_one(envelope(["not", "an", "object"]))) == [NO_ENTITY]


def test_failed_envelope_names_the_schema_it_was_meant_for():
    assert decode_one(envelope("text")).schema_id == EVENT_ID


def test_dataset_id_comes_from_the_header():
    assert decode_one(envelope(dataset_id="experience_events")).dataset_id == "experience_events"


def test_dataset_id_comes_from_the_attribute_when_the_header_has_none():
    assert decode_one(envelope(), datasetId="experience_events").dataset_id == "experience_events"


def test_dataset_id_of_the_header_beats_the_attribute():
    assert decode_one(envelope(dataset_id="from_header"), datasetId="from_attribute").dataset_id == "from_header"


def test_envelope_without_any_dataset_id_has_none():
    assert decode_one(envelope()).dataset_id is None


SAMPLE_BATCH = {
    "messages": [
        envelope(dataset_id="experience_events"),
        {"header": envelope()["header"]},
        42,
        envelope(body_id=PROFILE_ID),
        envelope(SAMPLE_PROFILE, header_id=PROFILE_ID, body_id=None),
        {"something": "else"},
    ]
}


def outcome(output: DecodedEntity | FailedRecord) -> tuple:
    if isinstance(output, DecodedEntity):
        return ("entity", output.index, output.schema_id, output.dataset_id)
    return ("failed", output.index, [(error.code, error.path) for error in output.errors])


def test_batch_gives_one_output_per_entry_in_order_with_its_index():
    assert [outcome(output) for output in decode(SAMPLE_BATCH)] == [
        ("entity", 0, EVENT_ID, "experience_events"),
        ("failed", 1, [(NO_ENTITY, "/messages/1/body/xdmEntity")]),
        ("failed", 2, [(UNKNOWN_ENVELOPE, "/messages/2")]),
        ("failed", 3, [(SCHEMA_REF_MISMATCH, "/messages/3/body/xdmMeta")]),
        ("entity", 4, PROFILE_ID, None),
        ("failed", 5, [(UNKNOWN_ENVELOPE, "/messages/5")]),
    ]


def test_batch_entities_carry_their_own_entity():
    outputs = decode(SAMPLE_BATCH)
    assert [outputs[0].entity, outputs[4].entity] == [SAMPLE_EVENT, SAMPLE_PROFILE]


def test_batch_entry_raw_is_that_entry_alone_as_compact_json():
    entry = SAMPLE_BATCH["messages"][4]
    assert json.loads(decode(SAMPLE_BATCH)[4].raw) == entry


def test_failed_batch_entry_keeps_that_entry_alone_as_its_data():
    failed = decode(SAMPLE_BATCH)[1]
    assert json.loads(failed.data) == SAMPLE_BATCH["messages"][1]


def test_failed_non_object_batch_entry_keeps_that_entry_as_its_data():
    assert decode(SAMPLE_BATCH)[2].data == b"42"


def test_batch_entries_take_the_dataset_attribute_when_their_header_has_none():
    outputs = decode({"messages": [envelope(), envelope()]}, datasetId="experience_events")
    assert [output.dataset_id for output in outputs] == ["experience_events", "experience_events"]


@pytest.mark.parametrize("entries", [[], {}, "envelope", None])
def test_batch_without_a_non_empty_list_fails_with_empty_batch(entries):
    output = decode_one({"messages": entries})
    assert (codes(output), output.index, output.errors[0].path) == ([EMPTY_BATCH], None, "/messages")


def test_bare_entity_takes_its_schema_from_the_schema_ref_attribute():
    output = decode_one(SAMPLE_EVENT, schemaRef=EVENT_ID)
    assert (type(output), output.schema_id, output.entity) == (DecodedEntity, EVENT_ID, SAMPLE_EVENT)


def test_bare_entity_takes_its_dataset_from_the_dataset_id_attribute():
    assert decode_one(SAMPLE_EVENT, schemaRef=EVENT_ID, datasetId="experience_events").dataset_id == "experience_events"


def test_bare_entity_without_a_schema_ref_attribute_fails_with_no_schema_ref():
    output = decode_one(SAMPLE_EVENT)
    assert (codes(output), output.index) == ([NO_SCHEMA_REF], None)


@pytest.mark.parametrize("payload", [b"[]", b'"text"', b"1", b"null", b"true"])
def test_json_that_is_not_an_object_fails_with_unknown_envelope(payload):
    assert codes(decode_one(payload, schemaRef=EVENT_ID)) == [UNKNOWN_ENVELOPE]


# Avro


def test_avro_entity_round_trips_through_the_registry_schema(registry):
    output = decode_one(avro_bytes(SAMPLE_EVENT, registry), registry.avro_schema_for, **AVRO_ATTRIBUTES)
    assert (output.schema_id, entity_from_avro(output.entity, registry.get(EVENT_ID).root)) == (EVENT_ID, SAMPLE_EVENT)


def test_avro_entity_keeps_the_avro_bytes_as_raw(registry):
    data = avro_bytes(SAMPLE_EVENT, registry)
    assert decode_one(data, registry.avro_schema_for, **AVRO_ATTRIBUTES).raw == data


def test_avro_entity_takes_its_dataset_from_the_attribute(registry):
    data = avro_bytes(SAMPLE_EVENT, registry)
    output = decode_one(data, registry.avro_schema_for, datasetId="experience_events", **AVRO_ATTRIBUTES)
    assert output.dataset_id == "experience_events"


def test_avro_content_type_is_matched_without_regard_to_case(registry):
    data = avro_bytes(SAMPLE_EVENT, registry)
    output = decode_one(data, registry.avro_schema_for, contentType="Avro/Binary", schemaRef=EVENT_ID)
    assert isinstance(output, DecodedEntity)


def test_truncated_avro_fails_with_avro(registry):
    data = avro_bytes(SAMPLE_EVENT, registry)
    assert codes(decode_one(data[: len(data) // 2], registry.avro_schema_for, **AVRO_ATTRIBUTES)) == [AVRO]


def test_avro_truncated_at_any_cut_point_fails_with_avro(registry):
    data = avro_bytes(SAMPLE_EVENT, registry)
    outcomes = {
        cut: codes(decode_one(data[:cut], registry.avro_schema_for, **AVRO_ATTRIBUTES)) for cut in range(len(data))
    }
    assert {cut: found for cut, found in outcomes.items() if found != [AVRO]} == {}


def test_avro_with_trailing_bytes_fails_with_avro(registry):
    data = avro_bytes(SAMPLE_EVENT, registry) + b"\x00garbage"
    assert codes(decode_one(data, registry.avro_schema_for, **AVRO_ATTRIBUTES)) == [AVRO]


def test_avro_naming_an_unregistered_schema_fails_with_unknown_schema(registry):
    data = avro_bytes(SAMPLE_EVENT, registry)
    output = decode_one(data, registry.avro_schema_for, contentType="avro/binary", schemaRef="https://example.com/nope")
    assert codes(output) == [UNKNOWN_SCHEMA]


def test_avro_without_a_schema_ref_attribute_fails_with_no_schema_ref(registry):
    data = avro_bytes(SAMPLE_EVENT, registry)
    assert codes(decode_one(data, registry.avro_schema_for, contentType="avro/binary")) == [NO_SCHEMA_REF]


def test_json_sent_as_avro_fails_with_avro(registry):
    assert codes(decode_one(envelope(), registry.avro_schema_for, **AVRO_ATTRIBUTES)) == [AVRO]


# Replay and size


def test_replayed_message_whose_data_was_not_base64_fails_with_base64():
    output = decode_one(b"not base64 at all", **{REPLAY_ERROR_ATTRIBUTE: BASE64})
    assert (codes(output), output.data) == ([BASE64], b"not base64 at all")


def test_message_of_exactly_the_maximum_size_decodes():
    payload = b"{}" + b" " * (MAX_MESSAGE_BYTES - 2)
    assert isinstance(decode_one(payload, schemaRef=EVENT_ID), DecodedEntity)


def test_message_one_byte_over_the_maximum_fails_with_too_large():
    payload = b"{}" + b" " * (MAX_MESSAGE_BYTES - 1)
    assert codes(decode_one(payload, schemaRef=EVENT_ID)) == [TOO_LARGE]


def test_a_too_large_message_keeps_a_prefix_and_the_length_and_sha256_of_the_whole():
    payload = bytes(range(256)) * (MAX_MESSAGE_BYTES // 128)
    output = decode_one(payload, schemaRef=EVENT_ID)
    assert (output.data, output.attributes) == (
        payload[:FAILED_PREFIX_BYTES],
        {
            **SAMPLE_ATTRIBUTES,
            "schemaRef": EVENT_ID,
            ORIGINAL_BYTES_ATTRIBUTE: str(2 * MAX_MESSAGE_BYTES),
            ORIGINAL_SHA256_ATTRIBUTE: hashlib.sha256(payload).hexdigest(),
        },
    )


def test_a_message_already_cut_to_a_prefix_fails_with_too_large_keeping_its_attributes():
    # A replay line too long to read whole, or the failed record of a too large message replayed out of the lake.
    cut = {ORIGINAL_BYTES_ATTRIBUTE: "314572800", ORIGINAL_SHA256_ATTRIBUTE: "ab" * 32}
    output = decode_one(b'{"_id": "x"}', schemaRef=EVENT_ID, **cut)
    assert (codes(output), output.data, output.attributes) == (
        [TOO_LARGE],
        b'{"_id": "x"}',
        {**SAMPLE_ATTRIBUTES, "schemaRef": EVENT_ID, **cut},
    )
    assert "314572800 bytes" in output.errors[0].message


def test_the_maximum_size_is_configurable():
    output = decode_message(message(envelope()), no_avro_schema, max_message_bytes=100)
    assert codes(output[0]) == [TOO_LARGE]


def test_a_2_mib_string_fails_with_too_large():
    assert codes(decode_one({"_id": "x" * (2 * 1024 * 1024)}, schemaRef=EVENT_ID)) == [TOO_LARGE]


def test_size_is_checked_before_the_avro_content_type(registry):
    data = avro_bytes(SAMPLE_EVENT, registry)
    output = decode_message(message(data, **AVRO_ATTRIBUTES), registry.avro_schema_for, max_message_bytes=len(data) - 1)
    assert codes(output[0]) == [TOO_LARGE]


# Every documented code, each from one small sample

SAMPLE_PER_CODE = {
    TOO_LARGE: (b"{}" + b" " * MAX_MESSAGE_BYTES, {"schemaRef": EVENT_ID}),
    PUBLISH_TIME_OUT_OF_RANGE: (as_bytes(envelope()), {}),
    BATCH_TOO_LARGE: (as_bytes({"messages": [1] * (MAX_BATCH_ENTRIES + 1)}), {}),
    NOT_UTF8: (b'{"name": "caf\xe9"}', {"schemaRef": EVENT_ID}),
    NOT_JSON: (b'{"name": "cafe",}', {"schemaRef": EVENT_ID}),
    DUPLICATE_KEY: (b'{"_id": "a", "_id": "a"}', {"schemaRef": EVENT_ID}),
    NON_FINITE_NUMBER: (b'{"value": 1e400}', {"schemaRef": EVENT_ID}),
    INTEGER_OUT_OF_RANGE: (b'{"value": 18446744073709551616}', {"schemaRef": EVENT_ID}),
    TOO_DEEP: (b'{"a":' + nested(MAX_JSON_DEPTH) + b"}", {"schemaRef": EVENT_ID}),
    INVALID_STRING: (b'{"name": "\\udc00"}', {"schemaRef": EVENT_ID}),
    BASE64: (b"%%%", {REPLAY_ERROR_ATTRIBUTE: BASE64}),
    AVRO: (b"\x02", AVRO_ATTRIBUTES),
    NO_SCHEMA_REF: (b'{"_id": "a"}', {}),
    SCHEMA_REF_MISMATCH: (as_bytes(envelope(body_id=PROFILE_ID)), {}),
    NO_ENTITY: (b'{"header": {}, "body": {}}', {}),
    EMPTY_BATCH: (b'{"messages": []}', {}),
    UNKNOWN_ENVELOPE: (b"[]", {}),
    UNKNOWN_SCHEMA: (b"\x00", {"contentType": "avro/binary", "schemaRef": "https://example.com/nope"}),
}


def test_every_code_in_the_module_docstring_has_a_sample():
    assert set(SAMPLE_PER_CODE) == DECODE_CODES


# A sample's publish time when it is not PUBLISH_TIME_US.
SAMPLE_PUBLISH_TIME_US = {PUBLISH_TIME_OUT_OF_RANGE: -1}


@pytest.mark.parametrize("code", sorted(SAMPLE_PER_CODE))
def test_each_documented_code_comes_from_its_sample(code, registry):
    data, attributes = SAMPLE_PER_CODE[code]
    sample = dataclasses.replace(
        message(data, **attributes), publish_time_us=SAMPLE_PUBLISH_TIME_US.get(code, PUBLISH_TIME_US)
    )
    assert [codes(output) for output in decode_message(sample, registry.avro_schema_for)] == [[code]]


# Bounded work per message


def test_a_batch_of_the_maximum_entries_decodes_each():
    outputs = decode({"messages": [envelope()] * 3}, max_batch_entries=3)
    assert [type(output) for output in outputs] == [DecodedEntity] * 3


def test_a_batch_over_the_maximum_entries_is_one_failed_record_of_the_whole_message():
    batch = {"messages": [envelope()] * 4}
    [output] = decode(batch, max_batch_entries=3)
    assert (codes(output), output.errors[0].path, output.index, output.data) == (
        [BATCH_TOO_LARGE],
        "/messages",
        None,
        as_bytes(batch),
    )


def test_a_1_mib_batch_of_half_a_million_ones_is_one_record_without_looking_at_any_entry(monkeypatch):
    # The adversarial payload measured in issue 12: 524,278 entries in 1 MiB once became as many failed records.
    payload = b'{"messages":[' + b",".join([b"1"] * 524_278) + b"]}"
    assert len(payload) <= MAX_MESSAGE_BYTES
    entries_looked_at = []
    monkeypatch.setattr(decoding, "_decode_entry", lambda *args: entries_looked_at.append(args))
    [output] = decode(payload)
    assert (codes(output), entries_looked_at) == ([BATCH_TOO_LARGE], [])


@pytest.mark.parametrize(
    "publish_time_us",
    [
        -1,  # 1969-12-31T23:59:59.999999Z
        -62_135_596_800_000_000,  # 0001-01-01T00:00:00Z, which became the partition date=1-01-01
        253_402_300_799_000_000,  # 9999-12-31T23:59:59Z, once accepted as valid
        READ_TIME_US + 300_000_001,  # one microsecond past the read time plus the default skew
    ],
)
def test_a_publish_time_outside_1970_to_the_read_time_plus_skew_fails_the_whole_message(publish_time_us):
    sample = dataclasses.replace(message({"messages": [envelope(), envelope()]}), publish_time_us=publish_time_us)
    [output] = decode_message(sample, no_avro_schema)
    assert (codes(output), output.index, output.publish_time_us) == (
        [PUBLISH_TIME_OUT_OF_RANGE],
        None,
        publish_time_us,
    )


@pytest.mark.parametrize("publish_time_us", [0, READ_TIME_US + 300_000_000])
def test_a_publish_time_at_either_bound_decodes(publish_time_us):
    sample = dataclasses.replace(message(envelope()), publish_time_us=publish_time_us)
    assert [type(output) for output in decode_message(sample, no_avro_schema)] == [DecodedEntity]


def test_the_publish_time_skew_is_configurable():
    sample = dataclasses.replace(message(envelope()), publish_time_us=READ_TIME_US + 2)
    assert codes(decode_message(sample, no_avro_schema, publish_time_skew_us=1)[0]) == [PUBLISH_TIME_OUT_OF_RANGE]


@pytest.mark.parametrize("payload", [b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"[-1e400]"])
def test_non_finite_numbers_fail_with_non_finite_number(payload):
    assert codes(decode_one(payload, schemaRef=EVENT_ID)) == [NON_FINITE_NUMBER]


def test_a_utf8_byte_order_mark_fails_with_not_json():
    assert codes(decode_one(b"\xef\xbb\xbf" + as_bytes(envelope()))) == [NOT_JSON]


def test_a_duplicate_key_deep_in_a_batch_fails_the_whole_message():
    payload = as_bytes({"messages": [envelope()]})[:-3] + b',"body":{}}]}'
    output = decode_one(payload)
    assert (codes(output), output.index) == ([DUPLICATE_KEY], None)


@pytest.mark.parametrize("payload", [b'{"\\ud800": 1}', b'["\\udd1e\\ud834"]', b'{"a": "x\\ud800y"}'])
def test_lone_surrogates_in_keys_or_values_fail_with_invalid_string(payload):
    assert codes(decode_one(payload, schemaRef=EVENT_ID)) == [INVALID_STRING]


def test_entity_at_the_depth_limit_decodes():
    # The bare entity is level 1, so 63 more levels put the innermost object at level 64.
    assert isinstance(decode_one(b'{"a":' + nested(MAX_JSON_DEPTH - 1, "o") + b"}", schemaRef=EVENT_ID), DecodedEntity)


def test_entity_one_level_past_the_depth_limit_fails_with_too_deep():
    assert codes(decode_one(b'{"a":' + nested(MAX_JSON_DEPTH, "o") + b"}", schemaRef=EVENT_ID)) == [TOO_DEEP]


def test_100000_levels_of_nesting_fail_with_too_deep():
    assert codes(decode_one(b"[" * 100_000 + b"]" * 100_000, schemaRef=EVENT_ID)) == [TOO_DEEP]


# Properties: for any input


def check_invariants(msg: Message, outputs: list) -> None:
    """What holds for every message: typed outputs, failed records that keep what a replay needs."""
    assert outputs, "every message gives at least one output"
    for output in outputs:
        assert type(output) in (DecodedEntity, FailedRecord)
        if isinstance(output, FailedRecord):
            too_large = codes(output) == [TOO_LARGE]
            attributes = dict(msg.attributes)
            if too_large:  # a prefix of the bytes, and the length and digest of the whole
                attributes |= {ORIGINAL_BYTES_ATTRIBUTE: str(len(msg.data))}
                attributes |= {ORIGINAL_SHA256_ATTRIBUTE: hashlib.sha256(msg.data).hexdigest()}
            kept = (output.attributes, output.message_id, output.publish_time_us, output.read_time_us, output.stage)
            assert kept == (attributes, msg.message_id, msg.publish_time_us, msg.read_time_us, "decode")
            assert {error.code for error in output.errors} <= DECODE_CODES
            if output.index is None:
                kept_bytes = msg.data[:FAILED_PREFIX_BYTES] if too_large else msg.data
                assert output.data == kept_bytes, "a whole-message failure keeps the original bytes (or their prefix)"
        else:
            assert output.message == msg
            assert type(output.entity) is dict
            assert type(output.schema_id) is str and output.schema_id


def decode_checked(data: bytes, avro_schema_for=no_avro_schema, **attributes: str) -> list:
    msg = message(data, **attributes)
    outputs = decode_message(msg, avro_schema_for)
    check_invariants(msg, outputs)
    return outputs


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
ATTRIBUTE_SETS = st.sampled_from([{}, {"schemaRef": EVENT_ID}, AVRO_ATTRIBUTES, {REPLAY_ERROR_ATTRIBUTE: BASE64}])
PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY_SETTINGS
@given(data=st.binary(max_size=300), attributes=ATTRIBUTE_SETS)
def test_arbitrary_bytes_never_raise_and_give_one_output(registry, data, attributes):
    outputs = decode_checked(data, registry.avro_schema_for, **attributes)
    if b"messages" not in data:
        assert len(outputs) == 1


@PROPERTY_SETTINGS
@given(value=JSON_VALUES, attributes=ATTRIBUTE_SETS)
def test_arbitrary_json_never_raises_and_gives_one_output(registry, value, attributes):
    outputs = decode_checked(as_bytes(value), registry.avro_schema_for, **attributes)
    if not (isinstance(value, dict) and value.keys() == {"messages"}):
        assert len(outputs) == 1


@PROPERTY_SETTINGS
@given(entity=st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=4))
def test_every_truncation_of_a_valid_envelope_fails_the_whole_message(entity):
    data = as_bytes(envelope(entity))
    for cut in range(len(data)):
        [output] = decode_checked(data[:cut])
        assert (codes(output), output.index) in (([NOT_JSON], None), ([NOT_UTF8], None)), cut


def test_truncating_inside_a_multibyte_character_fails_with_not_utf8():
    data = as_bytes(envelope())
    cut = data.index("Ü".encode()) + 1
    assert codes(decode_checked(data[:cut])[0]) == [NOT_UTF8]


@PROPERTY_SETTINGS
@given(depth=st.integers(min_value=1, max_value=3 * MAX_JSON_DEPTH), kinds=st.sampled_from(["a", "o", "ao", "oa"]))
def test_nesting_fails_with_too_deep_exactly_when_past_the_limit(depth, kinds):
    [output] = decode_checked(nested(depth, kinds), schemaRef=EVENT_ID)
    assert (codes(output) == [TOO_DEEP]) == (depth > MAX_JSON_DEPTH)


@settings(max_examples=40, deadline=None)
@given(size=st.integers(min_value=MAX_MESSAGE_BYTES - 64, max_value=MAX_MESSAGE_BYTES + 64))
def test_size_fails_with_too_large_exactly_when_over_the_maximum(size):
    payload = b'{"_id": "' + b"x" * (size - 11) + b'"}'
    [output] = decode_checked(payload, schemaRef=EVENT_ID)
    assert (codes(output) == [TOO_LARGE]) == (size > MAX_MESSAGE_BYTES)


def maybe(strategy: st.SearchStrategy, wrong: st.SearchStrategy = JSON_VALUES) -> st.SearchStrategy:
    """A right value, a wrong-typed one, or the key left out (``...``)."""
    return st.one_of(strategy, wrong, st.just(...))


def without_missing(mapping: dict) -> dict:
    return {key: value for key, value in mapping.items() if value is not ...}


SCHEMA_REFS = st.builds(lambda schema_id: without_missing({"id": schema_id}), maybe(st.sampled_from([EVENT_ID])))
MALFORMED_ENVELOPES = st.builds(
    lambda header, body: without_missing({"header": header, "body": body}),
    maybe(
        st.builds(
            lambda ref, dataset: without_missing({"schemaRef": ref, "datasetId": dataset}),
            maybe(SCHEMA_REFS),
            maybe(st.just("experience_events")),
        )
    ),
    maybe(
        st.builds(
            lambda meta, entity: without_missing({"xdmMeta": meta, "xdmEntity": entity}),
            maybe(st.builds(lambda ref: without_missing({"schemaRef": ref}), maybe(SCHEMA_REFS))),
            maybe(st.just(SAMPLE_EVENT)),
        )
    ),
)


@PROPERTY_SETTINGS
@given(value=MALFORMED_ENVELOPES)
def test_wrong_types_in_envelope_fields_give_one_typed_output(value):
    [output] = decode_checked(as_bytes(value))
    if isinstance(output, DecodedEntity):
        # The header's datasetId when it is a string (a wrong value may be one, even ""), else none.
        header = value.get("header")
        stated = header.get("datasetId") if type(header) is dict else None
        assert output.dataset_id == (stated if type(stated) is str else None)


@PROPERTY_SETTINGS
@given(entries=st.lists(st.one_of(MALFORMED_ENVELOPES, JSON_VALUES), min_size=1, max_size=6))
def test_a_batch_gives_one_output_per_entry_with_its_index(entries):
    outputs = decode_checked(as_bytes({"messages": entries}))
    assert [output.index for output in outputs] == list(range(len(entries)))


@pytest.mark.parametrize(
    ("envelope_value", "expected"),
    [
        ({"header": [], "body": {"xdmEntity": SAMPLE_EVENT}}, [NO_SCHEMA_REF]),
        ({"header": {"schemaRef": 7}, "body": {"xdmEntity": SAMPLE_EVENT}}, [NO_SCHEMA_REF]),
        ({"header": {"schemaRef": {"id": 7}}, "body": {"xdmEntity": SAMPLE_EVENT}}, [NO_SCHEMA_REF]),
        ({"header": {"schemaRef": {"id": ""}}, "body": {"xdmEntity": SAMPLE_EVENT}}, [NO_SCHEMA_REF]),
        ({"header": envelope()["header"], "body": "text"}, [NO_ENTITY]),
        ({"header": envelope()["header"], "body": {"xdmEntity": "text"}}, [NO_ENTITY]),
        ({"header": envelope()["header"], "body": {"xdmMeta": [], "xdmEntity": SAMPLE_EVENT}}, []),
    ],
)
def test_wrong_types_in_envelope_fields_are_read_as_absent(envelope_value, expected):
    assert codes(decode_one(envelope_value)) == expected


def test_a_non_string_dataset_id_in_the_header_is_read_as_absent():
    value = envelope()
    value["header"]["datasetId"] = 12
    assert decode_one(value).dataset_id is None
