"""Tests for tools/sample_stream.py and the committed sample it generates, pipelines/samples/stream.jsonl."""

import base64
import collections
import json
import pathlib

import pytest

from core.clock import parse_rfc3339_us
from core.records import REPLAY_ERROR_ATTRIBUTE
from messages.replay_files import read_replay_file
from tools.sample_stream import EXPERIENCE_EVENT_SCHEMA, PROFILE_SCHEMA, generate_sample_stream, main

SAMPLE = pathlib.Path(__file__).resolve().parents[2] / "pipelines" / "samples" / "stream.jsonl"
BASE_US = parse_rfc3339_us("2026-11-01T09:00:00Z")
HOUR_US = 3600 * 1_000_000
DAY_US = 24 * HOUR_US


def entities_of(payload: bytes, attributes: dict) -> list[tuple[str | None, dict]] | None:
    """The (schema id, entity) pairs a payload holds, or ``None`` when it is not JSON."""
    try:
        parsed = json.loads(payload)
    except ValueError:
        return None
    envelopes = parsed.get("messages", [parsed])
    if "header" not in envelopes[0]:
        return [(attributes.get("schemaRef"), parsed)]
    return [(envelope["header"]["schemaRef"]["id"], envelope["body"]["xdmEntity"]) for envelope in envelopes]


def leaves(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from leaves(item)
    else:
        yield value


def breaks_a_rule(schema_id: str | None, entity: dict) -> bool:
    """The sample's invalid kinds, checked here independently of the generator."""
    if schema_id not in (EXPERIENCE_EVENT_SCHEMA, PROFILE_SCHEMA):
        return True
    primaries = sum(item["primary"] for items in entity["identityMap"].values() for item in items)
    if schema_id == EXPERIENCE_EVENT_SCHEMA and ("timestamp" not in entity or not isinstance(entity["eventType"], str)):
        return True
    return primaries != 1 or any(key.startswith("xdm:") for key in entity) or "" in leaves(entity)


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    """Each committed line with its parsed REST form and payload."""
    lines = SAMPLE.read_bytes().splitlines()
    parsed = []
    for line in lines:
        rest = json.loads(line)
        payload = base64.b64decode(rest["data"], validate=True)
        parsed.append({"line": line, "rest": rest, "entities": entities_of(payload, rest["attributes"])})
    return parsed


def test_committed_sample_is_what_the_generator_writes_with_its_defaults(tmp_path, capsys):
    out = tmp_path / "stream.jsonl"
    main(["--out", str(out)])
    assert out.read_bytes() == SAMPLE.read_bytes()
    summary = json.loads(capsys.readouterr().err)
    assert summary["lines"] == len(SAMPLE.read_bytes().splitlines())


def test_the_seed_decides_the_stream():
    assert generate_sample_stream(seed=1, messages=200) == generate_sample_stream(seed=1, messages=200)
    assert generate_sample_stream(seed=1, messages=200)[0] != generate_sample_stream(seed=2, messages=200)[0]


def test_a_tiny_stream_still_generates():
    lines, summary = generate_sample_stream(seed=3, people=1, messages=50)
    assert summary.lines == len(lines) == 50


def test_sample_is_a_few_thousand_rest_form_lines_under_4_mb(sample):
    assert len(sample) >= 2000 and SAMPLE.stat().st_size < 4_000_000
    assert all(entry["rest"].keys() == {"data", "attributes", "messageId", "publishTime"} for entry in sample)
    messages = list(read_replay_file(str(SAMPLE), clock=lambda: 0))
    assert len(messages) == len(sample)
    assert not any(REPLAY_ERROR_ATTRIBUTE in message.attributes for message in messages)
    assert [message.message_id for message in messages] == [entry["rest"]["messageId"] for entry in sample]


def test_publish_times_span_two_hourly_partitions_and_many_five_minute_windows(sample):
    publish_times = [parse_rfc3339_us(entry["rest"]["publishTime"]) for entry in sample]
    assert min(publish_times) >= BASE_US and max(publish_times) < BASE_US + 2 * HOUR_US
    assert {(time - BASE_US) // HOUR_US for time in publish_times} == {0, 1}
    assert len({(time - BASE_US) // 300_000_000 for time in publish_times}) == 24


def test_the_mix_has_the_documented_proportions(sample):
    lines = len(sample)
    seen_lines = set()
    redelivered = 0
    message_ids_by_entity_id = collections.defaultdict(set)
    invalid = profiles = batches = bare = 0
    for entry in sample:
        if entry["line"] in seen_lines:
            redelivered += 1
            continue
        seen_lines.add(entry["line"])
        entities = entry["entities"]
        if entities is None or any(breaks_a_rule(schema_id, entity) for schema_id, entity in entities):
            invalid += 1
            continue
        for _, entity in entities:
            message_ids_by_entity_id[entity["_id"]].add(entry["rest"]["messageId"])
        profiles += entities[0][0] == PROFILE_SCHEMA
        batches += "messages" in json.loads(base64.b64decode(entry["rest"]["data"]))
        bare += "schemaRef" in entry["rest"]["attributes"]
    resent = sum(len(message_ids) - 1 for message_ids in message_ids_by_entity_id.values())
    valid = lines - redelivered - invalid
    assert 0.015 <= redelivered / lines <= 0.025
    assert 0.02 <= invalid / lines <= 0.045
    assert 0.005 <= resent / lines <= 0.02
    assert 0.10 <= profiles / valid <= 0.20
    assert 0.02 <= batches / valid <= 0.07
    assert 0.08 <= bare / valid <= 0.16


def test_every_invalid_kind_is_present(sample):
    not_json = [entry for entry in sample if entry["entities"] is None]
    entities = [pair for entry in sample if entry["entities"] for pair in entry["entities"]]
    events = [entity for schema_id, entity in entities if schema_id == EXPERIENCE_EVENT_SCHEMA]
    assert any(entry["rest"]["data"] and b"{" not in base64.b64decode(entry["rest"]["data"]) for entry in not_json)
    assert any(b"{" in base64.b64decode(entry["rest"]["data"]) for entry in not_json)
    assert any(schema_id not in (EXPERIENCE_EVENT_SCHEMA, PROFILE_SCHEMA) for schema_id, _ in entities)
    assert any("timestamp" not in event for event in events)
    assert any(not isinstance(event["eventType"], str) for event in events)
    assert any("xdm:locationContext" in event for event in events)
    assert any("" in leaves(event) for event in events)
    assert any(sum(item["primary"] for items in e["identityMap"].values() for item in items) == 2 for e in events)


def test_event_times_precede_publish_times_and_a_few_are_days_old(sample):
    lags = [
        parse_rfc3339_us(entry["rest"]["publishTime"]) - parse_rfc3339_us(entity["timestamp"])
        for entry in sample
        for schema_id, entity in entry["entities"] or []
        if schema_id == EXPERIENCE_EVENT_SCHEMA and "timestamp" in entity
    ]
    assert min(lags) > 0
    assert 0.01 <= sum(lag > DAY_US for lag in lags) / len(lags) <= 0.06


def test_people_share_identities_across_devices(sample):
    ecids_by_email = collections.defaultdict(set)
    mixed_case = 0
    for entry in sample:
        for _, entity in entry["entities"] or []:
            identity_map = entity["identityMap"]
            for email in identity_map.get("Email", []):
                mixed_case += email["id"] != email["id"].lower()
                ecids_by_email[email["id"].lower()].update(ecid["id"] for ecid in identity_map.get("ECID", []))
    assert any(len(ecids) >= 2 for ecids in ecids_by_email.values())
    assert mixed_case > 0
