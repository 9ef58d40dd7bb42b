"""MergeProfiles: stitched records and identity changes in, merged profiles in the profile store out.

Input: ``records``, ``PCollection[ValidRecord]`` with ``person_id`` set by StitchIdentities, and ``changes``,
``PCollection[IdentityChange]``. Only records of profile-enabled datasets (README, "Schemas and datasets") with a person
are merged; the rest are ignored here (they still reach the lake). Output: one :class:`ProfileFlush` per flush (the
persons it applied records for, how many each, and the views it wrote), for counting.

Updates are buffered by shard of their person id (``shards``, 16 by default). Streaming, each bundle's updates go as
one list per shard (:mod:`transforms.bundle_batches`, so the runner's cost is paid per list, not per record) into the
shard's state, and a shard is flushed ``flush_interval_s`` of processing time after its first update (1 s by
default), as soon as it holds ``max_buffered`` updates, and when the watermark reaches the end of input, so the final
store never depends on processing time. In batch, a bundle's updates are buffered in memory, a shard flushed as soon
as it holds ``max_buffered`` and every shard when the bundle ends: no state, so the records reach the merge in the
stage that stitched them, without a shuffle that would encode each of them. A
flush reads its records' identities from the identity store and every fragment of the persons they now belong to from
the profile store, applies the buffered records to them (:mod:`profiles.model`: order-independent and idempotent, so
a replay or a retried bundle changes nothing) and writes the fragments, each
person's view, the index of their identities and, after a merge or a rename, redirects from the retired person ids,
in one store write. A merge, a rename or a split flushes every person it names.

Metrics (namespace ``profilestream``, names in :mod:`transforms.metrics`): ``profiles_written``,
``profile_write_conflicts``; ``profile_freshness_ms`` (from the time the pipeline read a record to its store write),
as a distribution and as bucket counters ``profile_freshness_ms.le_<bound>`` from which the run summary takes p50,
p95 and p99.

Why shards: docs/decisions/0001-shards-not-persons-for-profile-flushes.md.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam import typehints
from apache_beam.coders import ListCoder, VarIntCoder
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils import shared
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from core.clock import wall_clock_us
from core.records import ValidRecord
from identity.model import IdentityChange
from identity.stitching import StitchSettings
from profiles.writer import (
    FRAGMENT_CACHE_SIZE,
    RETIRING_CHANGES,
    DecodedFragments,
    ProfileSettings,
    ProfileWriter,
)
from schemas.registry import SchemaRegistry
from stores.identity import IdentityStore
from stores.opening import StoreHandler
from stores.profiles import ProfileStore
from transforms.bundle_batches import KeyedBundleBatches, KeysOf
from transforms.coders import RecordCoder
from transforms.metrics import (
    PROFILE_FRESHNESS_MS,
    PROFILE_WRITE_CONFLICTS,
    PROFILES_WRITTEN,
    counter,
    distribution,
    freshness_bucket,
)
from transforms.shared_registry import SharedRegistry, shared_registry


@dataclasses.dataclass(frozen=True)
class ProfileFlush:
    """One flush: the persons it applied records for (``(person id, records)`` pairs, as keyed when stitched, sorted),
    and the views it wrote."""

    persons: tuple[tuple[str, int], ...]
    views: int


@dataclasses.dataclass(frozen=True)
class ProfileWriterHandler:
    """What MergeProfiles writes with, as its DoFn holds it (the shape of RunInference's ``ModelHandler``): the
    registry, the two stores' handlers, the stitching and profile settings; pickled to the workers, where
    :meth:`open` opens a :class:`~profiles.writer.ProfileWriter` on its stores. The pipeline builds one."""

    registry: SchemaRegistry | SharedRegistry  # a SharedRegistry once made
    identities: StoreHandler[IdentityStore]
    profiles: StoreHandler[ProfileStore]
    stitch: StitchSettings
    settings: ProfileSettings = dataclasses.field(default_factory=ProfileSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "registry", shared_registry(self.registry))

    def open(self, **options: Any) -> ProfileWriter:
        """A writer on newly opened stores; ``options`` are ProfileWriter's keywords."""
        return ProfileWriter(
            self.registry.load(), self.identities.open(), self.profiles.open(), self.stitch, self.settings, **options
        )


class _MergeProfilesFn(beam.DoFn):
    """Streaming: buffers each shard's updates in its state; see the module docstring."""

    PENDING = BagStateSpec("pending", ListCoder(RecordCoder()))
    COUNT = ReadModifyWriteStateSpec("count", VarIntCoder())
    FLUSH_SOON = TimerSpec("flush_soon", TimeDomain.REAL_TIME)
    FLUSH_AT_END = TimerSpec("flush_at_end", TimeDomain.WATERMARK)

    def __init__(self, writers: ProfileWriterHandler, clock: Callable[[], int]) -> None:
        self._writers = writers
        self._settings = writers.settings
        self._clock = clock
        self._decoded = shared.Shared()
        self._merger: _Merger | None = None

    def setup(self) -> None:
        self._merger = _Merger(self._writers, self._clock, self._decoded)

    def teardown(self) -> None:
        if self._merger is not None:
            self._merger.close()

    def process(
        self,
        keyed: tuple[str, Any],
        pending=beam.DoFn.StateParam(PENDING),
        count=beam.DoFn.StateParam(COUNT),
        flush_soon=beam.DoFn.TimerParam(FLUSH_SOON),
        flush_at_end=beam.DoFn.TimerParam(FLUSH_AT_END),
    ):
        shard, updates = keyed
        pending.add(updates)
        held = count.read() or 0
        buffered = held + len(updates)
        count.write(buffered)
        if held == 0:
            flush_at_end.set(GlobalWindow().max_timestamp())
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
        updates = [update for held in pending.read() for update in held]
        pending.clear()
        count.clear()
        yield from self._merger.merge(updates)


class _MergeBundlesFn(beam.DoFn):
    """Batch: buffers a bundle's updates by shard in memory; see the module docstring."""

    def __init__(self, writers: ProfileWriterHandler, clock: Callable[[], int], shards_of: KeysOf):
        self._writers = writers
        self._clock = clock
        self._shards_of = shards_of
        self._max_buffered = writers.settings.max_buffered
        self._decoded = shared.Shared()
        self._merger: _Merger | None = None
        self._buffers: dict[int, list] = {}

    def setup(self) -> None:
        self._merger = _Merger(self._writers, self._clock, self._decoded)

    def teardown(self) -> None:
        if self._merger is not None:
            self._merger.close()

    def start_bundle(self) -> None:
        self._buffers = {}

    def process(
        self, update: ValidRecord | IdentityChange, timestamp=beam.DoFn.TimestampParam
    ) -> Iterator[ProfileFlush]:
        for shard in self._shards_of(update, timestamp.micros):
            buffer = self._buffers.setdefault(shard, [])
            buffer.append(update)
            if len(buffer) >= self._max_buffered:
                yield from self._merger.merge(self._buffers.pop(shard))

    def finish_bundle(self) -> Iterator[WindowedValue]:
        buffers, self._buffers = self._buffers, {}
        for updates in buffers.values():
            for flush in self._merger.merge(updates):
                yield WindowedValue(flush, GlobalWindow().max_timestamp(), (GlobalWindow(),))


class _Merger:
    """Applies updates (records and identity changes) with a writer of its own, and counts what it wrote."""

    def __init__(self, writers: ProfileWriterHandler, clock: Callable[[], int], decoded: shared.Shared) -> None:
        self._clock = clock
        # The fragments this process decoded, shared by the stage's DoFn instances (the DirectRunner makes one per
        # bundle) and their threads.
        decoded = decoded.acquire(lambda: DecodedFragments(FRAGMENT_CACHE_SIZE))
        self._conflicts = counter(PROFILE_WRITE_CONFLICTS)
        self._writer = writers.open(decoded=decoded, count_conflict=self._conflicts.inc)
        self._written = counter(PROFILES_WRITTEN)
        self._freshness = distribution(PROFILE_FRESHNESS_MS)

    def merge(self, updates: list) -> Iterator[ProfileFlush]:
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

    def close(self) -> None:
        self._writer.close()


class MergeProfiles(beam.PTransform):
    """Keeps every person's merged profile in the profile store; see the module docstring.

    ``writers`` says what to write with and where (:class:`ProfileWriterHandler`).
    """

    def __init__(self, writers: ProfileWriterHandler, *, clock: Callable[[], int] = wall_clock_us) -> None:
        super().__init__()
        self._writers = writers
        self._clock = clock

    def expand(self, inputs: tuple[beam.PCollection, beam.PCollection]) -> beam.PCollection:
        records, changes = inputs
        streaming = records.pipeline.options.view_as(beam.options.pipeline_options.StandardOptions).streaming
        registry = self._writers.registry.load()
        profile_datasets = {name for name, dataset in registry.datasets.items() if dataset.profile}
        shards = self._writers.settings.shards
        record_shards = functools.partial(_record_shards, profile_datasets=frozenset(profile_datasets), shards=shards)
        change_shards = functools.partial(_change_shards, shards=shards)
        if not streaming:
            # Records and changes each merged where they were stitched: FnApiRunner would write every element of a
            # flatten of the two out and read it back in a stage of its own. A flush resolves persons as the graph
            # is then, so which of the two flushes first changes nothing.
            return (
                records | "MergeRecords" >> beam.ParDo(_MergeBundlesFn(self._writers, self._clock, record_shards)),
                changes | "MergeChanges" >> beam.ParDo(_MergeBundlesFn(self._writers, self._clock, change_shards)),
            ) | "Flushes" >> beam.Flatten()
        # An int key: a deterministic coder for the state's key.
        keyed = typehints.KV[int, typehints.List[typehints.Any]]
        keyed_records = records | "KeyRecordsByShard" >> KeyedBundleBatches(record_shards).with_output_types(keyed)
        keyed_changes = changes | "KeyChangesByShard" >> KeyedBundleBatches(change_shards).with_output_types(keyed)
        return (
            (keyed_records, keyed_changes)
            | "Updates" >> beam.Flatten()
            | "MergeAndFlush" >> beam.ParDo(_MergeProfilesFn(self._writers, self._clock))
        )


def shard_of(person_id: str, shards: int) -> int:
    """The shard a person's updates are buffered in: stable across processes and runners (unlike ``hash``)."""
    return zlib.crc32(person_id.encode()) % shards


def _record_shards(record: ValidRecord, _at_us: int, *, profile_datasets: frozenset[str], shards: int) -> list[int]:
    if record.person_id is not None and record.dataset in profile_datasets:
        return [shard_of(record.person_id, shards)]
    return []


def _change_shards(change: IdentityChange, _at_us: int, *, shards: int) -> list[int]:
    # A merge, a rename or a split rebuilds the view of every person it leaves; the others change no profile.
    if change.kind in ("split", *RETIRING_CHANGES):
        return sorted({shard_of(person, shards) for person in change.persons_after})
    return []
