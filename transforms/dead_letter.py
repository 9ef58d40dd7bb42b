"""PublishFailedRecords: failed records in, each published to a Pub/Sub dead-letter topic; nothing out.

Every failed record still goes to the lake's ``failed_records``; this is the same record on a topic, for systems that
watch failures as they happen (alerting, a repair service that fixes and republishes). A published message's data is
the record's original bytes (the message, or one entry of a batch envelope; of a message too large, its first 64 KiB,
with ``profilestream.originalBytes`` and ``profilestream.originalSha256`` among its attributes), and its attributes
are the original message's attributes plus:

==================================  ==================================================================================
``profilestream.errorCode``         the first error's stable code (``DECODE.NOT_JSON``, ``SCHEMA.REQUIRED``, ...)
``profilestream.errorPath``         the first error's JSON pointer into the entity
``profilestream.errors``            every error as a JSON list of ``{"code", "path", "message"}`` (cut to 1,024 bytes)
``profilestream.stage``             ``decode`` or ``validate``
``profilestream.messageId``         the original message's id
``profilestream.publishTimeUs``     the original message's publish time, microseconds since the epoch
``profilestream.entityIndex``       the entry's position in a batch envelope (absent for a whole message)
==================================  ==================================================================================

A bundle waits for every publish it started before it finishes, so a failed publish fails the bundle and the runner
retries it, rather than the record slipping away. Counter: ``dead_lettered``.
"""

from __future__ import annotations

import json

import apache_beam as beam

from core.records import FailedRecord
from transforms.metrics import DEAD_LETTERED, counter

ATTRIBUTE_PREFIX = "profilestream."
# Pub/Sub limits an attribute value to 1,024 bytes.
MAX_ATTRIBUTE_BYTES = 1024
PUBLISH_TIMEOUT_S = 60.0


def dead_letter_attributes(record: FailedRecord) -> dict[str, str]:
    """The attributes a failed record is published with (see the module docstring)."""
    errors = [{"code": error.code, "path": error.path, "message": error.message} for error in record.errors]
    attributes = {
        **record.attributes,
        f"{ATTRIBUTE_PREFIX}errorCode": errors[0]["code"] if errors else "",
        f"{ATTRIBUTE_PREFIX}errorPath": errors[0]["path"] if errors else "",
        f"{ATTRIBUTE_PREFIX}errors": _cut(json.dumps(errors, ensure_ascii=False)),
        f"{ATTRIBUTE_PREFIX}stage": record.stage,
        f"{ATTRIBUTE_PREFIX}messageId": record.message_id,
        f"{ATTRIBUTE_PREFIX}publishTimeUs": str(record.publish_time_us),
    }
    if record.index is not None:
        attributes[f"{ATTRIBUTE_PREFIX}entityIndex"] = str(record.index)
    return attributes


def _cut(text: str) -> str:
    return text.encode()[:MAX_ATTRIBUTE_BYTES].decode(errors="ignore")


class _PublishFn(beam.DoFn):
    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._published = counter(DEAD_LETTERED)

    def setup(self) -> None:
        from google.cloud import pubsub_v1

        self._publisher = pubsub_v1.PublisherClient()

    def start_bundle(self) -> None:
        self._pending = []

    def process(self, record: FailedRecord) -> None:
        self._pending.append(self._publisher.publish(self._topic, record.data, **dead_letter_attributes(record)))

    def finish_bundle(self) -> None:
        for future in self._pending:
            future.result(timeout=PUBLISH_TIMEOUT_S)
        self._published.inc(len(self._pending))
        self._pending = []

    def teardown(self) -> None:
        publisher = getattr(self, "_publisher", None)
        if publisher is not None:
            publisher.stop()


class PublishFailedRecords(beam.PTransform):
    """Publishes each failed record to ``projects/P/topics/T``; see the module docstring."""

    def __init__(self, topic: str) -> None:
        super().__init__()
        self._topic = topic

    def expand(self, failed: beam.PCollection) -> beam.PDone:
        _ = failed | "Publish" >> beam.ParDo(_PublishFn(self._topic))
        return beam.pvalue.PDone(failed.pipeline)
