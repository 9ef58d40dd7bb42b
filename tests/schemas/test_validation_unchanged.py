"""Validation's verdicts over a fixed corpus against a recorded digest: a change meant to keep behaviour keeps them all.

The corpus (:func:`verdict_lines`), each item validated in ingestion mode:

- every entity the sample stream (pipelines/samples/stream.jsonl) decodes to, through ``validate_decoded``;
- every published payload example (tests/data/xdm/payloads), decoded with each built-in schema id as its
  ``schemaRef`` attribute;
- seeded mutations of the sample's entities, against the built-in schemas and against a schema whose tenant object
  holds every constraint the validator knows (enum, const, pattern, maxLength, minimum, maximum, integer, the date,
  date-time and e-mail formats, arrays, maps, free-form JSON): keys dropped, renamed to their compatibility or storage
  names, sent twice under two names, set to null, to empty values or to values of other types, unknown keys added;
  a share of them under a policy that stops at three errors.

Each verdict is one JSON line: the normalised entity (key order included) or every error's code, pointer and message.
The digest is the SHA-256 of all lines. A change meant to alter verdicts records the new digest on purpose, and its
commit says why::

    python -m tests.schemas.test_validation_unchanged --record
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

from core.records import FailedRecord, Message
from messages.decoding import decode_message
from messages.replay_files import read_replay_file
from schemas.names import storage_name
from schemas.registry import SchemaRegistry
from schemas.validation import ValidationPolicy, validate_decoded, validate_entity

ROOT = Path(__file__).parents[2]
SAMPLE = ROOT / "pipelines" / "samples" / "stream.jsonl"
PAYLOADS = ROOT / "tests" / "data" / "xdm" / "payloads"
RECORDED = ROOT / "tests" / "data" / "validation_fingerprint.json"
EXPERIENCE_EVENT = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE = "https://ns.adobe.com/xdm/context/profile"
CONSTRAINED = "https://example.com/schemas/constrained-event"
# Later than every time in the sample and the examples: a replay's messages keep their archived publish times.
READ_TIME_US = 2_000_000_000_000_000
MUTATED_ENTITIES = 1500
MUTATIONS_PER_ENTITY = 6
FEW_ERRORS = ValidationPolicy(max_errors=3)

CONSTRAINED_SCHEMA = {
    "$id": CONSTRAINED,
    "class": EXPERIENCE_EVENT,
    "fieldGroups": [
        "https://ns.adobe.com/xdm/context/identitymap",
        "https://ns.adobe.com/xdm/context/experienceevent-web",
        "https://ns.adobe.com/xdm/context/experienceevent-commerce",
    ],
    "tenant": {
        "type": "object",
        "required": ["tier"],
        "properties": {
            "tier": {"type": "string", "enum": ["gold", "silver"]},
            "channel": {"type": "string", "const": "web"},
            "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]+$", "maxLength": 8},
            "note": {"type": "string", "maxLength": 5},
            "born": {"type": "string", "format": "date"},
            "seen": {"type": "string", "format": "date-time"},
            "email": {"type": "string", "format": "email"},
            "points": {"type": "integer", "minimum": 0, "maximum": 1000},
            "level": {"type": "integer", "enum": [1, 2, 3]},
            "score": {"type": "number", "minimum": -1.5, "maximum": 99.5},
            "ratio": {"type": "number", "enum": [0.5, 1]},
            "member": {"type": "boolean"},
            "xdm:alias": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 4}},
            "visits": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["at"],
                    "properties": {"at": {"type": "string", "format": "date-time"}, "n": {"type": "integer"}},
                },
            },
            "labels": {"type": "object", "additionalProperties": {"type": "string", "enum": ["a", "b"]}},
            "extra": {"type": "object"},
        },
    },
    "dataset": {"name": "constrained_events"},
}
TENANT_VALUE = {
    "tier": "gold",
    "channel": "web",
    "code": "ABC-12",
    "note": "hi",
    "born": "1990-02-28",
    "seen": "2023-11-14T22:00:00.123+01:00",
    "email": "jane@example.com",
    "points": 10,
    "level": 2,
    "score": 12.5,
    "ratio": 1,
    "member": True,
    "alias": "x",
    "tags": ["a", "bb"],
    "visits": [{"at": "2023-11-14T22:00:00Z", "n": 1}, {"at": "2023-11-14T22:00:01Z"}],
    "labels": {"k": "a", "l": "b"},
    "extra": {"free": [1, {"form": None}]},
}
# Values a mutation puts in place of another: null and empties, other types, the edges of ranges and formats.
EMPTIES = [None, "", {}, []]
NUMBERS = [0, 5, -1, 3.0, 2.5, -0.0, 1000, 1001, 99.5, 99.6, 1e300, 2**63, -(2**63) - 1, True, False]
STRINGS = ["x", "a", "gold", "web", "ABC-1", "ABC-123456", "abcdef", "ambiguous", "loggedOut", "a@b", "a b@c", "@"]
TIMES = ["2023-02-30", "1990-02-28", "2023-11-14T22:00:00Z", "2023-11-14T22:00:00", "1969-12-31T23:59:59Z", "later"]
SHAPES = [[None], [1], ["x"], {"a": 1}, {"id": "x"}, [{"id": "x", "primary": True}], "2999-01-01T00:00:00Z"]
REPLACEMENTS = EMPTIES + NUMBERS + STRINGS + TIMES + SHAPES
UNKNOWN_KEYS = ["unknownField", "xdm:unknown", "a/b~c", "@type", "repo:createDate", "_other"]


def _lines_of_message_outputs(messages: list[Message], registry: SchemaRegistry) -> Iterator[str]:
    for message in messages:
        for decoded in decode_message(message, registry.avro_schema_for):
            if isinstance(decoded, FailedRecord):
                continue
            outcome = validate_decoded(decoded, registry)
            if isinstance(outcome, FailedRecord):
                yield _line("failed", outcome.errors)
            else:
                yield _line("valid", (outcome.dataset, outcome.schema_id, outcome.entity))


def _line(kind: str, content) -> str:
    if kind == "failed":
        content = [[error.code, error.path, error.message] for error in content]
    return json.dumps([kind, content], default=repr, ensure_ascii=False)


def _sample_messages() -> list[Message]:
    return list(read_replay_file(str(SAMPLE), clock=lambda: READ_TIME_US))


def _payload_messages() -> list[Message]:
    messages = []
    for path in sorted(PAYLOADS.glob("*.json")):
        for schema_id in (EXPERIENCE_EVENT, PROFILE):
            attributes = {"schemaRef": schema_id}
            messages.append(Message(path.read_bytes(), attributes, path.name, READ_TIME_US, READ_TIME_US))
    return messages


def _containers(node, trail=()) -> Iterator[tuple]:
    """Every (container, key or index) in ``node``, depth first."""
    if type(node) is dict:
        for key, value in node.items():
            yield node, key
            yield from _containers(value)
    elif type(node) is list:
        for position, value in enumerate(node):
            yield node, position
            yield from _containers(value)


def _mutate(entity: dict, rng: random.Random) -> dict:
    entity = copy.deepcopy(entity)
    for _ in range(rng.randint(1, 3)):
        places = list(_containers(entity))
        if not places:
            break
        container, key = rng.choice(places)
        operation = rng.randrange(6)
        if operation == 0 and type(container) is dict:
            del container[key]
        elif operation == 1 and type(container) is dict and type(key) is str:
            # The same field under another name: its compatibility or storage name, beside or instead of it.
            other = rng.choice(["xdm:" + key, "@id" if key == "_id" else storage_name(key), key.removeprefix("xdm:")])
            container[other] = copy.deepcopy(container[key])
            if rng.random() < 0.5 and other != key:
                del container[key]
        elif operation == 2 and type(container) is dict:
            container[rng.choice(UNKNOWN_KEYS)] = copy.deepcopy(rng.choice(REPLACEMENTS))
        elif operation == 3 and type(container) is list:
            container.append(copy.deepcopy(container[key]))
        else:
            container[key] = copy.deepcopy(rng.choice(REPLACEMENTS))
    return entity


def verdict_lines() -> Iterator[str]:
    """One JSON line per verdict of the corpus (see the module docstring)."""
    registry = SchemaRegistry.load()
    sample = _sample_messages()
    yield from _lines_of_message_outputs(sample, registry)
    yield from _lines_of_message_outputs(_payload_messages(), registry)
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "constrained.json").write_text(json.dumps(CONSTRAINED_SCHEMA), encoding="utf-8")
        constrained = SchemaRegistry.load(folder).get(CONSTRAINED)
    entities = {}
    for message in sample:
        for decoded in decode_message(message, registry.avro_schema_for):
            if not isinstance(decoded, FailedRecord) and type(decoded.entity) is dict:
                key = json.dumps(decoded.entity, sort_keys=True)
                entities.setdefault(key, (decoded.schema_id, decoded.entity, decoded.message.publish_time_us))
    rng = random.Random(14)
    for number, (schema_id, entity, ingest_us) in enumerate(list(entities.values())[:MUTATED_ENTITIES]):
        schema = registry.get(schema_id)
        if schema is None:
            continue
        if schema_id == EXPERIENCE_EVENT and number % 2 == 0:
            schema, entity = constrained, {**entity, "_tenant": copy.deepcopy(TENANT_VALUE)}
        for mutation in range(MUTATIONS_PER_ENTITY):
            policy = FEW_ERRORS if mutation == 0 else ValidationPolicy()
            normalised, errors = validate_entity(_mutate(entity, rng), schema, ingest_us, policy)
            yield _line("failed", errors) if errors else _line("valid", normalised)


def fingerprint() -> dict:
    digest = hashlib.sha256()
    count = 0
    for line in verdict_lines():
        digest.update(line.encode() + b"\n")
        count += 1
    return {"count": count, "sha256": digest.hexdigest()}


def test_validation_verdicts_are_as_recorded():
    assert fingerprint() == json.loads(RECORDED.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write the current fingerprint as the recorded one")
    args = parser.parse_args()
    found = fingerprint()
    if args.record:
        RECORDED.write_text(json.dumps(found, indent=2, sort_keys=True) + "\n")
    print(json.dumps(found, sort_keys=True))


if __name__ == "__main__":
    main()
