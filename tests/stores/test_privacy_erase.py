"""Erasing a person from the identity and profile stores (issue 15), on every backend.

Two persons, Ann and Bob, are written through the stores' own write paths; Ann is erased. Her facts, log entries,
views, fragments, index entries and redirects must be gone, Bob's must read exactly as before, and erasing again
must find nothing. Nothing the store holds may hold a byte of Ann's ids or person ids afterwards: a SQLite file with
its write-ahead log and shared-memory file, every key and value of a Redis database (and its append-only file once
rewritten), every cell of a Bigtable table. Identity stores run on SQLite and Redis, profile stores on Bigtable too,
from the contract tests' fixtures (the servers of tests/conftest.py, skipped when missing).
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from google.cloud.bigtable.data import ReadRowsQuery, RowMutationEntry, SetCell
from hypothesis import given
from hypothesis import strategies as st

from identity.model import GraphFacts, Identity, Observation, Stamp
from profiles.writer import ProfileWrite
from stores import sqlite_files
from stores.identity import IdentityStore
from stores.opening import open_identity_store, open_profile_store
from stores.profiles import ProfileStore
from tests.conftest import start_redis
from tests.stores import test_identity_store, test_profile_store
from tests.stores.test_identity_store import IDENTITIES, OBSERVATIONS, PROPERTY_SETTINGS, components, reference
from tests.stores.test_profile_store import OLD_SQLITE_LAYOUT, contents
from tools.local_servers import free_port

ANN = (
    Identity("Email", "ann@example.com"),
    Identity("ECID", "12345678901234567890123456789012345678"),
    Identity("CRMID", "crm-ann"),
)
BOB = (
    Identity("Email", "bob@example.com"),
    Identity("ECID", "98765432109876543210987654321098765432"),
    Identity("CRMID", "crm-bob"),
)
# Ann's first person id was retired when her CRM profile joined her web profile.
ANN_PERSON, ANN_RETIRED, BOB_PERSON = "p-ann-5f2c", "p-ann-old-77d1", "p-bob-93e0"
ANN_KEYS, BOB_KEYS = [str(identity) for identity in ANN], [str(identity) for identity in BOB]
DATASETS = ("profile_records", "experience_events")

# What must leave no byte behind: Ann's ids and person ids.
ANN_IDS, BOB_IDS = [identity.id.encode() for identity in ANN], [identity.id.encode() for identity in BOB]
ANN_TEXTS, BOB_TEXTS = [*ANN_IDS, ANN_PERSON.encode(), ANN_RETIRED.encode()], [*BOB_IDS, BOB_PERSON.encode()]

# The contract tests' fixtures, under names of their own here: URLs of empty stores of each backend.
identity_store_urls = test_identity_store.empty_store_url
profile_store_urls = test_profile_store.empty_store_url

IDENTITY_COUNTS = ("identities", "links", "log_entries")
PROFILE_COUNTS = ("views", "fragments", "index", "redirects")


def stamp(minute: int) -> Stamp:
    return Stamp(minute * 60_000_000, f"m{minute}")


def observe_both(store: IdentityStore) -> None:
    """Ann's and Bob's records, one identity at a time and then together, each batch logged."""
    for minute, identities in enumerate([ANN[:1], ANN[1:], ANN, BOB[:2], BOB], start=1):
        store.observe_and_log([Observation(identities, stamp(minute))], stamp(minute))


def logged_causes(store: IdentityStore) -> list[Stamp]:
    """The causes of the batches of :func:`observe_both` still logged."""
    return [batch.cause for batch in store.logged(f"m{minute}" for minute in range(1, 6))]


def view(person: str, keys: list[str], version: int) -> bytes:
    return json.dumps({"person": person, "identities": keys, "version": version}).encode()


def fragment_keys(keys: list[str]) -> list[str]:
    return [f"{key}|{dataset}" for key in keys for dataset in DATASETS]


def write_both(store: ProfileStore) -> None:
    """Ann's and Bob's profiles as flushes write them: deltas, a merge that retires Ann's first person id, views
    written again, a compaction."""
    store.write(
        ProfileWrite(
            deltas={key: view(ANN_RETIRED, [key], 1) for key in fragment_keys(ANN_KEYS[2:])},
            views={ANN_RETIRED: view(ANN_RETIRED, ANN_KEYS[2:], 1)},
            index=dict.fromkeys(ANN_KEYS[2:], ANN_RETIRED),
        )
    )
    for version in (1, 2):
        keys = fragment_keys(ANN_KEYS[:2] + BOB_KEYS)
        store.write(
            ProfileWrite(
                deltas={key: view(key, [key], version) for key in keys},
                views={
                    ANN_PERSON: view(ANN_PERSON, ANN_KEYS[:2], version),
                    BOB_PERSON: view(BOB_PERSON, BOB_KEYS, version),
                },
                index={**dict.fromkeys(ANN_KEYS[:2], ANN_PERSON), **dict.fromkeys(BOB_KEYS, BOB_PERSON)},
                expected=store.fragments(keys),
            )
        )
    store.write(
        ProfileWrite(
            views={ANN_PERSON: view(ANN_PERSON, ANN_KEYS, 3)},
            index=dict.fromkeys(ANN_KEYS, ANN_PERSON),
            redirects={ANN_RETIRED: ANN_PERSON},
            drop_views=(ANN_RETIRED,),
        )
    )
    compacted = fragment_keys(ANN_KEYS[:1] + BOB_KEYS[:1])
    expected = store.fragments(compacted)
    store.write(ProfileWrite(fragments={key: view(key, [key], 3) for key in compacted}, expected=expected))


def erase_ann(store: ProfileStore) -> dict[str, int]:
    persons = {ANN_PERSON} | store.retired_into([ANN_PERSON])
    return store.erase(persons, ANN_KEYS)


def counts(result: dict[str, int], names: tuple[str, ...]) -> dict[str, int]:
    return {name: result[name] for name in names}


def test_erasing_a_person_s_identities_leaves_the_other_person_s_facts(identity_store_urls: Callable[[], str]) -> None:
    with open_identity_store(identity_store_urls()) as store:
        observe_both(store)
        bob_before = store.facts_of(BOB)
        assert logged_causes(store) == [stamp(minute) for minute in range(1, 6)]

        erased = store.erase(ANN)

        assert counts(erased, IDENTITY_COUNTS) == {"identities": 3, "links": 3, "log_entries": 3}
        assert store.facts_of(ANN).sightings == {}
        assert store.facts_of(BOB) == bob_before
        assert logged_causes(store) == [stamp(4), stamp(5)]
        assert counts(store.erase(ANN), IDENTITY_COUNTS) == dict.fromkeys(IDENTITY_COUNTS, 0)


def test_a_component_held_together_by_an_erased_identity_comes_apart(identity_store_urls: Callable[[], str]) -> None:
    shared = Identity("Phone", "+441632960961")
    with open_identity_store(identity_store_urls()) as store:
        store.observe([Observation(ANN[:2], stamp(1)), Observation((ANN[1], shared), stamp(2))])
        store.observe([Observation(BOB[:2], stamp(3)), Observation((shared, BOB[0]), stamp(4))])

        store.erase([shared])

        assert set(store.facts_of([ANN[0]]).sightings) == set(ANN[:2])
        assert set(store.facts_of([BOB[0]]).sightings) == set(BOB[:2])
        # The parts are components of their own: a batch joining one changes nothing of the other.
        before, _ = store.observe([Observation((BOB[1], BOB[2]), stamp(5))])
        assert set(before.sightings) == set(BOB[:2])


@PROPERTY_SETTINGS
@given(
    observations=st.lists(OBSERVATIONS, max_size=6),
    erased=st.sets(IDENTITIES, max_size=3),
    later=st.lists(OBSERVATIONS, max_size=2),
)
def test_after_an_erase_reads_and_writes_find_the_raw_components_of_what_remains(
    identity_store_urls: Callable[[], str],
    observations: list[Observation],
    erased: set[Identity],
    later: list[Observation],
) -> None:
    facts = reference(observations)
    remaining = GraphFacts(
        {identity: stamp for identity, stamp in facts.sightings.items() if identity not in erased},
        {pair: link for pair, link in facts.links.items() if erased.isdisjoint(pair)},
    )
    touched = [identity for observation in later for identity in observation.identities]
    with open_identity_store(identity_store_urls()) as store:
        store.observe(observations)

        assert counts(store.erase(erased), IDENTITY_COUNTS) == {
            "identities": len(facts.sightings) - len(remaining.sightings),
            "links": len(facts.links) - len(remaining.links),
            "log_entries": 0,
        }
        assert store.facts_of(erased) == GraphFacts.empty()
        for identity in remaining.sightings:
            assert store.facts_of([identity]) == components(remaining, [identity])
        assert store.observe(later) == (
            components(remaining, touched),
            components(remaining.merged_with(later), touched),
        )


def test_erasing_a_person_leaves_the_other_person_s_profile(profile_store_urls: Callable[[], str]) -> None:
    with open_profile_store(profile_store_urls()) as store:
        write_both(store)
        bob_before = contents(store, [BOB_PERSON], BOB_KEYS, fragment_keys(BOB_KEYS))
        assert store.retired_into([ANN_PERSON]) == {ANN_RETIRED}

        erased = erase_ann(store)

        assert counts(erased, PROFILE_COUNTS) == {"views": 1, "fragments": 6, "index": 3, "redirects": 1}
        assert contents(store, [ANN_PERSON, ANN_RETIRED], ANN_KEYS, fragment_keys(ANN_KEYS)) == {
            "by_person": {ANN_PERSON: None, ANN_RETIRED: None},
            "by_identity": dict.fromkeys(ANN_KEYS),
            "fragments": {},
        }
        assert contents(store, [BOB_PERSON], BOB_KEYS, fragment_keys(BOB_KEYS)) == bob_before
        assert store.retired_into([ANN_PERSON]) == set()
        assert counts(store.erase([ANN_PERSON, ANN_RETIRED], ANN_KEYS), PROFILE_COUNTS) == dict.fromkeys(
            PROFILE_COUNTS, 0
        )


def test_an_erased_person_leaves_no_byte_in_an_identity_store(identity_store_urls: Callable[[], str]) -> None:
    with open_identity_store(identity_store_urls()) as store:
        observe_both(store)
        assert [text for text in ANN_IDS if text not in held_bytes(store)] == []

        erased = store.erase(ANN)

        assert erased.get("wal_truncated", 1) == 1  # SQLite's log, truncated
        held = held_bytes(store)
        assert [text for text in ANN_IDS if text in held] == []
        assert [text for text in BOB_IDS if text not in held] == []


def test_an_erased_person_leaves_no_byte_in_a_profile_store(profile_store_urls: Callable[[], str]) -> None:
    with open_profile_store(profile_store_urls()) as store:
        write_both(store)
        assert [text for text in ANN_TEXTS if text not in held_bytes(store)] == []

        erased = erase_ann(store)

        assert erased.get("wal_truncated", 1) == 1  # SQLite's log, truncated
        held = held_bytes(store)
        assert [text for text in ANN_TEXTS if text in held] == []
        assert [text for text in BOB_TEXTS if text not in held] == []


def test_an_identity_erased_from_a_person_that_stays_leaves_no_byte(profile_store_urls: Callable[[], str]) -> None:
    # The person's view holds no trace of the identity here: what is left of it is the store's own bookkeeping.
    with open_profile_store(profile_store_urls()) as store:
        store.write(ProfileWrite(views={BOB_PERSON: b"bob"}, index=dict.fromkeys(BOB_KEYS, BOB_PERSON)))

        erased = store.erase([], BOB_KEYS[2:])

        assert counts(erased, PROFILE_COUNTS) == {"views": 0, "fragments": 0, "index": 1, "redirects": 0}
        assert [store.view_by_identity(key) for key in BOB_KEYS] == [b"bob", b"bob", None]
        assert BOB[2].id.encode() not in held_bytes(store)


@pytest.mark.integration
def test_a_bigtable_erase_leaves_a_row_its_person_s_list_names_by_mistake(
    bigtable_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", bigtable_emulator)
    with open_profile_store(f"bigtable://test-project/test-instance/erase-{next(test_profile_store._TABLES)}") as store:
        write_both(store)
        # As a write that failed part-way may leave it: Ann's members list names Bob's email.
        member = SetCell("m", BOB_KEYS[0].encode(), b"")
        store._table.bulk_mutate_rows([RowMutationEntry(f"v#{ANN_PERSON}".encode(), [member])])
        bob_before = contents(store, [BOB_PERSON], BOB_KEYS, fragment_keys(BOB_KEYS))

        erase_ann(store)

        assert contents(store, [BOB_PERSON], BOB_KEYS, fragment_keys(BOB_KEYS)) == bob_before


def held_bytes(store: IdentityStore | ProfileStore) -> bytes:
    """Everything a store holds, as bytes: a SQLite file with its write-ahead log and shared-memory file as they are
    on disk; every key and value of a Redis database; every row key, column and value of a Bigtable table."""
    if hasattr(store, "_connection"):
        (_, _, path) = store._connection.execute("PRAGMA database_list").fetchone()
        files = [Path(path), Path(f"{path}-wal"), Path(f"{path}-shm")]
        return b"".join(file.read_bytes() for file in files if file.exists())
    if hasattr(store, "_client") and isinstance(store._client, redis.Redis):
        return b"\0".join(redis_items(store._client))
    return b"\0".join(
        part
        for row in store._table.read_rows(ReadRowsQuery())
        for cell in row.cells
        for part in (row.row_key, cell.qualifier, cell.value)
    )


def redis_items(client: redis.Redis) -> list[bytes]:
    """Every key of the database and every item of its value."""
    items = []
    for key in client.scan_iter():
        kind = client.type(key)
        items.append(key)
        if kind == b"string":
            items.append(client.get(key))
        elif kind == b"hash":
            items += itertools.chain.from_iterable(client.hgetall(key).items())
        else:
            assert kind == b"set", kind
            items += client.smembers(key)
    return items


@pytest.mark.integration
def test_an_erase_on_a_redis_with_an_append_only_file_rewrites_it(tmp_path: Path) -> None:
    port = free_port()
    server = start_redis(tmp_path, port, durable=True)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        with (
            open_identity_store(url) as identities,
            open_profile_store(url) as profiles,
            redis.Redis.from_url(url) as client,
        ):
            observe_both(identities)
            write_both(profiles)
            # Uncompressed, so that the bytes of a rewritten file can be searched.
            client.config_set("rdbcompression", "no")

            # The profile store's erase comes while the rewrite the identity store's started runs.
            assert identities.erase(ANN)["aof_rewrite"] == 1
            assert erase_ann(profiles)["aof_rewrite"] == 1
            wait_for_rewrite(client)
    finally:
        server.terminate()
        server.wait()
    files = b"".join(path.read_bytes() for path in (tmp_path / "appendonlydir").iterdir())
    assert [text for text in ANN_TEXTS if text in files] == []
    assert [text for text in BOB_TEXTS if text not in files] == []


def wait_for_rewrite(client: redis.Redis, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (info := client.info("persistence"))["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]:
        assert time.monotonic() < deadline, "the append-only file was not rewritten in time"
        time.sleep(0.05)
    assert info["aof_last_bgrewrite_status"] == "ok"


def test_a_log_a_reader_holds_is_reported_untruncated_and_an_erase_again_truncates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "profiles.sqlite"
    monkeypatch.setattr(sqlite_files, "TRUNCATE_ATTEMPTS", 1)
    with open_profile_store(f"sqlite:///{path}") as store, sqlite3.connect(path, isolation_level=None) as reader:
        write_both(store)
        store._connection.execute("PRAGMA busy_timeout=50")
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM views").fetchone()

        assert erase_ann(store)["wal_truncated"] == 0
        assert store.view_by_person(ANN_PERSON) is None

        reader.execute("COMMIT")
        assert store.erase([ANN_PERSON, ANN_RETIRED], ANN_KEYS) == {
            **dict.fromkeys(PROFILE_COUNTS, 0),
            "wal_truncated": 1,
        }
        assert [text for text in ANN_TEXTS if text in held_bytes(store)] == []


def test_stores_written_before_erase_existed_open_and_erase(tmp_path: Path) -> None:
    identity_path, profile_path = tmp_path / "identity.sqlite", tmp_path / "profiles.sqlite"
    with sqlite3.connect(profile_path) as old:
        old.executescript(OLD_SQLITE_LAYOUT)
        old.execute("INSERT INTO views VALUES (?, ?)", (ANN_PERSON, b"ann"))
        old.execute("INSERT INTO identity_index VALUES (?, ?)", (ANN_KEYS[0], ANN_PERSON))
        old.execute("INSERT INTO fragments VALUES (?, ?)", (f"{ANN_KEYS[0]}|profile_records", b"ann"))
    with open_identity_store(f"sqlite:///{identity_path}") as identities:
        observe_both(identities)
    with (
        open_identity_store(f"sqlite:///{identity_path}") as identities,
        open_profile_store(f"sqlite:///{profile_path}") as profiles,
    ):
        assert counts(identities.erase(ANN), IDENTITY_COUNTS) == {"identities": 3, "links": 3, "log_entries": 3}
        assert counts(profiles.erase([ANN_PERSON], ANN_KEYS), PROFILE_COUNTS) == {
            "views": 1,
            "fragments": 1,
            "index": 1,
            "redirects": 0,
        }
