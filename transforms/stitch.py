"""StitchIdentities: valid records in, the same records with their person, and identity changes, out.

Input: ``PCollection[ValidRecord]``. Outputs (:class:`StitchResult`): ``records``, every input record, those of
identity-enabled datasets with ``person_id`` set (``None`` when a record carries no usable identity) and
``identities``, the normalised identities found in it, for the stages after; ``changes``,
``PCollection[IdentityChange]``: identities rejected by normalisation (``rejected``, with their ``IDENTITY.*``
code) and the merges, splits, removed links and quarantines the batch caused.

With a ``suppression`` (:class:`privacy.suppression.Suppression`), a record carrying an identity on the suppression
list is dropped before anything else sees it: it is not linked in the identity store, nor merged into a profile, nor
written to the lake (whose rows come from ``records``), and the identities it had rejected are not told. Without one,
stitching costs what it did.

Records are stitched a batch at a time (up to ``batch_size``, and whatever a bundle holds when it ends): their
identities are extracted and normalised (:mod:`identity.namespaces`), the batch's observations go to the
store in one round trip (:mod:`stores.identity`), which returns the facts of the touched components before
and after; both are resolved by the linking rules (:mod:`identity.graph`), each record takes the person of
its highest-priority identity, and the difference between the two resolutions is reported as changes, stamped with
the ingestion time of their cause (the batch's latest record with identities). The store logs a batch that changes the
graph with its facts; the changes of logged batches whose cause is in a batch are told again (a run that died before
the lake had them left them there), and the lake keeps each change once. A record's
time is its own (event ``timestamp``, a profile's ``extSourceSystemAudit.lastUpdatedDate``), else its ingestion time.

The logic, without Beam, is :mod:`identity.stitching`'s.

Metrics (namespace ``profilestream``): ``stitched``, ``identities_rejected``, ``identity_changes.<kind>`` and
``suppressed``, the records dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from core.records import ValidRecord
from identity.stitching import RecordIdentities, StitchSettings, link_batch, record_identities
from privacy.suppression import Suppression, SuppressionCheck
from schemas.registry import SchemaRegistry
from stores.identity import IdentityStore
from stores.opening import StoreHandler
from transforms.metrics import IDENTITIES_REJECTED, STITCHED, SUPPRESSED, counter, identity_changes_of
from transforms.shared_registry import SharedRegistry, shared_registry

_CHANGES = "changes"


class StitchResult(NamedTuple):
    records: beam.PCollection
    changes: beam.PCollection


class _StitchFn(beam.DoFn):
    def __init__(
        self,
        registry: SharedRegistry,
        store: StoreHandler[IdentityStore],
        settings: StitchSettings,
        batch_size: int,
        suppression: Suppression | None,
    ):
        self._registry = registry
        self._store_handler = store
        self._settings = settings
        self._batch_size = batch_size
        self._suppression = suppression
        self._store = None
        self._suppression_check: SuppressionCheck | None = None
        self._pending: list[tuple[ValidRecord, RecordIdentities, Any, Any]] = []
        self._stitched = counter(STITCHED)
        self._rejected = counter(IDENTITIES_REJECTED)
        self._suppressed = counter(SUPPRESSED)

    def setup(self) -> None:
        self._store = self._store_handler.open()
        if self._suppression is not None:
            self._suppression_check = self._suppression.open()

    def teardown(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._suppression_check is not None:
            self._suppression_check.close()

    def start_bundle(self) -> None:
        self._pending = []

    def process(self, record: ValidRecord, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        found = record_identities(record, self._registry.load(), self._settings)
        if found is None:
            yield record
            return
        if self._suppression_check is not None and self._suppression_check.suppressed(found.identities):
            self._suppressed.inc()
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
            counter(identity_changes_of(change.kind)).inc()
            timestamp = timestamp_of[change.message_id]
            yield beam.pvalue.TaggedOutput(_CHANGES, WindowedValue(change, timestamp, (GlobalWindow(),)))
        self._stitched.inc(len(pending))
        for (record, found, timestamp, window), person in zip(pending, persons, strict=True):
            stitched = dataclasses.replace(record, person_id=person, identities=found.identities)
            yield WindowedValue(stitched, timestamp, (window,))


class StitchIdentities(beam.PTransform):
    """Gives each record of an identity-enabled dataset its person; see the module docstring.

    ``store`` is the identity store's handler (:func:`stores.opening.identity_store_handler`), opened on the worker;
    ``suppression``, when given, the suppression list records are checked against, opened there too.
    """

    def __init__(
        self,
        registry: SchemaRegistry | SharedRegistry,
        store: StoreHandler[IdentityStore],
        settings: StitchSettings,
        *,
        batch_size: int = 500,
        suppression: Suppression | None = None,
    ) -> None:
        super().__init__()
        self._registry = shared_registry(registry)
        self._store = store
        self._settings = settings
        self._batch_size = batch_size
        self._suppression = suppression

    def expand(self, records: beam.PCollection) -> StitchResult:
        outputs = records | "LinkIdentities" >> beam.ParDo(
            _StitchFn(self._registry, self._store, self._settings, self._batch_size, self._suppression)
        ).with_outputs(_CHANGES, main="records")
        return StitchResult(records=outputs.records, changes=outputs[_CHANGES])
