"""MergeProfiles: stitched records and identity changes in, merged profiles in the profile store out.

Input: ``records``, ``PCollection[ValidRecord]`` with ``person_id`` set by StitchIdentities, and ``changes``,
``PCollection[IdentityChange]``. Only records of profile-enabled datasets (README, "Schemas and datasets") with a person
are merged; the rest are ignored here (they still reach the lake). Output: one :class:`ProfileFlush` per flush (the
persons it applied records for, how many each, and the views it wrote), for counting.

Updates are keyed by a shard of their person id (``shards`` of them, 16 by default) and buffered in state. A shard's
buffer is flushed to the store

- ``flush_interval_s`` of processing time after its first update (1 s by default: freshness),
- as soon as it holds ``max_buffered`` updates (size), and
- when the watermark reaches the end of input: so the final store contents never depend on processing time, and a
  runner without processing-time timers (Prism, and every runner in batch) writes the same profiles.

Why shards rather than one key per person: a flush costs a timer firing and a few store round trips whatever it
holds, and at a steady stream most persons have one new record a second; keyed by person, the local runner spent its
time on flushes of one record and fell behind at a few hundred events a second. A shard's flush writes all its persons
in one store write, and a person's updates still all meet in one buffer.

A flush reads the identities of its records from the identity store, every fragment of the persons they now belong
to from the profile store, applies the buffered records to their fragments (:mod:`profiles.model`:
order-independent and idempotent, so a replay or a retried bundle changes nothing), and writes the fragments, each
person's merged view, the index of their identities and, after a merge or a rename, redirects from the retired person
ids, in one store write. A merge, a rename or a split reported by StitchIdentities flushes every person it names, so
each side's view is rebuilt from its own fragments.

Metrics (namespace ``profilestream``): ``profiles_written``; the freshness of each record's write, from the time the
pipeline read it to the store write, as the distribution ``profile_freshness_ms`` and as bucket counters
``profile_freshness_ms.le_<bound>`` from which the run summary takes p50, p95 and p99.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import apache_beam as beam
from apache_beam import typehints
from apache_beam.coders import PickleCoder, VarIntCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp

from core.clock import wall_clock_us
from core.records import ValidRecord
from identity.graph import resolve
from identity.model import Identity, IdentityChange
from identity.namespaces import extract_identities, record_time_us
from identity.stitching import StitchSettings
from profiles import model as profile_model
from schemas.registry import SchemaRegistry
from stores.identity import IdentityStore, open_identity_store
from stores.outages import patient
from stores.profiles import ProfileStore, ProfileWrite, ProfileWriteConflict, open_profile_store
from transforms.metrics import NAMESPACE, counter

FRESHNESS_BUCKETS_MS = (10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000)
FRESHNESS = "profile_freshness_ms"
FRAGMENT_CACHE_SIZE = 20_000
CONFLICT_ATTEMPTS = 50
# The changes after which a person id answers with another's profile.
RETIRING_CHANGES = ("merge", "rename")


@dataclasses.dataclass(frozen=True)
class ProfileFlush:
    """One flush: the persons it applied records for (``(person id, records)`` pairs, as keyed when stitched, sorted),
    and the views it wrote."""

    persons: tuple[tuple[str, int], ...]
    views: int


@dataclasses.dataclass(frozen=True)
class ProfileSettings:
    """How profiles are merged: the policy, the datasets that feed them, and the buffering."""

    policy: profile_model.MergePolicy = dataclasses.field(default_factory=profile_model.TimestampOrdered)
    limits: profile_model.ProfileLimits = profile_model.DEFAULT_LIMITS
    flush_interval_s: float = 1.0
    max_buffered: int = 500
    shards: int = 16


def freshness_bucket(freshness_ms: float) -> str:
    """The counter a write of this freshness is counted under (the smallest bound it does not exceed)."""
    for bound in FRESHNESS_BUCKETS_MS:
        if freshness_ms <= bound:
            return f"{FRESHNESS}.le_{bound}"
    return f"{FRESHNESS}.le_inf"


class _MergeProfilesFn(beam.DoFn):
    PENDING = BagStateSpec("pending", PickleCoder())
    COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())
    FLUSH_SOON = TimerSpec("flush_soon", TimeDomain.REAL_TIME)
    FLUSH_AT_END = TimerSpec("flush_at_end", TimeDomain.WATERMARK)

    def __init__(
        self,
        registry: SchemaRegistry,
        identity_store: str,
        profile_store: str,
        stitch: StitchSettings,
        settings: ProfileSettings,
        streaming: bool,
        clock: Callable[[], int],
    ) -> None:
        self._registry = registry
        self._identity_store_url = identity_store
        self._profile_store_url = profile_store
        self._stitch = stitch
        self._settings = settings
        self._streaming = streaming
        self._clock = clock
        self._writer: ProfileWriter | None = None
        self._written = counter("profiles_written")
        self._freshness = Metrics.distribution(NAMESPACE, FRESHNESS)

    def setup(self) -> None:
        self._writer = ProfileWriter(
            self._registry,
            patient(open_identity_store, self._identity_store_url, "identity store"),
            patient(open_profile_store, self._profile_store_url, "profile store"),
            self._stitch,
            self._settings,
            decoded=_decoded_fragments_of(self._profile_store_url),
        )

    def teardown(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def process(
        self,
        keyed: tuple[str, Any],
        pending=beam.DoFn.StateParam(PENDING),
        count=beam.DoFn.StateParam(COUNT),
        flush_soon=beam.DoFn.TimerParam(FLUSH_SOON),
        flush_at_end=beam.DoFn.TimerParam(FLUSH_AT_END),
    ):
        shard, update = keyed
        pending.add(update)
        buffered = (count.read() or 0) + 1
        count.write(buffered)
        if buffered == 1:
            flush_at_end.set(GlobalWindow().max_timestamp())
            if self._streaming:
                flush_soon.set(Timestamp(micros=self._clock()) + self._settings.flush_interval_s)
        if buffered >= self._settings.max_buffered:
            yield from self._flush(shard, pending, count)

    @on_timer(FLUSH_SOON)
    def on_flush_soon(
        self, key=beam.DoFn.KeyParam, pending=beam.DoFn.StateParam(PENDING), count=beam.DoFn.StateParam(COUNT)
    ):
        yield from self._flush(key, pending, count)

    @on_timer(FLUSH_AT_END)
    def on_flush_at_end(
        self,
        key=beam.DoFn.KeyParam,
        pending=beam.DoFn.StateParam(PENDING),
        count=beam.DoFn.StateParam(COUNT),
        flush_soon=beam.DoFn.TimerParam(FLUSH_SOON),
    ):
        # The end of input: nothing is left to flush soon, and a pending processing-time timer keeps Prism waiting
        # for it (the DirectRunner drops it).
        flush_soon.clear()
        yield from self._flush(key, pending, count)

    def _flush(self, _shard: int, pending, count):
        updates = list(pending.read())
        pending.clear()
        count.clear()
        if not updates:
            return
        records = [update for update in updates if isinstance(update, ValidRecord)]
        changes = [update for update in updates if isinstance(update, IdentityChange)]
        written = self._writer.write(records, changes)
        self._written.inc(written)
        persons = collections.Counter(record.person_id for record in records)
        yield ProfileFlush(tuple(sorted(persons.items())), written)
        now_us = self._clock()
        for record in records:
            freshness_ms = max(0, now_us - record.read_time_us) / 1000
            self._freshness.update(int(freshness_ms))
            counter(freshness_bucket(freshness_ms)).inc()


class _DecodedFragments:
    """The fragments this process last read or wrote, decoded, by key and bytes: a person's next flush reads back the
    bytes its last one wrote, and decoding them again was a sixth of the pipeline's time. A fragment is reused only
    when the store returns the very bytes it was decoded from, so a write from elsewhere is never missed. Shared by
    the stage's DoFn instances (the DirectRunner makes one per bundle) and their threads."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: collections.OrderedDict[str, tuple[bytes, profile_model.Fragment]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def fragment(self, key: str, data: bytes) -> profile_model.Fragment:
        with self._lock:
            held = self._entries.get(key)
            if held is not None and held[0] == data:
                self._entries.move_to_end(key)
                return held[1]
        fragment = profile_model.fragment_from_bytes(data)
        self.remember(key, data, fragment)
        return fragment

    def remember(self, key: str, data: bytes, fragment: profile_model.Fragment) -> None:
        with self._lock:
            self._entries[key] = (data, fragment)
            self._entries.move_to_end(key)
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)


_decoded_by_store: dict[str, _DecodedFragments] = {}
_decoded_lock = threading.Lock()


def _decoded_fragments_of(store_url: str) -> _DecodedFragments:
    with _decoded_lock:
        return _decoded_by_store.setdefault(store_url, _DecodedFragments(FRAGMENT_CACHE_SIZE))


class ProfileWriter:
    """Applies records and identity changes to the profile store: the work of one flush, without Beam.

    It owns the two stores it is given (``close`` closes them). ``decoded`` is the cache of decoded fragments to use;
    by default one of its own.
    """

    def __init__(
        self,
        registry: SchemaRegistry,
        identities: IdentityStore,
        profiles: ProfileStore,
        stitch: StitchSettings,
        settings: ProfileSettings,
        *,
        decoded: _DecodedFragments | None = None,
    ) -> None:
        self._registry = registry
        self._identities = identities
        self._profiles = profiles
        self._stitch = stitch
        self._settings = settings
        self._decoded = decoded or _DecodedFragments(FRAGMENT_CACHE_SIZE)
        self._datasets = [name for name, dataset in registry.datasets.items() if dataset.profile]
        self._conflicts = counter("profile_write_conflicts")

    def close(self) -> None:
        self._identities.close()
        self._profiles.close()

    def write(self, records: Sequence[ValidRecord], changes: Sequence[IdentityChange]) -> int:
        """Applies the records and rebuilds the view of every person they, or the merges and splits, now concern.

        A record carries the person it had when stitched; if that person has since been merged away, its records go
        to the survivor, the person its identities belong to now. Returns how many views it wrote.

        Another worker may write a fragment this write read: the store then refuses it, and it is computed again
        from what the store holds now (after a short random pause, up to ``CONFLICT_ATTEMPTS`` times).
        """
        attempt = 0
        while True:
            try:
                return self._write_once(records, changes)
            except ProfileWriteConflict:
                attempt += 1
                self._conflicts.inc()
                if attempt == CONFLICT_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))

    def _write_once(self, records: Sequence[ValidRecord], changes: Sequence[IdentityChange]) -> int:
        rules = self._stitch.graph
        extracted = [
            (record, extract_identities(record.entity, self._stitch.namespaces, self._stitch.rules).identities)
            for record in records
        ]
        known = {identity for _, identities in extracted for identity in identities}
        # A split's identities too: the side that keeps the old person id gets no record, yet needs its view rebuilt.
        known |= {_identity(text) for change in changes for text in change.identities}
        resolution = resolve(self._identities.facts_of(known), rules)
        current = sorted({resolution.person_of[identity] for identity in known if identity in resolution.person_of})
        members = {owner: [] for owner in current}
        for identity, owner in sorted(resolution.person_of.items()):
            if owner in members:
                members[owner].append(identity)
        owned_identities = [identity for owned in members.values() for identity in owned]
        keys = [f"{identity}|{dataset}" for identity in owned_identities for dataset in self._datasets]
        read = self._profiles.fragments(keys)
        fragments = {key: self._decoded.fragment(key, data) for key, data in read.items()}
        touched = set()
        for record, identities in extracted:
            owner = profile_model.fragment_identity(identities, rules)
            if owner is None:
                continue
            key = f"{owner}|{record.dataset}"
            fragment = fragments.get(key) or profile_model.Fragment(identity=owner, dataset=record.dataset)
            schema = self._registry.get(record.schema_id)
            fragments[key] = profile_model.apply(
                fragment,
                record.entity,
                is_event=schema.time_series,
                record_time_us=record_time_us(record.entity, schema.class_id, record.publish_time_us),
                ingest_time_us=record.publish_time_us,
                message_id=record.message_id,
                policy_limits=self._settings.limits,
            )
            touched.add(key)
        keys_of = collections.defaultdict(list)
        for key, fragment in fragments.items():
            keys_of[fragment.identity].append(key)
        views = {}
        for owner, owned in members.items():
            held = [fragments[key] for key in sorted(key for identity in owned for key in keys_of[identity])]
            view = profile_model.build_view(owner, owned, held, self._settings.policy)
            views[owner] = profile_model.view_to_bytes(view)
        # Only a merge or a rename retires a person id; a record stitched to a person that is now another's goes to
        # the person its identities belong to, and the merge's own flush leaves the redirect.
        redirects = {
            old: change.persons_after[0]
            for change in changes
            if change.kind in RETIRING_CHANGES
            for old in change.persons_before
            if old not in members and change.persons_after
        }
        written = {key: profile_model.fragment_to_bytes(fragments[key]) for key in sorted(touched)}
        self._profiles.write(
            ProfileWrite(
                fragments=written,
                views=views,
                index={str(identity): owner for owner, owned in members.items() for identity in owned},
                redirects=redirects,
                drop_views=tuple(sorted(redirects)),
                expected={key: read.get(key) for key in keys},
            )
        )
        for key, data in written.items():
            self._decoded.remember(key, data, fragments[key])
        return len(views)


def _identity(text: str) -> Identity:
    namespace, _, identity_id = text.partition(":")
    return Identity(namespace, identity_id)


class MergeProfiles(beam.PTransform):
    """Keeps every person's merged profile in the profile store; see the module docstring."""

    def __init__(
        self,
        registry: SchemaRegistry,
        identity_store: str,
        profile_store: str,
        stitch: StitchSettings,
        settings: ProfileSettings | None = None,
        *,
        clock: Callable[[], int] = wall_clock_us,
    ) -> None:
        super().__init__()
        self._registry = registry
        self._identity_store = identity_store
        self._profile_store = profile_store
        self._stitch = stitch
        self._settings = settings or ProfileSettings()
        self._clock = clock

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]) -> beam.PCollection:
        records, changes = inputs
        streaming = records.pipeline.options.view_as(beam.options.pipeline_options.StandardOptions).streaming
        profile_datasets = {name for name, dataset in self._registry.datasets.items() if dataset.profile}
        shards = self._settings.shards
        keyed = typehints.KV[int, typehints.Any]  # an int key: a deterministic coder for the state's key
        keyed_records = records | "KeyRecordsByShard" >> beam.FlatMap(
            _keyed_record, profile_datasets, shards
        ).with_output_types(keyed)
        keyed_changes = changes | "KeyChangesByShard" >> beam.FlatMap(_keyed_change, shards).with_output_types(keyed)
        return (
            (keyed_records, keyed_changes)
            | "Updates" >> beam.Flatten()
            | "InGlobalWindow" >> beam.WindowInto(beam.window.GlobalWindows())
            | "MergeAndFlush"
            >> beam.ParDo(
                _MergeProfilesFn(
                    self._registry,
                    self._identity_store,
                    self._profile_store,
                    self._stitch,
                    self._settings,
                    bool(streaming),
                    self._clock,
                )
            )
        )


def shard_of(person_id: str, shards: int) -> int:
    """The shard a person's updates are buffered in: stable across processes and runners (unlike ``hash``)."""
    return zlib.crc32(person_id.encode()) % shards


def _keyed_record(record: ValidRecord, profile_datasets: Iterable[str], shards: int):
    if record.person_id is not None and record.dataset in profile_datasets:
        yield shard_of(record.person_id, shards), record


def _keyed_change(change: IdentityChange, shards: int):
    # A merge, a rename or a split rebuilds the view of every person it leaves; the others change no profile.
    if change.kind in ("split", *RETIRING_CHANGES):
        for shard in sorted({shard_of(person, shards) for person in change.persons_after}):
            yield shard, change
