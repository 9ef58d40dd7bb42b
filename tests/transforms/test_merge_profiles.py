"""The MergeProfiles stage: when it flushes, and what the profile store holds after merges, splits and replays.

Records go through the real StitchIdentities first, as in Ingest, with SQLite identity and profile stores under
tmp_path. Streaming tests drive a ``TestStream`` on the BundleBasedDirectRunner, whose processing time starts at 0 and
only moves when the stream says so; the stage's clock is pinned to that 0, so its flush timer is due at
``flush_interval_s`` of stream time. Batch runs use the FnApiRunner, which has no processing-time timers.

A story (merge, split) is told in chapters, one pipeline run each on the same stores: a chapter's records are stitched
and flushed before the next chapter starts, as they would be seconds apart in a live stream.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.internal import pickler
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from core.records import ValidRecord
from identity.graph import person_id
from identity.model import Identity
from identity.stitching import link_batch, record_identities
from pipelines.config import Config
from pipelines.direct_runner_patches import metrics_of_every_bundle
from pipelines.summary import freshness_percentiles
from profiles import model as profile_model
from profiles.model import fragment_to_bytes, view_from_bytes
from profiles.writer import DecodedFragments, ProfileSettings, ProfileWriter
from schemas.registry import SchemaRegistry
from stores.opening import identity_store_handler, open_identity_store, open_profile_store, profile_store_handler
from transforms.merge_profiles import (
    MergeProfiles,
    ProfileFlush,
    ProfileWriterHandler,
    _MergeBundlesFn,
    _MergeProfilesFn,
)
from transforms.metrics import PROFILE_FRESHNESS_MS as FRESHNESS
from transforms.stitch import StitchIdentities

EVENT_SCHEMA = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE_SCHEMA = "https://ns.adobe.com/xdm/context/profile"
PAGE_VIEW = "web.webpagedetails.pageViews"
MINUTE_US = 60_000_000
BASE_US = 1_793_523_600_000_000  # 2026-11-01T09:00:00Z
DEVICE = "1" * 38
ANN_EMAIL = "ann@example.com"
BOB_EMAIL = "bob@example.com"
STITCH = Config().stitch_settings()
FLUSH_INTERVAL_S = ProfileSettings().flush_interval_s


def stream_clock() -> int:
    """The stage's clock: the TestStream's processing time before any advance, 0.

    A timer set after the stream advanced is due at once by this clock, which can only make that flush earlier.
    """
    return 0


@dataclasses.dataclass(frozen=True)
class Stores:
    """A run's SQLite stores, and the file its flushes are logged to."""

    identity: str
    profile: str
    flush_log: str


@dataclasses.dataclass(frozen=True, order=True)
class Flushed:
    """One ProfileFlush the stage emitted, and whether the end-of-input timer emitted it."""

    person_id: str
    records: int
    at_end: bool


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


@pytest.fixture
def stores(tmp_path) -> Stores:
    return stores_in(tmp_path, "run")


def stores_in(folder, name: str) -> Stores:
    return Stores(
        f"sqlite:///{folder}/{name}.identity.sqlite",
        f"sqlite:///{folder}/{name}.profiles.sqlite",
        f"{folder}/{name}.flushes.jsonl",
    )


def identity_map(identities: dict[str, str]) -> dict:
    return {namespace: [{"id": value}] for namespace, value in identities.items()}


def event(message_id: str, minute: int, **identities: str) -> ValidRecord:
    entity = {
        "_id": message_id,
        "timestamp": f"2026-11-01T09:{minute:02d}:00Z",
        "eventType": PAGE_VIEW,
        "identityMap": identity_map(identities),
    }
    publish_us = BASE_US + minute * MINUTE_US
    return ValidRecord("experience_events", EVENT_SCHEMA, entity, message_id, 0, publish_us, publish_us)


def profile(message_id: str, minute: int, first_name: str, **identities: str) -> ValidRecord:
    entity = {
        "_id": message_id,
        "identityMap": identity_map(identities),
        "person": {"name": {"firstName": first_name}},
        "extSourceSystemAudit": {"lastUpdatedDate": f"2026-11-01T09:{minute:02d}:00Z"},
    }
    publish_us = BASE_US + minute * MINUTE_US
    return ValidRecord("profile_records", PROFILE_SCHEMA, entity, message_id, 0, publish_us, publish_us)


# Ann browses anonymously on her device, fills in her profile with her e-mail, then browses signed in.
SAMPLE_ANONYMOUS_VISITS = [event("e1", 1, ECID=DEVICE), event("e2", 2, ECID=DEVICE)]
SAMPLE_ANN_PROFILE = profile("r1", 3, "Ann", Email=ANN_EMAIL)
SAMPLE_SIGNED_IN_VISIT = event("e3", 4, ECID=DEVICE, Email=ANN_EMAIL)
SAMPLE_BOB_PROFILE = profile("r2", 5, "Bob", Email=BOB_EMAIL)
ANN = person_id(Identity("Email", ANN_EMAIL))
BOB = person_id(Identity("Email", BOB_EMAIL))
DEVICE_PERSON = person_id(Identity("ECID", DEVICE))


def stamped(record: ValidRecord) -> TimestampedValue:
    return TimestampedValue(record, Timestamp(micros=record.publish_time_us))


def stream_of(*bundles: Iterable[ValidRecord]) -> TestStream:
    """Each bundle added in turn, then the end of input; processing time never moves."""
    stream = TestStream()
    for bundle in bundles:
        stream = stream.add_elements([stamped(record) for record in bundle])
    return stream.advance_watermark_to_infinity()


def writers(registry: SchemaRegistry, stores: Stores, settings: ProfileSettings | None = None) -> ProfileWriterHandler:
    return ProfileWriterHandler(
        registry,
        identity_store_handler(stores.identity),
        profile_store_handler(stores.profile),
        STITCH,
        settings or ProfileSettings(),
    )


def merge_profiles(records, registry: SchemaRegistry, stores: Stores, settings: ProfileSettings | None = None):
    stitched = records | StitchIdentities(registry, identity_store_handler(stores.identity), STITCH)
    return (stitched.records, stitched.changes) | MergeProfiles(writers(registry, stores, settings), clock=stream_clock)


def run_stream(
    stream: TestStream, registry: SchemaRegistry, stores: Stores, settings: ProfileSettings | None = None
) -> list[Flushed]:
    """Runs the stream through stitching and MergeProfiles; returns, flush by flush in the order they ran, a
    :class:`Flushed` for each person a flush applied records for."""
    log = Path(stores.flush_log)
    log.unlink(missing_ok=True)
    with beam.Pipeline(options=PipelineOptions([], streaming=True, runner="BundleBasedDirectRunner")) as pipeline:
        flushes = merge_profiles(pipeline | stream, registry, stores, settings)
        _ = flushes | beam.Map(log_flush, str(log))
    lines = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return [Flushed(person, records, line["at_end"]) for line in lines for person, records in line["persons"].items()]


def log_flush(flush: ProfileFlush, path: str, at=beam.DoFn.TimestampParam) -> None:
    # Logged rather than checked with assert_that: the end-of-input flush is stamped with the global window's last
    # timestamp, and the local runner may close assert_that's grouping in that window before it arrives.
    line = {"persons": dict(flush.persons), "at_end": at == GlobalWindow().max_timestamp()}
    with open(path, "a") as log:
        log.write(json.dumps(line) + "\n")


def run_batch(records: list[ValidRecord], registry: SchemaRegistry, stores: Stores) -> None:
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        _ = merge_profiles(pipeline | beam.Create(records) | beam.Map(stamped), registry, stores)


def store_contents(stores: Stores) -> dict[str, list]:
    with sqlite3.connect(stores.profile.removeprefix("sqlite:///")) as connection:
        tables = [name for (name,) in connection.execute("select name from sqlite_master where type = 'table'")]
        return {table: sorted(connection.execute(f"select * from {table}").fetchall()) for table in tables}


def view_of_person(stores: Stores, person: str) -> dict | None:
    with open_profile_store(stores.profile) as store:
        data = store.view_by_person(person)
    return None if data is None else view_from_bytes(data)


def view_of_identity(stores: Stores, identity: Identity) -> dict | None:
    with open_profile_store(stores.profile) as store:
        data = store.view_by_identity(str(identity))
    return None if data is None else view_from_bytes(data)


def event_ids(view: dict) -> list[str]:
    return sorted(body["_id"] for body in view["events"]["recent"])


def first_name(view: dict) -> str:
    return view["attributes"]["person"]["name"]["firstName"]


def identities(view: dict) -> list[str]:
    return sorted(f"{identity['namespace']}:{identity['id']}" for identity in view["identities"])


# When buffers flush.


def test_processing_time_flushes_a_buffer_before_the_end_of_input(registry, stores):
    """The first flush holds the first record alone and ran before the end of input: the timer flushed it.

    Nothing else could have: one record is below ``max_buffered``, and the watermark reaches the end only after the
    second record, so without the timer both records would have shared the end-of-input flush.
    """
    stream = (
        TestStream()
        .add_elements([stamped(SAMPLE_ANONYMOUS_VISITS[0])])
        .advance_processing_time(FLUSH_INTERVAL_S + 1)
        .add_elements([stamped(SAMPLE_ANONYMOUS_VISITS[1])])
        .advance_watermark_to_infinity()
    )

    flushes = run_stream(stream, registry, stores)

    assert flushes[0] == Flushed(DEVICE_PERSON, records=1, at_end=False)
    assert [flush.records for flush in flushes] == [1, 1]


def test_a_full_buffer_flushes_without_waiting_for_time_or_the_watermark(registry, stores):
    """With room for two, the first two records flush together as the second arrives; the third waits for the end.

    Processing time never moves, so no timer fires; had the size not flushed, all three would share one flush.
    """
    records = [*SAMPLE_ANONYMOUS_VISITS, event("e9", 9, ECID=DEVICE)]

    flushes = run_stream(
        stream_of(*([record] for record in records)), registry, stores, ProfileSettings(max_buffered=2)
    )

    assert flushes == [Flushed(DEVICE_PERSON, records=2, at_end=False), Flushed(DEVICE_PERSON, records=1, at_end=True)]


def test_the_end_of_input_flushes_every_buffer_without_processing_time(registry, stores):
    """Processing time never moves and no buffer fills: each person's records all go in the end-of-input flush."""
    records = [*SAMPLE_ANONYMOUS_VISITS, SAMPLE_BOB_PROFILE]

    flushes = run_stream(stream_of(records), registry, stores)

    assert sorted(flushes) == sorted(
        [Flushed(DEVICE_PERSON, records=2, at_end=True), Flushed(BOB, records=1, at_end=True)]
    )
    assert event_ids(view_of_person(stores, DEVICE_PERSON)) == ["e1", "e2"]


def test_persons_of_one_shard_are_flushed_together_and_each_gets_their_view(registry, tmp_path):
    """One shard: a timer flush writes the device's person and Bob at once, the next flush only Ann."""
    stream = (
        TestStream()
        .add_elements([stamped(SAMPLE_ANONYMOUS_VISITS[0]), stamped(SAMPLE_BOB_PROFILE)])
        .advance_processing_time(FLUSH_INTERVAL_S + 1)
        .add_elements([stamped(SAMPLE_ANN_PROFILE)])
        .advance_watermark_to_infinity()
    )
    stores = stores_in(tmp_path, "one-shard")

    flushes = run_stream(stream, registry, stores, ProfileSettings(shards=1))

    assert flushes == [
        Flushed(BOB, records=1, at_end=False),
        Flushed(DEVICE_PERSON, records=1, at_end=False),
        Flushed(
            ANN, records=1, at_end=False
        ),  # by the timer too: set after the stream's clock moved, it is due at once
    ]
    assert event_ids(view_of_person(stores, DEVICE_PERSON)) == ["e1"]
    assert first_name(view_of_person(stores, BOB)) == "Bob"
    assert first_name(view_of_person(stores, ANN)) == "Ann"


def test_streaming_and_batch_leave_the_same_profile_store(registry, tmp_path):
    """Without processing time the end-of-input flush alone writes the store, as the batch run's does."""
    records = [*SAMPLE_ANONYMOUS_VISITS, SAMPLE_ANN_PROFILE, SAMPLE_SIGNED_IN_VISIT, SAMPLE_BOB_PROFILE]
    streamed, batch = stores_in(tmp_path, "streamed"), stores_in(tmp_path, "batch")

    run_stream(stream_of(records), registry, streamed)
    run_batch(records, registry, batch)

    assert store_contents(streamed) == store_contents(batch)
    assert len(store_contents(batch)["views"]) == 2  # Ann's and Bob's: not two empty stores


def test_a_batch_bundle_flushes_a_shard_as_soon_as_it_holds_max_buffered(registry, tmp_path):
    """In batch a bundle's updates wait in memory, no longer than it takes a shard to hold ``max_buffered``: flushed
    one at a time, the records leave the views one flush of them all leaves."""
    records = [*SAMPLE_ANONYMOUS_VISITS, SAMPLE_ANN_PROFILE, SAMPLE_SIGNED_IN_VISIT, SAMPLE_BOB_PROFILE]
    written = {}
    for name, max_buffered in (("one_by_one", 1), ("at_once", 500)):
        stores = stores_in(tmp_path, name)
        pipeline = beam.Pipeline(runner="FnApiRunner")
        settings = ProfileSettings(max_buffered=max_buffered, shards=1)
        _ = merge_profiles(pipeline | beam.Create(records) | beam.Map(stamped), registry, stores, settings)
        result = pipeline.run()
        result.wait_until_finish()
        [views] = result.metrics().query(MetricsFilter().with_name("profiles_written"))["counters"]
        ann, bob = (view_of_identity(stores, Identity("Email", email)) for email in (ANN_EMAIL, BOB_EMAIL))
        written[name] = (views.committed, ann, bob)

    assert written["one_by_one"][1:] == written["at_once"][1:]
    assert written["at_once"][1]["events"]["count"] == 3
    assert written["one_by_one"][0] > written["at_once"][0] == 2


# What the stage counts.


def clock_at_minute_2_plus_300_ms() -> int:
    """A clock that reads 300 ms after the minute-2 record was read, and 60.3 s after the minute-1 record."""
    return BASE_US + 2 * MINUTE_US + 300_000


def test_each_write_counts_its_views_and_the_freshness_of_its_records(registry, stores):
    """Freshness is the clock at the write minus each record's read time; profiles_written counts the views written."""
    with metrics_of_every_bundle():
        pipeline = beam.Pipeline(options=PipelineOptions([], streaming=True, runner="BundleBasedDirectRunner"))
        stitched = (
            pipeline
            | stream_of(SAMPLE_ANONYMOUS_VISITS, [SAMPLE_BOB_PROFILE])
            | StitchIdentities(registry, identity_store_handler(stores.identity), STITCH)
        )
        _ = (stitched.records, stitched.changes) | MergeProfiles(
            writers(registry, stores), clock=clock_at_minute_2_plus_300_ms
        )
        result = pipeline.run()
        result.wait_until_finish()
    metrics = result.metrics().query(MetricsFilter().with_namespace("profilestream"))
    counted = {counter.key.metric.name: counter.committed for counter in metrics["counters"]}
    [freshness] = [found.committed for found in metrics["distributions"] if found.key.metric.name == FRESHNESS]

    assert counted["profiles_written"] == 2  # the device's person and Bob's, one end-of-input flush each
    # e1 was read at minute 1 (60.3 s before the write), e2 at minute 2 (300 ms), Bob's record at minute 5 (in the
    # clock's future: counted as 0 rather than negative).
    assert (freshness.count, freshness.min, freshness.max) == (3, 0, 60_300)
    assert {name: count for name, count in counted.items() if name.startswith(FRESHNESS)} == {
        f"{FRESHNESS}.le_10": 1,
        f"{FRESHNESS}.le_500": 1,
        f"{FRESHNESS}.le_300000": 1,
    }
    assert freshness_percentiles(counted) == {"p50": 500, "p95": 300_000, "p99": 300_000}


# Stories: persons merge and split.


def test_merged_persons_share_one_profile_and_the_retired_id_redirects(registry, stores):
    """The device and Ann's e-mail are two persons until a signed-in visit links them.

    The device was seen first, so its person survives (identity_graph: the earlier anchor keeps its id).
    """
    run_stream(stream_of(SAMPLE_ANONYMOUS_VISITS, [SAMPLE_ANN_PROFILE]), registry, stores)
    assert first_name(view_of_person(stores, ANN)) == "Ann"  # two persons so far
    assert event_ids(view_of_person(stores, DEVICE_PERSON)) == ["e1", "e2"]

    run_stream(stream_of([SAMPLE_SIGNED_IN_VISIT]), registry, stores)

    survivor = view_of_person(stores, DEVICE_PERSON)
    assert survivor["person_id"] == DEVICE_PERSON
    assert first_name(survivor) == "Ann"
    assert event_ids(survivor) == ["e1", "e2", "e3"]
    assert identities(survivor) == [f"ECID:{DEVICE}", f"Email:{ANN_EMAIL}"]
    assert view_of_person(stores, ANN) == survivor
    assert view_of_identity(stores, Identity("ECID", DEVICE)) == survivor
    assert view_of_identity(stores, Identity("Email", ANN_EMAIL)) == survivor


def test_a_shared_device_split_gives_each_user_back_their_own_fragments(registry, stores):
    """Ann signs in on a shared device, someone browses on it anonymously, then Bob signs in on it.

    CRMID is unique, so Bob's sign-in (the newest link) takes the device and Ann's older link goes
    (identity_graph). Ann keeps her person id (her CRMID outranks the device seen with it) and her own fragments: her
    profile and the visit she signed in for. The device's anonymous visit follows the device to Bob, whose person the
    device anchors.
    """
    ann = person_id(Identity("CRMID", "ann"))
    ann_signs_in = [profile("r1", 1, "Ann", CRMID="ann"), event("e1", 1, ECID=DEVICE, CRMID="ann")]
    anonymous = [event("e2", 2, ECID=DEVICE)]
    bob_signs_in = [event("e3", 5, ECID=DEVICE, CRMID="bob")]
    run_stream(stream_of(ann_signs_in), registry, stores)
    run_stream(stream_of(anonymous), registry, stores)
    assert event_ids(view_of_person(stores, ann)) == ["e1", "e2"]  # the device is Ann's so far

    run_stream(stream_of(bob_signs_in), registry, stores)

    ann_view, bob_view = view_of_person(stores, ann), view_of_person(stores, DEVICE_PERSON)
    assert identities(ann_view) == ["CRMID:ann"]
    assert first_name(ann_view) == "Ann"
    assert event_ids(ann_view) == ["e1"]
    assert identities(bob_view) == ["CRMID:bob", f"ECID:{DEVICE}"]
    assert event_ids(bob_view) == ["e2", "e3"]
    assert view_of_identity(stores, Identity("ECID", DEVICE)) == bob_view


def test_a_person_renamed_by_a_late_record_keeps_answering_under_its_old_id(registry, stores):
    """The device anchors the person until Ann's profile record, stamped with an earlier time, shows her e-mail was
    seen first: the person is renamed after the e-mail, and the device's person id answers with that profile."""
    run_stream(stream_of([event("e1", 5, ECID=DEVICE), event("e2", 6, ECID=DEVICE, Email=ANN_EMAIL)]), registry, stores)
    assert event_ids(view_of_person(stores, DEVICE_PERSON)) == ["e1", "e2"]

    run_stream(stream_of([profile("r1", 1, "Ann", Email=ANN_EMAIL)]), registry, stores)

    renamed = view_of_person(stores, ANN)
    assert renamed["person_id"] == ANN
    assert first_name(renamed) == "Ann"
    assert event_ids(renamed) == ["e1", "e2"]
    assert view_of_person(stores, DEVICE_PERSON) == renamed
    assert view_of_identity(stores, Identity("ECID", DEVICE)) == renamed


# Order and replays.


def test_records_in_any_order_leave_the_same_profile_store(registry, tmp_path):
    """Ann's name changes at minute 5; the late arrival of the older record must not undo it, whatever the order."""
    records = [SAMPLE_ANN_PROFILE, SAMPLE_SIGNED_IN_VISIT, profile("r3", 5, "Anne", Email=ANN_EMAIL)]
    forward, backward = stores_in(tmp_path, "forward"), stores_in(tmp_path, "backward")

    run_stream(stream_of(*([record] for record in records)), registry, forward)
    run_stream(stream_of(*([record] for record in reversed(records))), registry, backward)

    assert store_contents(forward) == store_contents(backward)
    assert first_name(view_of_person(forward, ANN)) == "Anne"


def test_replaying_the_input_leaves_what_one_run_leaves(registry, tmp_path):
    """The second run stitches nothing new and applies every record again: events by ``_id``, attributes by stamp."""
    records = [*SAMPLE_ANONYMOUS_VISITS, SAMPLE_ANN_PROFILE, SAMPLE_SIGNED_IN_VISIT]
    once, twice = stores_in(tmp_path, "once"), stores_in(tmp_path, "twice")

    run_stream(stream_of(*([record] for record in records)), registry, once)
    for _ in range(2):
        run_stream(stream_of(*([record] for record in records)), registry, twice)

    assert store_contents(twice) == store_contents(once)


def test_flushes_fired_again_after_a_restore_leave_the_profile_store_unchanged(registry, stores):
    """What a runner restoring the stage's state from a checkpoint does: the buffers go back to what they held
    before the commit and their flushes fire again, here the flush of Ann's first records and the one after the merge,
    once more each, in the order they ran; the store keeps what the first time left."""
    flushes = []
    with open_identity_store(stores.identity) as identities:
        for batch in ([*SAMPLE_ANONYMOUS_VISITS, SAMPLE_ANN_PROFILE], [SAMPLE_SIGNED_IN_VISIT]):
            found = [record_identities(record, registry, STITCH) for record in batch]
            changes, persons = link_batch(identities, STITCH.graph, found)
            stitched = [
                dataclasses.replace(record, person_id=person) for record, person in zip(batch, persons, strict=True)
            ]
            flushes.append((stitched, [change for change in changes if change.kind == "merge"]))
    writer = ProfileWriter(
        registry, open_identity_store(stores.identity), open_profile_store(stores.profile), STITCH, ProfileSettings()
    )
    for records, changes in flushes:
        writer.write(records, changes)
    committed = store_contents(stores)
    assert flushes[1][1], "the second flush carries the merge"

    for records, changes in flushes:
        writer.write(records, changes)

    assert store_contents(stores) == committed
    assert view_of_person(stores, ANN) == view_of_person(stores, DEVICE_PERSON)


# Datasets.


def test_only_profile_enabled_datasets_feed_profiles(tmp_path, stores):
    """A dataset with ``"profile": false`` still feeds the identity graph, so its record has a person; no profile."""
    schema_dir = tmp_path / "schemas"
    schema_dir.mkdir()
    (schema_dir / "quiet.json").write_text(
        '{"$id": "https://example.com/quiet", "class": "https://ns.adobe.com/xdm/context/experienceevent",'
        ' "fieldGroups": ["https://ns.adobe.com/xdm/context/identitymap"],'
        ' "dataset": {"name": "quiet_events", "identity": true, "profile": false}}'
    )
    registry = SchemaRegistry.load(schema_dir)
    quiet = dataclasses.replace(
        event("q1", 3, ECID=DEVICE), dataset="quiet_events", schema_id="https://example.com/quiet"
    )

    run_stream(stream_of([*SAMPLE_ANONYMOUS_VISITS, quiet]), registry, stores)

    assert event_ids(view_of_person(stores, DEVICE_PERSON)) == ["e1", "e2"]


# The decoded-fragment cache.


def test_a_cached_fragment_is_reused_only_for_the_bytes_it_was_decoded_from():
    ann, anne = (
        fragment_to_bytes(profile_model.Fragment(identity=Identity("Email", ANN_EMAIL), dataset=name))
        for name in ("profile_records", "experience_events")
    )
    cache = DecodedFragments(size=2)

    first = cache.fragment("k", ann)
    assert cache.fragment("k", ann) is first
    changed = cache.fragment("k", anne)  # another worker wrote the key meanwhile
    assert changed is not first and changed.dataset == "experience_events"
    cache.fragment("other", ann)
    cache.fragment("third", ann)  # the cache holds two: "k" goes
    assert cache.fragment("k", anne) is not changed


# The handler the stage is given.


def test_the_writer_handler_pickles_and_opens_a_writer_on_the_other_side(registry, stores):
    shipped = pickle.loads(pickle.dumps(writers(registry, stores)))
    with open_identity_store(stores.identity) as identities:
        found = record_identities(SAMPLE_ANN_PROFILE, registry, STITCH)
        changes, [person] = link_batch(identities, STITCH.graph, [found])

    writer = shipped.open()
    try:
        assert writer.write([dataclasses.replace(SAMPLE_ANN_PROFILE, person_id=person)], changes) == 1
    finally:
        writer.close()

    assert view_of_person(stores, ANN)["person_id"] == ANN


@pytest.mark.parametrize(
    "make_stage",
    [
        lambda handler: _MergeProfilesFn(handler, clock=stream_clock),
        lambda handler: _MergeBundlesFn(handler, clock=stream_clock, shards_of=lambda update: [0]),
    ],
    ids=["streaming", "batch"],
)
def test_the_stage_s_dofns_in_one_process_share_one_cache_of_decoded_fragments(registry, stores, make_stage):
    stage = make_stage(writers(registry, stores))
    first, second = (pickler.loads(pickler.dumps(stage)) for _ in range(2))  # as the runner makes them
    for dofn in (first, second):
        dofn.setup()
    try:
        assert first._merger._writer._decoded is second._merger._writer._decoded
    finally:
        for dofn in (first, second):
            dofn.teardown()
