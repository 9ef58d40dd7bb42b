"""Lake rows: what valid and failed records look like as rows of their lake datasets.

:func:`valid_row` turns a :class:`ValidRecord` into a row of its dataset (the entity's fields in runtime names, plus
``_message_id`` and ``_ingest_time``); :func:`failed_row` turns a :class:`FailedRecord` into a row of
``failed_records``, whose columns (:data:`FAILED_RECORDS_SCHEMA`) keep everything needed to replay it: the original
``data`` bytes, ``attributes``, ``message_id`` and ``publish_time``, with the ``errors`` and the ``stage`` that
failed; the read time is left out, since a replay must write the same files. Of a message too large, ``data`` is the
first 64 KiB and ``attributes`` say the whole payload's length and SHA-256 (:mod:`messages.decoding`).
:func:`lake_schemas` gives every dataset's Arrow schema, derived from the registry.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from core.records import FailedRecord, LakeRow, ValidRecord
from identity.model import IdentityChange
from schemas.arrow import LINEAGE_FIELDS, TIMESTAMP
from schemas.registry import SchemaRegistry

FAILED_RECORDS = "failed_records"
IDENTITY_CHANGES = "identity_changes"
IDENTITY_CHANGES_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),
        pa.field("identities", pa.list_(pa.string())),
        pa.field("persons_before", pa.list_(pa.string())),
        pa.field("persons_after", pa.list_(pa.string())),
        pa.field("rule", pa.string()),
        pa.field("message_id", pa.string(), nullable=False),
        pa.field("record_time", TIMESTAMP),
        pa.field("detail", pa.string()),
        *LINEAGE_FIELDS,
    ]
)
FAILED_RECORDS_SCHEMA = pa.schema(
    [
        pa.field("data", pa.binary(), nullable=False),
        pa.field("attributes", pa.map_(pa.string(), pa.string())),
        pa.field("message_id", pa.string(), nullable=False),
        pa.field("publish_time", TIMESTAMP, nullable=False),
        pa.field("entity_index", pa.int32()),
        pa.field("schema_id", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field(
            "errors",
            pa.list_(pa.struct([("code", pa.string()), ("path", pa.string()), ("message", pa.string())])),
        ),
        *LINEAGE_FIELDS,
    ]
)


def lake_schemas(registry: SchemaRegistry) -> dict[str, pa.Schema]:
    """The Arrow schema of every dataset the pipeline writes."""
    schemas = {schema.dataset.name: schema.arrow_schema for schema in registry.schemas}
    schemas[FAILED_RECORDS] = FAILED_RECORDS_SCHEMA
    schemas[IDENTITY_CHANGES] = IDENTITY_CHANGES_SCHEMA
    return schemas


def valid_row(record: ValidRecord) -> LakeRow:
    row = dict(record.entity)
    row["_message_id"] = record.message_id
    row["_ingest_time"] = record.publish_time_us
    row["_person_id"] = record.person_id
    return LakeRow(record.dataset, record.dedupe_key, record.publish_time_us, record.message_id, row)


def failed_row(record: FailedRecord) -> LakeRow:
    row = {
        "data": record.data,
        "attributes": dict(record.attributes),
        "message_id": record.message_id,
        "publish_time": record.publish_time_us,
        "entity_index": record.index,
        "schema_id": record.schema_id,
        "stage": record.stage,
        "errors": [{"code": error.code, "path": error.path, "message": error.message} for error in record.errors],
        "_message_id": record.message_id,
        "_ingest_time": record.publish_time_us,
    }
    # Only a redelivery (same message, position and bytes) is the same failure; bare replay lines from two files can
    # share a line-number message id, and the entries of one failed batch share theirs when replayed.
    digest = hashlib.blake2b(record.data, digest_size=12).hexdigest()
    dedupe_key = f"{record.message_id}#{record.index if record.index is not None else ''}#{digest}"
    return LakeRow(FAILED_RECORDS, dedupe_key, record.publish_time_us, record.message_id, row)


def change_row(change: IdentityChange, ingest_time_us: int) -> LakeRow:
    """An identity change as a row of ``identity_changes``; ``ingest_time_us`` is its record's ingestion time."""
    row = {
        "kind": change.kind,
        "identities": list(change.identities),
        "persons_before": list(change.persons_before),
        "persons_after": list(change.persons_after),
        "rule": change.rule,
        "message_id": change.message_id,
        "record_time": change.time_us,
        "detail": change.detail,
        "_message_id": change.message_id,
        "_ingest_time": ingest_time_us,
    }
    dedupe_key = "|".join((change.kind, change.message_id, change.rule, *change.identities))
    return LakeRow(IDENTITY_CHANGES, dedupe_key, ingest_time_us, change.message_id, row)
