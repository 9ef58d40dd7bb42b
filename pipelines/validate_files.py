"""``profilestream validate``: check message files without running a pipeline.

A FILE is one JSON message or JSONL, a message per line (a Pub/Sub REST-form line or a bare payload, as a replay
reads it). Each XDM entity gives one :class:`Verdict`, numbered in file order (a batch envelope's messages count one
each). *Ingestion* mode applies every rule the pipeline applies, through the same decode and validation functions;
*conformance* mode checks plain JSON Schema conformance against exactly the XDM component ``--schema`` names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

from core.clock import wall_clock_us
from core.records import DecodedEntity, FailedRecord, Message, RecordError
from messages.decoding import decode_message, parse_json
from messages.replay_files import read_replay_file
from schemas.conformance import conformance_errors
from schemas.registry import SchemaRegistry
from schemas.validation import DEFAULT_POLICY, ValidationPolicy, validate_decoded

SCHEMA_REF = "schemaRef"


@dataclasses.dataclass(frozen=True)
class Verdict:
    file: str
    index: int
    valid: bool
    schema: str | None
    errors: tuple[RecordError, ...]

    def as_json(self) -> dict:
        return {
            "file": self.file,
            "index": self.index,
            "valid": self.valid,
            "schema": self.schema,
            "errors": [dataclasses.asdict(error) for error in self.errors],
        }


def validate_file(
    path: str,
    registry: SchemaRegistry,
    *,
    schema_id: str | None = None,
    conformance: bool = False,
    policy: ValidationPolicy = DEFAULT_POLICY,
    max_message_bytes: int = 1024 * 1024,
) -> Iterator[Verdict]:
    """One verdict per XDM entity in the file, in file order."""
    index = 0
    for message in _messages(path, schema_id):
        for outcome in decode_message(message, registry.avro_schema_for, max_message_bytes=max_message_bytes):
            if isinstance(outcome, FailedRecord):
                errors, schema = outcome.errors, outcome.schema_id or schema_id
            elif conformance:
                errors, schema = tuple(conformance_errors(outcome.entity, schema_id)), schema_id
            else:
                errors, schema = _ingestion_errors(outcome, registry, policy), outcome.schema_id
            yield Verdict(path, index, not errors, schema, tuple(errors))
            index += 1


def _ingestion_errors(decoded: DecodedEntity, registry: SchemaRegistry, policy: ValidationPolicy) -> tuple:
    outcome = validate_decoded(decoded, registry, policy)
    return outcome.errors if isinstance(outcome, FailedRecord) else ()


def _messages(path: str, schema_id: str | None) -> Iterator[Message]:
    """The file as one message when it is one JSON value, else as JSONL; ``schema_id`` names bare entities."""
    data = Path(path).read_bytes()
    attributes = {SCHEMA_REF: schema_id} if schema_id is not None else {}
    try:
        parse_json(data)
    except ValueError:
        messages = read_replay_file(path, clock=wall_clock_us)
    else:
        now = wall_clock_us()
        messages = iter([Message(data, {}, "1", now, now)])
    for message in messages:
        yield dataclasses.replace(message, attributes={**attributes, **message.attributes})
