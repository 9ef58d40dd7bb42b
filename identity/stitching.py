"""Stitching as plain Python: a record's identities, and a batch of them linked in the identity store.

:func:`record_identities` takes a :class:`~core.records.ValidRecord` and the :class:`StitchSettings` and gives
its normalised identities, its time for linking and the identities normalisation rejected (as ``rejected`` changes).
:func:`link_batch` observes a batch of them in an :class:`~stores.identity.IdentityStore` (logged with its
cause) and gives the changes to tell and each record's person; :func:`logged_changes` tells a logged batch's changes
again. :mod:`transforms.stitch` is the Beam stage around them; the lookups and benchmarks use them without Beam.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import NamedTuple, Protocol

from core.records import ValidRecord
from identity.graph import GraphRules, changes, record_person, resolve
from identity.model import GraphFacts, Identity, IdentityChange, LoggedBatch, Observation, Stamp
from identity.namespaces import IdentityRules, NamespaceRegistry, extract_identities, record_time_us
from schemas.registry import SchemaRegistry

REJECTED = "rejected"


class IdentityLog(Protocol):
    """What linking asks of an identity store (:class:`stores.identity.IdentityStore` is one): the batches logged
    with some causes, and adding a batch's facts with its log entry."""

    def logged(self, message_ids: Iterable[str]) -> list[LoggedBatch]: ...

    def observe_and_log(
        self, observations: Sequence[Observation], cause: Stamp | None
    ) -> tuple[GraphFacts, GraphFacts, str | None]: ...

    def discard(self, entry: str) -> None: ...


@dataclasses.dataclass(frozen=True)
class StitchSettings:
    """Everything stitching needs besides the store: namespaces, normalisation rules and linking rules."""

    namespaces: NamespaceRegistry
    rules: IdentityRules
    graph: GraphRules


class RecordIdentities(NamedTuple):
    """A record's normalised identities, its time for linking, and the identities normalisation rejected (a
    NamedTuple: one is made for every record, in C)."""

    identities: tuple[Identity, ...]
    stamp: Stamp
    rejected: tuple[IdentityChange, ...]


def record_identities(
    record: ValidRecord, registry: SchemaRegistry, settings: StitchSettings
) -> RecordIdentities | None:
    """The identities ``record`` links, or None when its dataset is not identity-enabled."""
    dataset = registry.datasets.get(record.dataset)
    if dataset is None or not dataset.identity:
        return None
    extraction = extract_identities(record.entity, settings.namespaces, settings.rules)
    schema = registry.get(record.schema_id)
    stamp = Stamp(record_time_us(record.entity, schema.class_id, record.publish_time_us), record.message_id)
    rejected = tuple([_rejected_change(rejection, stamp) for rejection in extraction.rejections])
    return RecordIdentities(extraction.identities, stamp, rejected)


def link_batch(
    store: IdentityLog, graph: GraphRules, batch: Sequence[RecordIdentities]
) -> tuple[list[IdentityChange], list[str | None]]:
    """Observes a batch's identities in ``store``; returns the changes to tell and each record's person, in batch
    order.

    The changes are those the batch caused (stamped with its latest record that has identities, its cause), and
    those of every batch an earlier run logged with one of this batch's records as its cause: that run may have
    died before the lake had them (the lake drops the ones it holds). Two store round trips: the log, then the
    facts, logged with them.
    """
    observations = [Observation(found.identities, found.stamp) for found in batch if found.identities]
    if not observations:
        return [], [None] * len(batch)
    told = [
        change
        for logged in store.logged({found.stamp.message_id for found in batch})
        for change in logged_changes(logged, graph)
    ]
    cause = max(observation.stamp for observation in observations)
    before, after, entry = store.observe_and_log(observations, cause)
    resolved_before, resolved_after = resolve(before, graph), resolve(after, graph)
    persons = [record_person(found.identities, resolved_after, graph) for found in batch]
    caused = changes(resolved_before, resolved_after, cause)
    if entry is not None and not caused:
        store.discard(entry)
    return [*told, *caused], persons


def logged_changes(logged: LoggedBatch, graph: GraphRules) -> list[IdentityChange]:
    """The changes a logged batch made to the graph, as they were told when it was observed."""
    before = resolve(logged.before, graph)
    return changes(before, resolve(logged.before.union(logged.batch), graph), logged.cause)


def _rejected_change(rejection, stamp: Stamp) -> IdentityChange:
    return IdentityChange(
        kind=REJECTED,
        identities=(f"{rejection.namespace_key}:{rejection.raw_id}",),
        persons_before=(),
        persons_after=(),
        rule=rejection.code,
        message_id=stamp.message_id,
        time_us=stamp.time_us,
        detail=rejection.message,
    )
