"""The typed records that cross pipeline stages.

A message enters as a :class:`Message` (from Pub/Sub or a replay), decodes into one :class:`DecodedEntity` per XDM
entity, and leaves validation either as a :class:`ValidRecord` or as a :class:`FailedRecord` that keeps the original
bytes and every :class:`RecordError`. Times are integer microseconds since the Unix epoch, UTC, so that records
compare and encode deterministically on every runner.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

REPLAY_ERROR_ATTRIBUTE = "profilestream.replayError"
"""Attribute set on a replayed message that could not be read faithfully; its value is the error code."""
ORIGINAL_BYTES_ATTRIBUTE = "profilestream.originalBytes"
"""Attribute of a message or failed record whose ``data`` keeps only a prefix: the whole payload's length in bytes."""
ORIGINAL_SHA256_ATTRIBUTE = "profilestream.originalSha256"
"""Attribute beside :data:`ORIGINAL_BYTES_ATTRIBUTE`: the whole payload's SHA-256, in lowercase hex."""


@dataclasses.dataclass(frozen=True)
class Message:
    """One Pub/Sub message as read: payload bytes, string attributes, id, publish time and read time."""

    data: bytes
    attributes: Mapping[str, str]
    message_id: str
    publish_time_us: int
    read_time_us: int


@dataclasses.dataclass(frozen=True)
class RecordError:
    """One violation: a stable dotted ``code``, a JSON pointer ``path`` into the entity and a human ``message``."""

    code: str
    path: str
    message: str


@dataclasses.dataclass(frozen=True)
class DecodedEntity:
    """One XDM entity taken out of a message, not yet validated.

    ``entity`` is the parsed JSON object (any key names, compatibility or runtime) or, for ``avro/binary`` content,
    the record fastavro decoded. ``index`` is the entity's position in a batch envelope (0 otherwise);
    ``raw`` is the bytes that stand for this entity alone in a failed record.
    """

    message: Message
    index: int
    schema_id: str | None
    dataset_id: str | None
    entity: Any
    raw: bytes


@dataclasses.dataclass(frozen=True)
class ValidRecord:
    """An entity that passed validation, in runtime names, bound for ``dataset``; ``person_id`` once stitched.

    ``identities`` are the normalised identities stitching found in it (:class:`identity.model.Identity` values,
    highest priority first), carried so that no later stage extracts them again; ``None`` until stitched, and for a
    dataset that is not identity-enabled.
    """

    dataset: str
    schema_id: str
    entity: Mapping[str, Any]
    message_id: str
    index: int
    publish_time_us: int
    read_time_us: int
    person_id: str | None = None
    identities: tuple[Any, ...] | None = None

    @property
    def dedupe_key(self) -> str:
        """The lake's duplicate key: the entity's ``_id``, else its message id and position."""
        entity_id = self.entity.get("_id")
        return entity_id if entity_id is not None else f"{self.message_id}#{self.index}"


@dataclasses.dataclass(frozen=True)
class FailedRecord:
    """A message or entity that could not be ingested, with the bytes needed to replay it once fixed.

    ``stage`` is where it failed (``decode`` or ``validate``); ``index`` is the entity's position in a batch envelope,
    ``None`` when the whole message failed before it could be split.
    """

    data: bytes
    attributes: Mapping[str, str]
    message_id: str
    publish_time_us: int
    read_time_us: int
    errors: tuple[RecordError, ...]
    stage: str
    index: int | None = None
    schema_id: str | None = None

    @classmethod
    def of_message(cls, message: Message, stage: str, errors: tuple[RecordError, ...]) -> FailedRecord:
        return cls(
            data=message.data,
            attributes=message.attributes,
            message_id=message.message_id,
            publish_time_us=message.publish_time_us,
            read_time_us=message.read_time_us,
            errors=errors,
            stage=stage,
        )

    @classmethod
    def of_entity(cls, decoded: DecodedEntity, stage: str, errors: tuple[RecordError, ...]) -> FailedRecord:
        message = decoded.message
        return cls(
            data=decoded.raw,
            attributes=message.attributes,
            message_id=message.message_id,
            publish_time_us=message.publish_time_us,
            read_time_us=message.read_time_us,
            errors=errors,
            stage=stage,
            index=decoded.index,
            schema_id=decoded.schema_id,
        )


@dataclasses.dataclass(frozen=True)
class LakeRow:
    """One row bound for a lake dataset.

    ``row`` maps column names (storage names, see ``schemas.names``) to values ready for Arrow, including
    ``_message_id`` and ``_ingest_time``. Rows that share a ``dedupe_key`` inside one commit window are written once:
    the one with the earliest ``publish_time_us``, then the lowest ``message_id``. ``dedupe_key`` ``None`` means the
    row is never deduplicated.
    """

    dataset: str
    dedupe_key: str | None
    publish_time_us: int
    message_id: str
    row: Mapping[str, Any]
