"""Contract tests of the identity stores: each backend against the in-memory reference, ``GraphFacts.merged_with``.

Every test that takes ``empty_store_url`` runs on SQLite (files under tmp_path) and on a real Redis (the session's
redis-server from tests/conftest.py, flushed for each store). The oracle for ``observe``'s return value is
:func:`components`: the reference facts cut down to the raw components of some identities.
"""

from __future__ import annotations

import itertools
import random
import sqlite3
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from identity.graph import GRAPH_LIMIT, UNIQUE_NAMESPACE, GraphRules, resolve
from identity.model import GraphFacts, Identity, LinkFact, LoggedBatch, Observation, Stamp
from stores.opening import open_identity_store
from stores.sqlite_files import insert_rows

ECID = Identity("ECID", "12345678901234567890123456789012345678")
EMAIL = Identity("Email", "ada@example.com")
PHONE = Identity("Phone", "+441632960961")
CRM = Identity("CRMID", "c-1")
T1, T2, T3, T4 = (Stamp(minute * 60_000_000, f"m{minute}") for minute in (1, 2, 3, 4))

# Each example opens an empty store from the function-scoped factory ``empty_store_url``, which the health check
# cannot tell from a fixture whose state would leak between examples.
PROPERTY_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# Few values, so that examples repeat identities and stamps; characters that a store's encoding could trip on.
IDENTITIES = st.builds(Identity, st.sampled_from(["ECID", "Email"]), st.text(alphabet='1:\t"é\x00', max_size=2))
STAMPS = st.builds(
    Stamp,
    st.one_of(st.integers(-2, 2), st.sampled_from([-(2**63), 2**63 - 1])),
    st.text(alphabet="m1\t|é\x00", max_size=2),
)
OBSERVATIONS = st.builds(Observation, st.lists(IDENTITIES, max_size=3).map(tuple), STAMPS)


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.integration)])
def empty_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Makes URLs of empty stores of the backend under test: a new SQLite file, or the session's Redis flushed."""
    if request.param == "sqlite":
        files = itertools.count()
        return lambda: f"sqlite:///{tmp_path / f'identity-{next(files)}.sqlite'}"
    url = request.getfixturevalue("redis_server")
    return lambda: flushed(url)


def flushed(url: str) -> str:
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


def reference(observations: Iterable[Observation]) -> GraphFacts:
    return GraphFacts.empty().merged_with(observations)


def components(facts: GraphFacts, identities: Iterable[Identity]) -> GraphFacts:
    """The facts of the raw components of these identities: everything linked to them, directly or not."""
    neighbours = defaultdict(set)
    for a, b in facts.links:
        neighbours[a].add(b)
        neighbours[b].add(a)
    members = {identity for identity in identities if identity in facts.sightings}
    frontier = list(members)
    while frontier:
        for neighbour in neighbours[frontier.pop()] - members:
            members.add(neighbour)
            frontier.append(neighbour)
    return GraphFacts(
        {identity: facts.sightings[identity] for identity in members},
        {pair: link for pair, link in facts.links.items() if pair[0] in members},
    )


def test_a_single_identity_is_a_sighting_without_links(empty_store_url: Callable[[], str]) -> None:
    with open_identity_store(empty_store_url()) as store:
        assert store.observe([Observation((ECID,), T1)]) == (GraphFacts.empty(), GraphFacts({ECID: T1}, {}))


def test_an_empty_batch_returns_no_facts(empty_store_url: Callable[[], str]) -> None:
    with open_identity_store(empty_store_url()) as store:
        assert store.observe([]) == (GraphFacts.empty(), GraphFacts.empty())


def test_identities_of_one_record_are_linked_into_one_component(empty_store_url: Callable[[], str]) -> None:
    with open_identity_store(empty_store_url()) as store:
        store.observe([Observation((EMAIL, ECID), T1)])
        assert store.facts_of([ECID]) == GraphFacts(
            {ECID: T1, EMAIL: T1}, {(ECID, EMAIL): LinkFact(ECID, EMAIL, T1, T1)}
        )


def test_identities_of_separate_records_stay_in_separate_components(empty_store_url: Callable[[], str]) -> None:
    with open_identity_store(empty_store_url()) as store:
        store.observe([Observation((ECID,), T1), Observation((EMAIL, PHONE), T2)])
        assert store.facts_of([ECID]) == GraphFacts({ECID: T1}, {})


def test_before_and_after_are_the_touched_components_as_the_reference_has_them(
    empty_store_url: Callable[[], str],
) -> None:
    first = [Observation((ECID, EMAIL), T2), Observation((PHONE,), T1), Observation((CRM,), T3)]
    second = [Observation((EMAIL, PHONE), T1), Observation((ECID,), T4)]
    touched = [EMAIL, PHONE, ECID]
    with open_identity_store(empty_store_url()) as store:
        store.observe(first)
        assert store.observe(second) == (
            components(reference(first), touched),
            components(reference(first + second), touched),
        )


def test_a_sighting_keeps_its_earliest_stamp_whatever_the_arrival_order(empty_store_url: Callable[[], str]) -> None:
    with open_identity_store(empty_store_url()) as store:
        for stamp in (T3, T1, T4, T2):
            store.observe([Observation((ECID,), stamp)])
        assert store.facts_of([ECID]).sightings == {ECID: T1}


def test_a_link_keeps_its_earliest_and_latest_stamps_whatever_the_arrival_order(
    empty_store_url: Callable[[], str],
) -> None:
    with open_identity_store(empty_store_url()) as store:
        for stamp in (T2, T4, T1, T3):
            store.observe([Observation((ECID, EMAIL), stamp)])
        assert store.facts_of([ECID]).links == {(ECID, EMAIL): LinkFact(ECID, EMAIL, T1, T4)}


def test_stamps_of_the_same_time_are_ordered_by_message_id(empty_store_url: Callable[[], str]) -> None:
    # As strings: "m10" < "m9"; and "m9é" (é is two bytes in UTF-8) sorts after "m9" as a longer string does.
    stamps = [Stamp(5, "m9"), Stamp(5, "m10"), Stamp(5, "m9é")]
    with open_identity_store(empty_store_url()) as store:
        for stamp in stamps:
            store.observe([Observation((ECID, EMAIL), stamp)])
        assert store.facts_of([ECID]).links[(ECID, EMAIL)] == LinkFact(ECID, EMAIL, Stamp(5, "m10"), Stamp(5, "m9é"))


def test_a_link_between_two_components_merges_them(empty_store_url: Callable[[], str]) -> None:
    left, right = [Observation((ECID, EMAIL), T1)], [Observation((PHONE, CRM), T2)]
    joining = [Observation((EMAIL, PHONE), T3)]
    with open_identity_store(empty_store_url()) as store:
        store.observe(left)
        store.observe(right)
        assert store.observe(joining) == (reference(left + right), reference(left + right + joining))


def test_facts_of_reads_what_observe_returned_after(empty_store_url: Callable[[], str]) -> None:
    with open_identity_store(empty_store_url()) as store:
        store.observe([Observation((ECID, EMAIL), T1)])
        _, after = store.observe([Observation((EMAIL, PHONE), T2)])
        assert store.facts_of([PHONE]) == after


def test_facts_of_an_unknown_identity_is_empty(empty_store_url: Callable[[], str]) -> None:
    with open_identity_store(empty_store_url()) as store:
        store.observe([Observation((ECID, EMAIL), T1)])
        assert store.facts_of([CRM]) == GraphFacts.empty()


def test_a_reopened_store_has_the_facts_of_the_last(empty_store_url: Callable[[], str]) -> None:
    url = empty_store_url()
    with open_identity_store(url) as store:
        store.observe([Observation((ECID, EMAIL), T1)])
    with open_identity_store(url) as store:
        assert store.facts_of([EMAIL]) == reference([Observation((ECID, EMAIL), T1)])


def test_odd_characters_and_extreme_times_come_back_unchanged(empty_store_url: Callable[[], str]) -> None:
    odd = [Identity("Email", 'a\tb:c"d\\e\x00f'), Identity("ECID", "é😀"), Identity("E:x", "1")]
    observations = [
        Observation(tuple(odd), Stamp(-(2**63), "m\t1\x00😀")),
        Observation(tuple(odd[:2]), Stamp(2**63 - 1, "|:")),
    ]
    with open_identity_store(empty_store_url()) as store:
        store.observe(observations)
        assert store.facts_of(odd[:1]) == reference(observations)


def test_components_of_thousands_of_identities_merge(empty_store_url: Callable[[], str]) -> None:
    # Past what one command of a Redis script can take: Lua unpacks about 8,000 arguments at most.
    chain = [Identity("ECID", str(n)) for n in range(10_000)]
    left = [Observation((a, b), T1) for a, b in itertools.pairwise(chain[:5500])]
    right = [Observation((a, b), T2) for a, b in itertools.pairwise(chain[5500:])]
    joining = [Observation((chain[0], chain[-1]), T3)]
    with open_identity_store(empty_store_url()) as store:
        store.observe(left)
        store.observe(right)
        store.observe(joining)
        assert store.facts_of(chain[:1]) == reference(left + right + joining)


def test_an_in_memory_sqlite_store_works_like_a_file() -> None:
    with open_identity_store("sqlite:///:memory:") as store:
        assert store.observe([Observation((ECID,), T1)]) == (GraphFacts.empty(), GraphFacts({ECID: T1}, {}))


@pytest.mark.parametrize(
    "url",
    [
        "mysql://localhost/identity",
        "data/identity.sqlite",
        "sqlite://host/identity.sqlite",
        "sqlite:///",
        "redis://localhost:port/0",
        "redis://localhost:6379/zero",
    ],
)
def test_an_unknown_or_malformed_url_is_a_one_line_value_error(url: str) -> None:
    with pytest.raises(ValueError, match=r"^[^\n]*$"):
        open_identity_store(url)


@PROPERTY_SETTINGS
@given(observations=st.lists(OBSERVATIONS, max_size=12), data=st.data())
def test_any_order_and_batching_ends_with_the_reference_facts(
    empty_store_url: Callable[[], str], observations: list[Observation], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(observations))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(shuffled)), max_size=4)))
    with open_identity_store(empty_store_url()) as store:
        for start, end in itertools.pairwise([0, *cuts, len(shuffled)]):
            store.observe(shuffled[start:end])
        expected = reference(observations)
        assert store.facts_of(expected.sightings) == expected


@PROPERTY_SETTINGS
@given(batches=st.lists(st.lists(OBSERVATIONS, max_size=4), max_size=5))
def test_every_observe_returns_its_components_before_and_after(
    empty_store_url: Callable[[], str], batches: list[list[Observation]]
) -> None:
    stored = GraphFacts.empty()
    with open_identity_store(empty_store_url()) as store:
        for batch in batches:
            touched = [identity for observation in batch for identity in observation.identities]
            before, stored = components(stored, touched), stored.merged_with(batch)
            assert store.observe(batch) == (before, components(stored, touched))


def test_parallel_writers_end_with_the_facts_of_one(empty_store_url: Callable[[], str]) -> None:
    writers, batch_size = 4, 20
    rng = random.Random(3)
    # About one link per identity, so components grow and merge while the writers run.
    pool = [Identity(namespace, str(n)) for namespace in ("ECID", "Email", "CRMID") for n in range(400)]
    observations = [
        Observation(tuple(rng.sample(pool, rng.choice([1, 1, 2, 3]))), Stamp(rng.randrange(100), f"m{n}"))
        for n in range(1000)
    ]
    # Every observation goes to one writer, in turn, and many to a second one too (a redelivery).
    shares = [[o for n, o in enumerate(observations) if w in (n % writers, n % 5)] for w in range(writers)]
    url = empty_store_url()
    start = threading.Barrier(writers, timeout=60)

    def write(share: list[Observation]) -> None:
        with open_identity_store(url) as store:
            start.wait()
            for first in range(0, len(share), batch_size):
                store.observe(share[first : first + batch_size])

    with ThreadPoolExecutor(writers) as executor:
        list(executor.map(write, shares))
    expected = reference(observations)
    with open_identity_store(url) as store:
        facts = store.facts_of(expected.sightings)
    assert facts == expected
    # And so the same graph, with the linking rules firing on this traffic (second CRM ids, groups over the limit).
    rules = GraphRules(unique_namespaces=frozenset({"CRMID"}), max_identities=8, quarantine_links=6)
    graph = resolve(facts, rules)
    assert graph == resolve(expected, rules)
    assert {UNIQUE_NAMESPACE, GRAPH_LIMIT} <= set(graph.removed.values())


@pytest.mark.integration
def test_observe_on_redis_is_one_round_trip_per_call(redis_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(connection: redis.connection.AbstractConnection, command: object, check_health: bool = True) -> None:
        sent.append(command)
        send(connection, command, check_health)

    with open_identity_store(flushed(redis_server)) as store:
        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
        store.observe([Observation((ECID, EMAIL), T1), Observation((PHONE,), T2)])
        store.observe([Observation((EMAIL, PHONE, CRM), T3)])
        assert len(sent) == 2


@pytest.mark.integration
def test_a_redis_store_carries_on_when_the_server_has_lost_its_scripts(redis_server: str) -> None:
    with open_identity_store(flushed(redis_server)) as store, redis.Redis.from_url(redis_server) as client:
        client.script_flush()
        assert store.observe([Observation((ECID,), T1)]) == (GraphFacts.empty(), GraphFacts({ECID: T1}, {}))


# The change log.


def test_a_batch_that_adds_facts_is_logged_with_its_cause_and_the_facts_before(
    empty_store_url: Callable[[], str],
) -> None:
    first = [Observation((ECID, EMAIL), T1)]
    second = [Observation((EMAIL, PHONE), T2), Observation((CRM,), T3)]
    with open_identity_store(empty_store_url()) as store:
        store.observe(first)
        before, _, entry = store.observe_and_log(second, T3)

        (logged,) = store.logged(["m3", "unknown"])

    assert entry is not None
    assert logged == LoggedBatch(entry, T3, before, reference(second))
    assert before == reference(first)


def test_a_batch_that_adds_no_fact_and_a_batch_without_a_cause_are_not_logged(
    empty_store_url: Callable[[], str],
) -> None:
    with open_identity_store(empty_store_url()) as store:
        assert store.observe_and_log([Observation((ECID, EMAIL), T2)], None)[2] is None
        assert store.observe_and_log([Observation((ECID, EMAIL), T2)], T2)[2] is None
        assert store.logged(["m2"]) == []


def test_a_discarded_entry_goes_with_the_next_write(empty_store_url: Callable[[], str]) -> None:
    with open_identity_store(empty_store_url()) as store:
        _, _, entry = store.observe_and_log([Observation((ECID,), T1)], T1)
        _, _, kept = store.observe_and_log([Observation((EMAIL,), T1)], T1)
        store.discard(entry)
        assert [logged.entry for logged in store.logged(["m1"])] == [entry, kept]

        store.observe_and_log([Observation((PHONE,), T2)], T2)

        assert [logged.entry for logged in store.logged(["m1"])] == [kept]


def test_the_log_outlives_the_store_object(empty_store_url: Callable[[], str]) -> None:
    url = empty_store_url()
    with open_identity_store(url) as store:
        _, _, entry = store.observe_and_log([Observation((ECID, EMAIL), T1)], T1)
    with open_identity_store(url) as reopened:
        assert reopened.logged(["m1"]) == [
            LoggedBatch(entry, T1, GraphFacts.empty(), reference([Observation((ECID, EMAIL), T1)]))
        ]


@given(facts=st.lists(OBSERVATIONS, max_size=6))
def test_facts_survive_their_byte_form(facts: list[Observation]) -> None:
    written = reference(facts)
    assert GraphFacts.from_bytes(written.to_bytes()) == written


@given(known=st.lists(OBSERVATIONS, max_size=5), new=st.lists(OBSERVATIONS, max_size=3))
def test_facts_add_to_others_exactly_when_their_union_differs(known: list[Observation], new: list[Observation]) -> None:
    before, batch = reference(known), reference(new)
    assert batch.adds_to(before) == (before.union(batch) != before)


@given(known=st.lists(OBSERVATIONS, max_size=5), new=st.lists(OBSERVATIONS, max_size=3))
def test_the_additions_of_facts_are_what_their_union_needs(known: list[Observation], new: list[Observation]) -> None:
    before, batch = reference(known), reference(new)
    additions = batch.additions_to(before)
    assert before.union(additions) == before.union(batch)
    assert additions.additions_to(before) == additions  # each of them adds something


def test_facts_in_byte_form_are_compact_json_of_positions_and_stamps() -> None:
    facts = GraphFacts({EMAIL: T2, ECID: T1}, {(ECID, EMAIL): LinkFact(ECID, EMAIL, T1, T2)})
    assert facts.to_bytes() == (
        b'{"s":[["Email","ada@example.com",120000000,"m2"],["ECID","12345678901234567890123456789012345678",60000000,'
        b'"m1"]],"l":[[1,0,60000000,"m1",120000000,"m2"]]}'
    )


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.tuples(st.sampled_from("abcdef\x00é"), st.integers(-3, 3)), max_size=600))
def test_inserting_many_rows_a_statement_is_inserting_them_one_by_one(rows: list[tuple[str, int]]) -> None:
    """insert_rows (chunks of powers of two, several for over ROWS_PER_INSERT rows) leaves what executemany leaves,
    keys repeated within a chunk included."""
    upsert = "ON CONFLICT (key) DO UPDATE SET total = total * 3 + excluded.total"
    left, right = sqlite3.connect(":memory:"), sqlite3.connect(":memory:")
    for connection in (left, right):
        connection.execute("CREATE TABLE t (key TEXT PRIMARY KEY, total INTEGER NOT NULL)")
    insert_rows(left, f"INSERT INTO t VALUES {{rows}} {upsert}", rows)
    right.executemany(f"INSERT INTO t VALUES (?, ?) {upsert}", rows)
    assert (
        left.execute("SELECT * FROM t ORDER BY key").fetchall()
        == right.execute("SELECT * FROM t ORDER BY key").fetchall()
    )
