"""The StitchIdentities stage: stories through a real SQLite store, on FnApiRunner and in streaming mode."""

from __future__ import annotations

import dataclasses
import threading
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to

from core.records import ValidRecord
from identity.graph import person_id
from identity.model import Identity
from identity.stitching import link_batch, record_identities
from pipelines.config import Config
from pipelines.direct_runner_patches import patched_direct_runner
from privacy.keys import identity_hash
from privacy.suppression import Suppression, SuppressionList
from schemas.registry import SchemaRegistry
from stores.opening import identity_store_handler, open_identity_store
from transforms.metrics import SUPPRESSED
from transforms.stitch import StitchIdentities

EVENT_SCHEMA = "https://ns.adobe.com/xdm/context/experienceevent"
DEVICE = "1" * 38
MINUTE_US = 60_000_000
BASE_US = 1_793_523_600_000_000  # 2026-11-01T09:00:00Z
SETTINGS = Config().stitch_settings()


@pytest.fixture(scope="module")
def registry() -> SchemaRegistry:
    return SchemaRegistry.load()


def event(message_id: str, minute: int, **identities: str) -> ValidRecord:
    stamp = f"2026-11-01T09:{minute:02d}:00Z"
    identity_map = {namespace: [{"id": value}] for namespace, value in identities.items()}
    entity = {"_id": message_id, "timestamp": stamp, "identityMap": identity_map}
    publish_us = BASE_US + minute * MINUTE_US
    return ValidRecord("experience_events", EVENT_SCHEMA, entity, message_id, 0, publish_us, publish_us)


def persons(records) -> list[tuple[str, str | None]]:
    return records | beam.Map(lambda record: (record.message_id, record.person_id))


def test_anonymous_events_then_a_login_join_the_person(tmp_path, registry):
    store = f"sqlite:///{tmp_path}/identity.sqlite"
    anonymous = [event("m1", 1, ECID=DEVICE), event("m2", 2, ECID=DEVICE)]
    login = [event("m3", 3, ECID=DEVICE, CRMID="ann")]
    expected = person_id(Identity("ECID", DEVICE))  # the device was seen first: it anchors the person

    for records, label in ((anonymous, "Anonymous"), (login, "Login")):
        with beam.Pipeline(runner="FnApiRunner") as pipeline:
            result = (
                pipeline | beam.Create(records) | StitchIdentities(registry, identity_store_handler(store), SETTINGS)
            )
            assert_that(persons(result.records), equal_to([(r.message_id, expected) for r in records]), label=label)


def test_a_shared_device_follows_its_last_user_and_the_split_is_reported(tmp_path, registry):
    store = f"sqlite:///{tmp_path}/identity.sqlite"
    first = [event("m1", 1, ECID=DEVICE, CRMID="ann")]
    second = [event("m2", 5, ECID=DEVICE, CRMID="bob")]
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        _ = pipeline | beam.Create(first) | StitchIdentities(registry, identity_store_handler(store), SETTINGS)
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        result = pipeline | beam.Create(second) | StitchIdentities(registry, identity_store_handler(store), SETTINGS)
        # Ann keeps the person the device and she anchored (she outranks the device seen at the same time); the
        # device moves to Bob, and their new person is anchored by the device, seen before Bob.
        device_and_bob = person_id(Identity("ECID", DEVICE))
        assert_that(persons(result.records), equal_to([("m2", device_and_bob)]), label="Person")
        assert_that(
            result.changes | beam.Map(lambda change: (change.kind, change.rule, change.message_id)),
            equal_to([("split", "unique_namespace", "m2"), ("link_removed", "unique_namespace", "m2")]),
            label="Changes",
        )


def test_rejected_identities_are_reported_and_the_record_goes_on(tmp_path, registry):
    store = f"sqlite:///{tmp_path}/identity.sqlite"
    record = event("m1", 1, ECID="not-an-ecid", Email="Ann@Example.com")
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        result = pipeline | beam.Create([record]) | StitchIdentities(registry, identity_store_handler(store), SETTINGS)
        ann = person_id(Identity("Email", "ann@example.com"))
        assert_that(persons(result.records), equal_to([("m1", ann)]), label="Person")
        assert_that(
            result.changes | beam.Map(lambda change: (change.kind, change.rule)),
            equal_to([("rejected", "IDENTITY.ECID_LENGTH")]),
            label="Rejected",
        )


def test_records_of_datasets_without_identity_pass_unstitched(tmp_path):
    schema_dir = tmp_path / "schemas"
    schema_dir.mkdir()
    (schema_dir / "quiet.json").write_text(
        '{"$id": "https://example.com/quiet", "class": "https://ns.adobe.com/xdm/context/experienceevent",'
        ' "fieldGroups": ["https://ns.adobe.com/xdm/context/identitymap"],'
        ' "dataset": {"name": "quiet_events", "identity": false, "profile": false}}'
    )
    registry = SchemaRegistry.load(schema_dir)
    record = dataclasses.replace(
        event("m1", 1, ECID=DEVICE), dataset="quiet_events", schema_id="https://example.com/quiet"
    )
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        result = (
            pipeline
            | beam.Create([record])
            | StitchIdentities(registry, identity_store_handler(f"sqlite:///{tmp_path}/i.sqlite"), SETTINGS)
        )
        assert_that(persons(result.records), equal_to([("m1", None)]))


def test_streaming_stitching_gives_every_record_its_person(tmp_path, registry):
    store = f"sqlite:///{tmp_path}/identity.sqlite"
    records = [event("m1", 1, ECID=DEVICE), event("m2", 2, ECID=DEVICE, Email="ann@example.com")]
    stream = (
        TestStream()
        .add_elements([beam.window.TimestampedValue(records[0], records[0].publish_time_us / 1e6)])
        .add_elements([beam.window.TimestampedValue(records[1], records[1].publish_time_us / 1e6)])
        .advance_watermark_to_infinity()
    )
    with beam.Pipeline(options=PipelineOptions(streaming=True, runner="BundleBasedDirectRunner")) as pipeline:
        result = pipeline | stream | StitchIdentities(registry, identity_store_handler(store), SETTINGS)
        device = person_id(Identity("ECID", DEVICE))
        assert_that(persons(result.records), equal_to([("m1", device), ("m2", device)]))


def found_in(records: list[ValidRecord], registry: SchemaRegistry) -> list:
    return [record_identities(record, registry, SETTINGS) for record in records]


def test_changes_a_crash_kept_from_the_lake_are_told_again_when_their_records_come_again(tmp_path, registry):
    """The store committed the login's facts, and the process died before the lake had the merge: a rerun of the
    same records (or their redelivery) tells it again, as it was told, and the anonymous visits still tell nothing."""
    url = f"sqlite:///{tmp_path}/identity.sqlite"
    anonymous = found_in([event("m1", 1, ECID=DEVICE), event("m2", 2, CRMID="ann")], registry)
    login = found_in([event("m3", 3, ECID=DEVICE, CRMID="ann"), event("m4", 4)], registry)
    with open_identity_store(url) as store:
        link_batch(store, SETTINGS.graph, anonymous)
        told, _ = link_batch(store, SETTINGS.graph, login)

    with open_identity_store(url) as store:
        told_again = [link_batch(store, SETTINGS.graph, batch)[0] for batch in (anonymous, login)]

    assert [(change.kind, change.message_id) for change in told] == [("merge", "m3")]
    assert told_again == [[], told]


def test_a_second_run_of_the_same_records_tells_the_same_changes(tmp_path, registry):
    store = f"sqlite:///{tmp_path}/identity.sqlite"
    records = [event("m1", 1, ECID=DEVICE, CRMID="ann"), event("m2", 5, ECID=DEVICE, CRMID="bob")]
    told = []
    for run in ("First", "Second"):
        with beam.Pipeline(runner="FnApiRunner") as pipeline:
            changes = (
                pipeline
                | f"{run}Records" >> beam.Create(records)
                | f"{run}Stitch" >> StitchIdentities(registry, identity_store_handler(store), SETTINGS, batch_size=1)
            ).changes
            _ = changes | f"{run}Log" >> beam.Map(lambda change, path: append_line(path, change), f"{tmp_path}/{run}")
        told.append(sorted(read_lines(f"{tmp_path}/{run}")))

    assert told[0] == told[1]
    assert {line.split("|")[0] for line in told[0]} == {"split", "link_removed"}


def append_line(path: str, change) -> None:
    with open(path, "a") as log:
        log.write("|".join([change.kind, change.message_id, *change.identities, *change.persons_after]) + "\n")


def read_lines(path: str) -> list[str]:
    with open(path) as log:
        return log.read().splitlines()


PRIVACY_KEY = b"k" * 32
ANN = Identity("Email", "ann@example.com")


def timestamped(record: ValidRecord) -> beam.window.TimestampedValue:
    return beam.window.TimestampedValue(record, record.publish_time_us / 1e6)


def suppress_ann_after(record: ValidRecord, privacy: str, refresh_s: float) -> ValidRecord:
    """Puts Ann on the suppression list once ``record`` has been stitched, and lets the refresh interval pass."""
    SuppressionList(privacy).add([identity_hash(PRIVACY_KEY, ANN)], "pj-1")
    time.sleep(refresh_s)
    return record


def test_a_suppression_added_while_a_streaming_run_goes_on_drops_the_later_records(tmp_path, registry):
    """The DirectRunner takes the next TestStream event once the pipeline is idle: the first login is stitched before
    Ann is suppressed, and her later events come after it."""
    store = f"sqlite:///{tmp_path}/identity.sqlite"
    privacy = str(tmp_path / "privacy.sqlite")
    suppression = Suppression(privacy, PRIVACY_KEY, refresh_s=0.2)
    SuppressionList(privacy).add(["someone else"], "pj-0")
    before = event("m1", 1, ECID=DEVICE, Email="Ann@Example.com")
    after = [event("m2", 2, Email="ann@example.com"), event("m3", 2, ECID=DEVICE)]
    stream = (
        TestStream()
        .add_elements([timestamped(before)])
        .add_elements([timestamped(record) for record in after])
        .advance_watermark_to_infinity()
    )
    pipeline = beam.Pipeline(options=PipelineOptions(streaming=True, runner="BundleBasedDirectRunner"))
    stitched = (
        pipeline | stream | StitchIdentities(registry, identity_store_handler(store), SETTINGS, suppression=suppression)
    ).records
    first = stitched | beam.Filter(lambda record: record.message_id == "m1")
    _ = first | beam.Map(suppress_ann_after, privacy, 2 * suppression.refresh_s)
    assert_that(stitched | beam.Map(lambda record: record.message_id), equal_to(["m1", "m3"]))
    # As profilestream run runs it: each DoFn kept across bundles (set up before Ann was suppressed), every bundle's
    # metrics kept.
    with patched_direct_runner(threading.Event()):
        result = pipeline.run()
        result.wait_until_finish()

    (suppressed,) = result.metrics().query(MetricsFilter().with_name(SUPPRESSED))["counters"]
    assert suppressed.committed == 1
