"""Two processes flushing profiles of one person at once lose no update, on SQLite and on a real Redis.

After a merge, one person's records can sit in two shards of MergeProfiles, and each shard's flush reads the
person's fragments, applies its records and writes them back. Here two processes do that many times over, each with
its own :class:`~transforms.merge_profiles.ProfileWriter` and store connections, for records that all land in the
same fragment and the same view: each writes events the other never sees. The fragment and the view must end up
with every event of both.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest
import redis

from core.records import ValidRecord
from identity.stitching import link_batch, record_identities
from pipelines.config import Config
from profiles.model import view_from_bytes
from profiles.writer import ProfileSettings, ProfileWriter, merge_stored
from schemas.registry import SchemaRegistry
from stores.opening import open_identity_store, open_profile_store

EVENT_SCHEMA = "https://ns.adobe.com/xdm/context/experienceevent"
BASE_US = 1_793_523_600_000_000  # 2026-11-01T09:00:00Z
ANN_EMAIL = "ann@example.com"
DEVICE = "1" * 38
ROUNDS = 40
FRAGMENT = f"Email:{ANN_EMAIL}|experience_events"
STITCH = Config().stitch_settings()


def event(event_id: str, second: int, **identities: str) -> ValidRecord:
    entity = {
        "_id": event_id,
        "timestamp": f"2026-11-01T09:{second // 60:02d}:{second % 60:02d}Z",
        "eventType": "web.webpagedetails.pageViews",
        "identityMap": {namespace: [{"id": value}] for namespace, value in identities.items()},
    }
    publish_us = BASE_US + second * 1_000_000
    return ValidRecord("experience_events", EVENT_SCHEMA, entity, event_id, 0, publish_us, publish_us)


def side_events(side: str) -> list[ValidRecord]:
    # Both sides' records have the e-mail as their highest-priority identity, so they all go to one fragment; side
    # "a" also carries the device, which the merge below joined to the e-mail's person.
    identities = {"Email": ANN_EMAIL, "ECID": DEVICE} if side == "a" else {"Email": ANN_EMAIL}
    return [event(f"{side}-{round_}", round_, **identities) for round_ in range(ROUNDS)]


def flush_side(side: str, identity_url: str, profile_url: str, start: multiprocessing.synchronize.Event) -> None:
    registry = SchemaRegistry.load()
    writer = ProfileWriter(
        registry, open_identity_store(identity_url), open_profile_store(profile_url), STITCH, ProfileSettings()
    )
    start.wait(timeout=60)
    for record in side_events(side):
        writer.write([record], [])
    writer.close()


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def profile_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'profiles.sqlite'}"
    url = request.getfixturevalue("redis_server")
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


def test_two_processes_flushing_one_persons_fragments_lose_no_update(tmp_path: Path, profile_url: str) -> None:
    registry = SchemaRegistry.load()
    identity_url = f"sqlite:///{tmp_path / 'identity.sqlite'}"
    # The merge: the device's person and the e-mail's become one.
    merge = [
        event("device", 0, ECID=DEVICE),
        event("email", 0, Email=ANN_EMAIL),
        event("both", 1, **{"ECID": DEVICE, "Email": ANN_EMAIL}),
    ]
    with open_identity_store(identity_url) as identities:
        link_batch(identities, STITCH.graph, [record_identities(record, registry, STITCH) for record in merge])

    # Forked, so that both start from this process's imports and only the writes race.
    context = multiprocessing.get_context("fork")
    start = context.Event()
    sides = [context.Process(target=flush_side, args=(side, identity_url, profile_url, start)) for side in "ab"]
    for process in sides:
        process.start()
    start.set()
    for process in sides:
        process.join(timeout=120)
    assert [process.exitcode for process in sides] == [0, 0]

    expected = sorted(record.entity["_id"] for side in "ab" for record in side_events(side))
    with open_profile_store(profile_url) as store:
        fragment = merge_stored(None, store.fragments([FRAGMENT])[FRAGMENT])
        view = view_from_bytes(store.view_by_identity(f"ECID:{DEVICE}"))
    assert sorted(fragment.events) == expected
    assert view["events"]["count"] == len(expected)
