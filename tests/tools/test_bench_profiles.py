"""The profile benchmark's pieces on a tiny traffic: the generated flushes, the write figure against SQLite (and the
session's Redis), and the lookup load against the real uvicorn server in a thread of this process."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import redis

from pipelines.config import Config
from service.api import create_app
from stores.opening import open_profile_store
from tests.service.test_api import running_server
from tools.bench_profiles import (
    Traffic,
    generate,
    lookup_latency,
    lookups,
    open_raw_cells,
    write_in_turns,
)

PEOPLE = 12
TOKEN = "bench-token"


@pytest.fixture(scope="module")
def traffic() -> Traffic:
    return generate(PEOPLE)


def test_the_traffic_is_a_function_of_the_seed(traffic):
    assert generate(PEOPLE) == traffic
    assert generate(PEOPLE, seed=1) != traffic


def test_each_flush_writes_its_person_view_and_indexes_all_their_identities(traffic):
    identities = {someone.person_id: someone.identities for someone in traffic.people}
    for flush in traffic.flushes:
        assert list(flush.write.views) == [flush.person_id]
        assert flush.write.index == dict.fromkeys(identities[flush.person_id], flush.person_id)
        assert {*flush.write.fragments, *flush.write.deltas} <= set(flush.keys)
    assert len(traffic.flushes) > len(traffic.people)  # people come back: later flushes read what earlier ones wrote


def assert_writes_fill_the_store(traffic: Traffic, store_url: str, cells_url: str) -> None:
    with open_profile_store(store_url) as store, contextlib.closing(open_raw_cells(cells_url)) as cells:
        profiles, raw = write_in_turns(store, cells, traffic.flushes, turn=5)
        for someone in traffic.people:
            view = json.loads(store.view_by_identity(someone.identities[-1]))
            assert view["person_id"] == someone.person_id
            assert [f"{i['namespace']}:{i['id']}" for i in view["identities"]] == list(someone.identities)
            assert cells.get(f"v:{someone.person_id}") == store.view_by_person(someone.person_id)
    assert (profiles.count, raw.count) == (len(traffic.flushes), len(traffic.flushes))
    assert profiles.per_s > 0 and raw.per_s > 0


def test_the_writes_fill_a_sqlite_store_and_the_raw_cells(traffic, tmp_path: Path):
    assert_writes_fill_the_store(traffic, f"sqlite:///{tmp_path}/profiles.sqlite", f"sqlite:///{tmp_path}/raw.sqlite")


@pytest.mark.integration
def test_the_writes_fill_a_redis_store_and_the_raw_cells(traffic, redis_server):
    with redis.Redis.from_url(redis_server) as client:
        client.flushdb()
    assert_writes_fill_the_store(traffic, redis_server, redis_server)


def test_the_lookup_load_times_every_lookup_on_each_side(traffic, tmp_path: Path):
    store_url, cells_url = f"sqlite:///{tmp_path}/profiles.sqlite", f"sqlite:///{tmp_path}/raw.sqlite"
    chosen = lookups(traffic.people, 24)
    assert {lookup.by for lookup in chosen} == {"identity", "person"}
    with open_profile_store(store_url) as store, contextlib.closing(open_raw_cells(cells_url)) as cells:
        write_in_turns(store, cells, traffic.flushes)
        with running_server(create_app(store, Config().stitch_settings(), TOKEN)) as base_url:
            measured = lookup_latency(base_url, TOKEN, store, cells, chosen, clients=2, turn=8)
    assert set(measured) == {"http", "store", "raw"}
    for latency in measured.values():
        assert len(latency.seconds) == len(chosen)
        assert 0 < latency.p50_ms <= latency.p99_ms and latency.per_s > 0
