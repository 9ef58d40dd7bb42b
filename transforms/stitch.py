"""StitchIdentities: valid records in, the same records with their person, and identity changes, out.

Input: ``PCollection[ValidRecord]``. Outputs (:class:`StitchResult`): ``records``, every input record, those of
identity-enabled datasets with ``person_id`` set (``None`` when a record carries no usable identity); ``changes``,
``PCollection[IdentityChange]``: identities rejected by normalisation (``rejected``, with their ``IDENTITY.*``
code) and the merges, splits, removed links and quarantines the batch caused.

Records are stitched a batch at a time (up to ``batch_size``, and whatever a bundle holds when it ends): their
identities are extracted and normalised (:mod:`transforms.identity_namespaces`), the batch's observations go to the
store in one round trip (:mod:`transforms.identity_store`), which returns the facts of the touched components before
and after; both are resolved by the linking rules (:mod:`transforms.identity_graph`), each record takes the person of
its highest-priority identity, and the difference between the two resolutions is reported as changes, stamped with
the ingestion time of their cause (the batch's latest record with identities). The store logs a batch that changes the
graph with its facts; the changes of logged batches whose cause is in a batch are told again (a run that died before
the lake had them left them there), and the lake keeps each change once. A record's
time is its own (event ``timestamp``, a profile's ``extSourceSystemAudit.lastUpdatedDate``), else its ingestion time.

Metrics (namespace ``profilestream``): ``stitched``, ``identities_rejected`` and ``identity_changes.<kind>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from schemas.registry import SchemaRegistry
from transforms.identity_graph import GraphRules, changes, record_person, resolve
from transforms.identity_model import Identity, IdentityChange, LoggedBatch, Observation, Stamp
from transforms.identity_namespaces import IdentityRules, NamespaceRegistry, extract_identities, record_time_us
from transforms.identity_store import IdentityStore, open_identity_store
from transforms.metrics import counter
from transforms.records import ValidRecord
from transforms.store_outages import patient

REJECTED = "rejected"
_CHANGES = "changes"


class StitchResult(NamedTuple):
    records: beam.PCollection
    changes: beam.PCollection


@dataclasses.dataclass(frozen=True)
class StitchSettings:
    """Everything stitching needs besides the store: namespaces, normalisation rules and linking rules."""

    namespaces: NamespaceRegistry
    rules: IdentityRules
    graph: GraphRules


@dataclasses.dataclass(frozen=True)
class RecordIdentities:
    """A record's normalised identities, its time for linking, and the identities normalisation rejected."""

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
    rejected = tuple(_rejected_change(rejection, stamp) for rejection in extraction.rejections)
    return RecordIdentities(tuple(extraction.identities), stamp, rejected)


def link_batch(
    store: IdentityStore, graph: GraphRules, batch: Sequence[RecordIdentities]
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


class _StitchFn(beam.DoFn):
    def __init__(self, registry: SchemaRegistry, store_url: str, settings: StitchSettings, batch_size: int):
        self._registry = registry
        self._store_url = store_url
        self._settings = settings
        self._batch_size = batch_size
        self._store = None
        self._pending: list[tuple[ValidRecord, RecordIdentities, Any, Any]] = []
        self._stitched = counter("stitched")
        self._rejected = counter("identities_rejected")

    def setup(self) -> None:
        self._store = patient(open_identity_store, self._store_url, "identity store")

    def teardown(self) -> None:
        if self._store is not None:
            self._store.close()

    def start_bundle(self) -> None:
        self._pending = []

    def process(self, record: ValidRecord, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        found = record_identities(record, self._registry, self._settings)
        if found is None:
            yield record
            return
        for rejected in found.rejected:
            self._rejected.inc()
            yield beam.pvalue.TaggedOutput(_CHANGES, rejected)
        self._pending.append((record, found, timestamp, window))
        if len(self._pending) >= self._batch_size:
            yield from self._flush()

    def finish_bundle(self):
        yield from self._flush()

    def _flush(self):
        pending, self._pending = self._pending, []
        if not pending:
            return
        batch_changes, persons = link_batch(self._store, self._settings.graph, [found for _, found, _, _ in pending])
        # A change is stamped with its cause's ingestion time, which a rerun telling it again finds in its batch.
        timestamp_of = {found.stamp.message_id: timestamp for _, found, timestamp, _ in pending}
        for change in batch_changes:
            counter(f"identity_changes.{change.kind}").inc()
            timestamp = timestamp_of[change.message_id]
            yield beam.pvalue.TaggedOutput(_CHANGES, WindowedValue(change, timestamp, (GlobalWindow(),)))
        for (record, _, timestamp, window), person in zip(pending, persons, strict=True):
            self._stitched.inc()
            yield WindowedValue(dataclasses.replace(record, person_id=person), timestamp, (window,))


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


class StitchIdentities(beam.PTransform):
    """Gives each record of an identity-enabled dataset its person; see the module docstring."""

    def __init__(
        self, registry: SchemaRegistry, store_url: str, settings: StitchSettings, *, batch_size: int = 500
    ) -> None:
        super().__init__()
        self._registry = registry
        self._store_url = store_url
        self._settings = settings
        self._batch_size = batch_size

    def expand(self, records: beam.PCollection) -> StitchResult:
        outputs = records | "LinkIdentities" >> beam.ParDo(
            _StitchFn(self._registry, self._store_url, self._settings, self._batch_size)
        ).with_outputs(_CHANGES, main="records")
        return StitchResult(records=outputs.records, changes=outputs[_CHANGES])
