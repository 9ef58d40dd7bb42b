"""Contract tests of the profile stores: each backend against :class:`Reference`, the contract in plain Python.

Every test that takes ``empty_store_url`` runs on SQLite (files under tmp_path), on a real Redis (the session's
redis-server from tests/conftest.py, flushed for each store) and on Google's Bigtable emulator (the session's, a new
table for each store). Documents are opaque bytes to a store, so small byte strings stand for views and fragments.
"""

from __future__ import annotations

import itertools
import random
import socket
import sqlite3
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
import redis
from google.cloud import bigtable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiles.writer import ProfileWrite, ProfileWriteConflict, StoredFragment, delta_id
from stores.errors import StoreUnavailableError
from stores.opening import open_profile_store
from stores.profiles import ProfileStore

ADA, BOB, CAT = "p-ada", "p-bob", "p-cat"
ADA_EMAIL, ADA_ECID, BOB_EMAIL, BOB_PHONE, CAT_EMAIL = (
    "Email:ada@example.com",
    "ECID:12345678901234567890123456789012345678",
    "Email:bob@example.com",
    "Phone:+441632960961",
    "Email:cat@example.com",
)
PERSONS = (ADA, BOB, CAT)
IDENTITIES = (ADA_EMAIL, ADA_ECID, BOB_EMAIL, BOB_PHONE, CAT_EMAIL)
FRAGMENT_KEYS = (f"{ADA_EMAIL}|profile_records", f"{ADA_ECID}|experience_events", f"{BOB_EMAIL}|profile_records")

# Each example opens an empty store from the function-scoped factory ``empty_store_url``, which the health check
# cannot tell from a fixture whose state would leak between examples.
PROPERTY_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
DOCS = st.binary(max_size=3)
WRITES = st.builds(
    ProfileWrite,
    deltas=st.dictionaries(st.sampled_from(FRAGMENT_KEYS), DOCS, max_size=2),
    fragments=st.dictionaries(st.sampled_from(FRAGMENT_KEYS), DOCS, max_size=2),
    views=st.dictionaries(st.sampled_from(PERSONS), DOCS, max_size=2),
    index=st.dictionaries(st.sampled_from(IDENTITIES), st.sampled_from(PERSONS), max_size=3),
    unindex=st.lists(st.sampled_from(IDENTITIES), max_size=2).map(tuple),
    redirects=st.dictionaries(st.sampled_from(PERSONS), st.sampled_from(PERSONS), max_size=2),
    drop_views=st.lists(st.sampled_from(PERSONS), max_size=2).map(tuple),
)

# Tables of the session's emulator, one per store: tests share the emulator.
_TABLES = itertools.count()


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param("redis", marks=pytest.mark.integration),
        pytest.param("bigtable", marks=pytest.mark.integration),
    ]
)
def empty_store_url(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], str]:
    """Makes URLs of empty stores of the backend under test: a new SQLite file, the session's Redis flushed, or a new
    table on the session's Bigtable emulator."""
    if request.param == "sqlite":
        files = itertools.count()
        return lambda: f"sqlite:///{tmp_path / f'profiles-{next(files)}.sqlite'}"
    if request.param == "redis":
        url = request.getfixturevalue("redis_server")
        return lambda: flushed(url)
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", request.getfixturevalue("bigtable_emulator"))
    return lambda: f"bigtable://test-project/test-instance/profiles-{next(_TABLES)}"


def flushed(url: str) -> str:
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


class Reference:
    """The contract: what every backend's lookups answer after the same writes.

    A write drops views and index entries, then puts fragment bases (dropping the deltas it read of them), appends
    deltas under their names, and puts views and index entries; a person given a view is
    live, and loses its redirect; then the redirects are set in order, each resolved against those before it.
    Redirects stay one step long: a redirect to a redirected person goes to the end of the chain, and the redirects
    to a person merged away move to its survivor; a redirect to a person that redirects to the retired one (merged the
    other way before) replaces that one. A lookup by person follows the person's redirect if it has one (which hides
    its own view), and a lookup by identity is the lookup of its person.
    """

    def __init__(self) -> None:
        self.fragments: dict[str, StoredFragment] = {}
        self.views: dict[str, bytes] = {}
        self.index: dict[str, str] = {}
        self.redirects: dict[str, str] = {}

    def write(self, change: ProfileWrite) -> None:
        for person in change.drop_views:
            self.views.pop(person, None)
        for identity in change.unindex:
            self.index.pop(identity, None)
        for key, doc in change.fragments.items():
            read = change.expected.get(key) or StoredFragment(None, {})
            held = self.fragments.get(key, StoredFragment(None, {})).deltas
            self.fragments[key] = StoredFragment(
                doc, {name: delta for name, delta in held.items() if name not in read.deltas}
            )
        for key, doc in change.deltas.items():
            held = self.fragments.get(key, StoredFragment(None, {}))
            self.fragments[key] = StoredFragment(held.base, {**held.deltas, delta_id(doc): doc})
        self.views.update(change.views)
        self.index.update(change.index)
        for person in change.views:
            self.redirects.pop(person, None)
        for retired, survivor in change.redirects.items():
            if retired == survivor:
                continue
            target = self.redirects.get(survivor, survivor)
            if target == retired:
                del self.redirects[survivor]
                target = survivor
            self.redirects[retired] = target
            for person, redirect in self.redirects.items():
                if redirect == retired:
                    self.redirects[person] = target

    def view_by_person(self, person: str) -> bytes | None:
        return self.views.get(self.redirects.get(person, person))

    def view_by_identity(self, identity: str) -> bytes | None:
        return self.view_by_person(self.index[identity]) if identity in self.index else None


def contents(
    store: ProfileStore | Reference,
    persons: Iterable[str] = PERSONS,
    identities: Iterable[str] = IDENTITIES,
    fragment_keys: Iterable[str] = FRAGMENT_KEYS,
) -> dict[str, object]:
    """Everything a store answers about these keys: each lookup, and the fragments."""
    fragment_keys = list(fragment_keys)
    fragments = (
        {key: doc for key, doc in store.fragments.items() if key in fragment_keys}
        if isinstance(store, Reference)
        else store.fragments(fragment_keys)
    )
    return {
        "by_person": {person: store.view_by_person(person) for person in persons},
        "by_identity": {identity: store.view_by_identity(identity) for identity in identities},
        "fragments": fragments,
    }


def written(changes: Iterable[ProfileWrite]) -> Reference:
    reference = Reference()
    for change in changes:
        reference.write(change)
    return reference


# Stories: Ada and Bob have profiles; then Ada's email turns up with Bob's phone, and Bob (merged away) joins Ada.
PROFILES = ProfileWrite(
    fragments={FRAGMENT_KEYS[0]: b"ada-crm", FRAGMENT_KEYS[2]: b"bob-crm"},
    views={ADA: b"ada", BOB: b"bob"},
    index={ADA_EMAIL: ADA, ADA_ECID: ADA, BOB_EMAIL: BOB, BOB_PHONE: BOB},
)
MERGE = ProfileWrite(
    views={ADA: b"ada+bob"},
    index={BOB_EMAIL: ADA, BOB_PHONE: ADA},
    redirects={BOB: ADA},
    drop_views=(BOB,),
)
# The link was wrong after all: Bob is split off again, under a new person id, and Ada's ECID is deleted.
SPLIT = ProfileWrite(
    views={ADA: b"ada-again", CAT: b"bob-as-cat"},
    index={BOB_EMAIL: CAT, BOB_PHONE: CAT},
    unindex=(ADA_ECID,),
)


def test_fragments_come_back_by_key_and_absent_keys_are_left_out(empty_store_url: Callable[[], str]) -> None:
    with open_profile_store(empty_store_url()) as store:
        store.write(ProfileWrite(fragments={FRAGMENT_KEYS[0]: b"crm", FRAGMENT_KEYS[1]: b"web"}))
        assert store.fragments([FRAGMENT_KEYS[1], FRAGMENT_KEYS[2], FRAGMENT_KEYS[1]]) == {
            FRAGMENT_KEYS[1]: StoredFragment(b"web", {})
        }
        assert store.fragments([]) == {}


def test_deltas_come_back_by_name_beside_the_base_and_appending_one_again_changes_nothing(
    empty_store_url: Callable[[], str],
) -> None:
    with open_profile_store(empty_store_url()) as store:
        store.write(ProfileWrite(fragments={FRAGMENT_KEYS[0]: b"base"}, deltas={FRAGMENT_KEYS[1]: b"d1"}))
        for _ in range(2):
            store.write(ProfileWrite(deltas={FRAGMENT_KEYS[0]: b"d2", FRAGMENT_KEYS[1]: b"d3"}))
        assert store.fragments(FRAGMENT_KEYS) == {
            FRAGMENT_KEYS[0]: StoredFragment(b"base", {delta_id(b"d2"): b"d2"}),
            FRAGMENT_KEYS[1]: StoredFragment(None, {delta_id(b"d1"): b"d1", delta_id(b"d3"): b"d3"}),
        }


def test_a_compaction_replaces_the_base_and_drops_the_deltas_it_read(empty_store_url: Callable[[], str]) -> None:
    key = FRAGMENT_KEYS[0]
    with open_profile_store(empty_store_url()) as store:
        store.write(ProfileWrite(fragments={key: b"base"}, deltas={key: b"d1"}))
        store.write(ProfileWrite(deltas={key: b"d2"}))
        read = store.fragments([key])[key]
        store.write(ProfileWrite(fragments={key: b"base+d1+d2"}, views={ADA: b"ada"}, expected={key: read}))
        assert store.fragments([key]) == {key: StoredFragment(b"base+d1+d2", {})}


def test_a_later_fragment_replaces_the_earlier(empty_store_url: Callable[[], str]) -> None:
    with open_profile_store(empty_store_url()) as store:
        store.write(ProfileWrite(fragments={FRAGMENT_KEYS[0]: b"old"}))
        store.write(ProfileWrite(fragments={FRAGMENT_KEYS[0]: b"new"}))
        assert store.fragments(FRAGMENT_KEYS) == {FRAGMENT_KEYS[0]: StoredFragment(b"new", {})}


def test_a_view_is_found_by_each_of_its_identities_and_by_person(empty_store_url: Callable[[], str]) -> None:
    with open_profile_store(empty_store_url()) as store:
        store.write(PROFILES)
        assert contents(store) == contents(written([PROFILES]))
        assert [store.view_by_identity(ADA_ECID), store.view_by_identity(BOB_PHONE)] == [b"ada", b"bob"]
        assert [store.view_by_person(ADA), store.view_by_person(BOB)] == [b"ada", b"bob"]


def test_a_view_written_again_is_what_every_lookup_finds(empty_store_url: Callable[[], str]) -> None:
    with open_profile_store(empty_store_url()) as store:
        store.write(PROFILES)
        store.write(ProfileWrite(views={ADA: b"ada-2"}))
        assert (store.view_by_identity(ADA_EMAIL), store.view_by_person(ADA)) == (b"ada-2", b"ada-2")


def test_absent_keys_find_nothing(empty_store_url: Callable[[], str]) -> None:
    with open_profile_store(empty_store_url()) as store:
        assert contents(store) == contents(Reference())
        store.write(PROFILES)
        assert (store.view_by_identity(CAT_EMAIL), store.view_by_person(CAT)) == (None, None)


def test_an_identity_indexed_to_a_person_without_a_view_finds_nothing(empty_store_url: Callable[[], str]) -> None:
    with open_profile_store(empty_store_url()) as store:
        store.write(ProfileWrite(index={CAT_EMAIL: CAT}))
        assert store.view_by_identity(CAT_EMAIL) is None


def test_a_merged_away_person_and_its_identities_lead_to_the_survivor(empty_store_url: Callable[[], str]) -> None:
    with open_profile_store(empty_store_url()) as store:
        store.write(PROFILES)
        store.write(MERGE)
        assert contents(store) == contents(written([PROFILES, MERGE]))
        assert store.view_by_person(BOB) == store.view_by_identity(BOB_PHONE) == b"ada+bob"


def test_an_identity_left_indexed_to_a_merged_away_person_follows_the_survivor(
    empty_store_url: Callable[[], str],
) -> None:
    with open_profile_store(empty_store_url()) as store:
        store.write(PROFILES)
        store.write(ProfileWrite(views={ADA: b"ada+bob"}, redirects={BOB: ADA}, drop_views=(BOB,)))
        store.write(ProfileWrite(views={ADA: b"ada+bob-2"}))
        assert (store.view_by_identity(BOB_EMAIL), store.view_by_person(BOB)) == (b"ada+bob-2", b"ada+bob-2")


def test_a_survivor_merged_away_in_turn_takes_its_redirects_along(empty_store_url: Callable[[], str]) -> None:
    bob_into_ada = ProfileWrite(redirects={BOB: ADA}, drop_views=(BOB,))
    ada_into_cat = ProfileWrite(views={CAT: b"all"}, redirects={ADA: CAT}, drop_views=(ADA,))
    with open_profile_store(empty_store_url()) as store:
        for change in (PROFILES, bob_into_ada, ada_into_cat):
            store.write(change)
        assert store.view_by_person(BOB) == store.view_by_identity(BOB_EMAIL) == b"all"
        assert contents(store) == contents(written([PROFILES, bob_into_ada, ada_into_cat]))


def test_a_redirect_to_a_merged_away_person_goes_to_its_survivor(empty_store_url: Callable[[], str]) -> None:
    changes = [
        PROFILES,
        ProfileWrite(views={CAT: b"cat"}, index={CAT_EMAIL: CAT}),
        ProfileWrite(redirects={BOB: ADA}, drop_views=(BOB,)),
        ProfileWrite(redirects={CAT: BOB}, drop_views=(CAT,)),
        ProfileWrite(views={ADA: b"ada-2"}),
    ]
    with open_profile_store(empty_store_url()) as store:
        for change in changes:
            store.write(change)
        assert store.view_by_person(CAT) == store.view_by_identity(CAT_EMAIL) == b"ada-2"


def test_a_split_unindexes_and_drops_what_is_gone(empty_store_url: Callable[[], str]) -> None:
    gone = ProfileWrite(unindex=(BOB_PHONE,), drop_views=(BOB,))
    with open_profile_store(empty_store_url()) as store:
        for change in (PROFILES, MERGE, SPLIT, gone):
            store.write(change)
        assert store.view_by_identity(ADA_ECID) is None
        assert store.view_by_identity(BOB_PHONE) is None
        assert store.view_by_identity(BOB_EMAIL) == b"bob-as-cat"
        assert contents(store) == contents(written([PROFILES, MERGE, SPLIT, gone]))


def test_a_person_given_a_view_again_is_no_longer_redirected(empty_store_url: Callable[[], str]) -> None:
    # Bob's own id comes back in the split, with his identities, which were left indexed to him.
    merge = ProfileWrite(views={ADA: b"ada+bob"}, redirects={BOB: ADA}, drop_views=(BOB,))
    split = ProfileWrite(views={ADA: b"ada", BOB: b"bob-again"})
    with open_profile_store(empty_store_url()) as store:
        for change in (PROFILES, merge, split):
            store.write(change)
        assert store.view_by_person(BOB) == store.view_by_identity(BOB_PHONE) == b"bob-again"
        assert contents(store) == contents(written([PROFILES, merge, split]))


def test_persons_merged_one_way_then_the_other_follow_the_newer_redirect(empty_store_url: Callable[[], str]) -> None:
    # Bob's view is left behind by the first merge, and is his again once Ada's redirect replaces his.
    changes = [PROFILES, ProfileWrite(redirects={BOB: ADA}), ProfileWrite(redirects={ADA: BOB}, drop_views=(ADA,))]
    with open_profile_store(empty_store_url()) as store:
        for change in changes:
            store.write(change)
        assert store.view_by_person(ADA) == store.view_by_identity(ADA_EMAIL) == store.view_by_person(BOB) == b"bob"
        assert contents(store) == contents(written(changes))


def test_a_write_drops_and_unindexes_before_it_puts(empty_store_url: Callable[[], str]) -> None:
    both = ProfileWrite(views={ADA: b"ada-2"}, index={ADA_EMAIL: ADA}, unindex=(ADA_EMAIL,), drop_views=(ADA,))
    with open_profile_store(empty_store_url()) as store:
        store.write(PROFILES)
        store.write(both)
        assert store.view_by_identity(ADA_EMAIL) == b"ada-2"


def test_writing_each_change_twice_leaves_what_writing_it_once_does(empty_store_url: Callable[[], str]) -> None:
    changes = [PROFILES, MERGE, SPLIT]
    with open_profile_store(empty_store_url()) as store:
        for done, change in enumerate(changes, start=1):
            store.write(change)
            once = contents(store)
            store.write(change)
            assert contents(store) == once == contents(written(changes[:done]))


def test_a_write_whose_fragments_are_as_it_read_them_applies(empty_store_url: Callable[[], str]) -> None:
    with open_profile_store(empty_store_url()) as store:
        store.write(PROFILES)
        expected = {FRAGMENT_KEYS[0]: StoredFragment(b"ada-crm", {}), FRAGMENT_KEYS[1]: None}
        change = ProfileWrite(
            fragments={FRAGMENT_KEYS[1]: b"ada-web"},
            deltas={FRAGMENT_KEYS[0]: b"ada-crm-2"},
            views={ADA: b"ada2"},
            expected=expected,
        )
        store.write(change)

        assert contents(store) == contents(written([PROFILES, change]))


@pytest.mark.parametrize(
    "expected",
    [
        {FRAGMENT_KEYS[0]: StoredFragment(b"ada-crm-as-read-before", {})},  # another write compacted it
        {FRAGMENT_KEYS[1]: StoredFragment(b"ada-web", {})},  # it was read, and is gone
        {FRAGMENT_KEYS[0]: StoredFragment(b"ada-crm", {}), FRAGMENT_KEYS[2]: None},  # absent, and another created it
        {FRAGMENT_KEYS[2]: StoredFragment(b"bob-crm", {})},  # another write appended a delta since
        {FRAGMENT_KEYS[2]: StoredFragment(b"bob-crm", {delta_id(b"bob-1"): b"bob-1", "gone": b"x"})},  # compacted
    ],
    ids=["changed", "gone", "created", "appended", "compacted"],
)
def test_a_write_whose_fragments_changed_since_it_read_them_changes_nothing(
    empty_store_url: Callable[[], str], expected: dict[str, StoredFragment | None]
) -> None:
    with open_profile_store(empty_store_url()) as store:
        store.write(PROFILES)
        store.write(ProfileWrite(deltas={FRAGMENT_KEYS[2]: b"bob-1"}))
        before = contents(store)
        change = ProfileWrite(
            fragments={FRAGMENT_KEYS[0]: b"lost?"},
            deltas={FRAGMENT_KEYS[2]: b"lost too?"},
            views={ADA: b"ada2"},
            index={ADA_EMAIL: BOB},
            redirects={CAT: ADA},
            expected=expected,
        )

        with pytest.raises(ProfileWriteConflict):
            store.write(change)

        assert contents(store) == before


def test_a_write_computed_from_its_store_s_last_read_applies(empty_store_url: Callable[[], str]) -> None:
    with open_profile_store(empty_store_url()) as store:
        store.write(PROFILES)
        read = store.fragments(FRAGMENT_KEYS)
        change = ProfileWrite(
            deltas={FRAGMENT_KEYS[0]: b"ada-crm-2"},
            views={ADA: b"ada2"},
            expected={key: read.get(key) for key in FRAGMENT_KEYS},
        )
        store.write(change)

        assert contents(store) == contents(written([PROFILES, change]))


# A store may know that nothing changed since its own read (SQLite does): these are what it must still see.
@pytest.mark.parametrize("since_read", ["its own write", "another store's write", "an expectation other than read"])
def test_a_write_whose_fragments_changed_since_its_store_read_them_changes_nothing(
    empty_store_url: Callable[[], str], since_read: str
) -> None:
    url = empty_store_url()
    with open_profile_store(url) as store, open_profile_store(url) as other:
        store.write(PROFILES)
        read = store.fragments(FRAGMENT_KEYS)
        expected = {key: read.get(key) for key in FRAGMENT_KEYS}
        if since_read == "its own write":
            store.write(ProfileWrite(deltas={FRAGMENT_KEYS[0]: b"ada-crm-2"}))
        elif since_read == "another store's write":
            other.write(ProfileWrite(deltas={FRAGMENT_KEYS[0]: b"ada-crm-2"}))
        else:
            expected[FRAGMENT_KEYS[2]] = None  # read present
        before = contents(other)  # not a read of the store's own, which would be the write's last

        with pytest.raises(ProfileWriteConflict):
            store.write(ProfileWrite(views={ADA: b"ada2"}, expected=expected))

        assert contents(store) == before


def test_a_write_of_nothing_changes_nothing(empty_store_url: Callable[[], str]) -> None:
    with open_profile_store(empty_store_url()) as store:
        store.write(PROFILES)
        store.write(MERGE)
        before = contents(store)
        store.write(ProfileWrite())
        assert contents(store) == before


def test_odd_characters_and_binary_documents_come_back_unchanged(empty_store_url: Callable[[], str]) -> None:
    person, identity = "p-é:#|\x00😀", 'Email:a\tb:c"d\\e\x00f#i#v#'
    fragment, doc = f"{identity}|ds#1", bytes(range(256))
    with open_profile_store(empty_store_url()) as store:
        store.write(ProfileWrite(fragments={fragment: doc}, views={person: doc}, index={identity: person}))
        assert store.fragments([fragment]) == {fragment: StoredFragment(doc, {})}
        assert store.view_by_identity(identity) == store.view_by_person(person) == doc
        assert store.view_by_identity(identity[:-2]) is None


def test_a_reopened_store_has_the_contents_of_the_last(empty_store_url: Callable[[], str]) -> None:
    url = empty_store_url()
    with open_profile_store(url) as store:
        store.write(PROFILES)
        store.write(MERGE)
    with open_profile_store(url) as store:
        assert contents(store) == contents(written([PROFILES, MERGE]))


# More examples than the other properties: this one is where a store's bookkeeping of redirects and copies is tried.
@settings(PROPERTY_SETTINGS, max_examples=100)
@given(changes=st.lists(WRITES, max_size=6))
def test_any_writes_leave_what_the_reference_has(
    empty_store_url: Callable[[], str], changes: list[ProfileWrite]
) -> None:
    reference = Reference()
    with open_profile_store(empty_store_url()) as store:
        for change in changes:
            store.write(change)
            reference.write(change)
            assert contents(store) == contents(reference)


def test_an_in_memory_sqlite_store_works_like_a_file() -> None:
    with open_profile_store("sqlite:///:memory:") as store:
        store.write(PROFILES)
        assert store.view_by_identity(BOB_PHONE) == b"bob"


@pytest.mark.parametrize(
    "url",
    [
        "mysql://localhost/profiles",
        "data/profiles.sqlite",
        "sqlite://host/profiles.sqlite",
        "sqlite:///",
        "redis://localhost:port/0",
        "redis://localhost:6379/zero",
        "bigtable://project/instance",
        "bigtable://project/instance/table/extra",
        "bigtable:///instance/table",
        "bigtable://project//table",
        "bigtable://project/instance/table?app_profile=x",
    ],
)
def test_an_unknown_or_malformed_url_is_a_one_line_value_error(url: str) -> None:
    with pytest.raises(ValueError, match=r"^[^\n]*$") as raised:
        open_profile_store(url)
    assert not isinstance(raised.value, StoreUnavailableError)


@pytest.mark.parametrize(
    ("backend", "package", "url"),
    [("redis", "redis", "redis://127.0.0.1:6379/0"), ("bigtable", "google.cloud.bigtable", "bigtable://p/i/t")],
)
def test_a_backend_without_its_package_is_a_one_line_value_error(
    monkeypatch: pytest.MonkeyPatch, backend: str, package: str, url: str
) -> None:
    monkeypatch.delitem(sys.modules, f"stores.profiles_{backend}", raising=False)
    # None in sys.modules makes an import fail as a missing package does.
    monkeypatch.setitem(sys.modules, package, None)
    parent, _, name = package.rpartition(".")
    if parent:
        monkeypatch.delattr(sys.modules[parent], name, raising=False)
    with pytest.raises(ValueError, match=rf"^[^\n]*pip install 'profilestream\[{backend}\]'$"):
        open_profile_store(url)


def test_a_sqlite_store_that_cannot_be_opened_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailableError, match=r"^[^\n]*$"):
        open_profile_store(f"sqlite:///{tmp_path}")  # a folder


@pytest.mark.integration
def test_an_unreachable_redis_is_a_one_line_error() -> None:
    with pytest.raises(StoreUnavailableError, match=r"^[^\n]*cannot be reached[^\n]*$"):
        open_profile_store(f"redis://127.0.0.1:{closed_port()}/0")


@pytest.mark.integration
def test_an_unreachable_bigtable_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", f"127.0.0.1:{closed_port()}")
    with pytest.raises(StoreUnavailableError, match=r"^[^\n]*cannot be reached[^\n]*$"):
        open_profile_store("bigtable://test-project/test-instance/profiles")


def closed_port() -> int:
    # Bound and closed again: nothing listens there a moment later.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.integration
def test_each_call_on_redis_is_one_round_trip(redis_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sent = []
    send = redis.connection.AbstractConnection.send_packed_command

    def counted(connection: redis.connection.AbstractConnection, command: object, check_health: bool = True) -> None:
        sent.append(command)
        send(connection, command, check_health)

    with open_profile_store(flushed(redis_server)) as store:
        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
        calls: list[Callable[[], object]] = [
            lambda: store.write(PROFILES),
            lambda: store.write(MERGE),
            lambda: store.fragments(FRAGMENT_KEYS),
            lambda: store.view_by_identity(BOB_PHONE),
            lambda: store.view_by_person(BOB),
            lambda: store.view_by_identity(CAT_EMAIL),
        ]
        for call in calls:
            before = len(sent)
            call()
            assert len(sent) == before + 1
        store.write(ProfileWrite())
        assert len(sent) == len(calls)


@pytest.mark.integration
def test_a_redis_store_carries_on_when_the_server_has_lost_its_scripts(redis_server: str) -> None:
    with open_profile_store(flushed(redis_server)) as store, redis.Redis.from_url(redis_server) as client:
        store.write(PROFILES)
        client.script_flush()
        assert store.view_by_identity(ADA_EMAIL) == b"ada"


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore:Connecting to Bigtable emulator:RuntimeWarning")
def test_a_bigtable_table_without_the_column_families_gets_them(
    bigtable_emulator: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", bigtable_emulator)
    table = f"profiles-{next(_TABLES)}"
    admin = bigtable.Client(project="test-project", admin=True).instance("test-instance").table(table)
    admin.create(column_families={"d": None})
    with open_profile_store(f"bigtable://test-project/test-instance/{table}") as store:
        store.write(PROFILES)
        assert contents(store) == contents(written([PROFILES]))


@pytest.mark.integration
@PROPERTY_SETTINGS
@given(changes=st.lists(st.tuples(WRITES, st.booleans()), max_size=5), seed=st.integers(0, 2**32 - 1))
def test_a_bigtable_batch_cut_part_way_and_sent_again_converges(
    bigtable_emulator: str, monkeypatch: pytest.MonkeyPatch, changes: list[tuple[ProfileWrite, bool]], seed: int
) -> None:
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", bigtable_emulator)
    rng = random.Random(seed)
    with open_profile_store(f"bigtable://test-project/test-instance/profiles-{next(_TABLES)}") as store:
        table = store._table  # type: ignore[attr-defined]
        for change, cut in changes:
            batch = cut_part_way(store, change, rng) if cut else None
            if batch is None:
                store.write(change)
            else:
                table.bulk_mutate_rows(batch)
        assert contents(store) == contents(written(change for change, _ in changes))


@pytest.mark.integration
@settings(PROPERTY_SETTINGS, max_examples=100)
@given(seed=st.integers(0, 2**32 - 1), later=st.lists(WRITES, max_size=4))
def test_a_bigtable_write_cut_part_way_and_run_again_leaves_what_it_would_have(
    bigtable_emulator: str, monkeypatch: pytest.MonkeyPatch, seed: int, later: list[ProfileWrite]
) -> None:
    # The stories name every identity whose row they move (a merge or a split indexes them all), and the writes after
    # them find the rows and lists as one whole write of each would have left them.
    monkeypatch.setenv("BIGTABLE_EMULATOR_HOST", bigtable_emulator)
    rng = random.Random(seed)
    stories = [PROFILES, MERGE, SPLIT]
    with open_profile_store(f"bigtable://test-project/test-instance/profiles-{next(_TABLES)}") as store:
        for change in stories:
            cut_part_way(store, change, rng)
            store.write(change)
        for change in later:
            store.write(change)
        assert contents(store) == contents(written(stories + later))


def cut_part_way(store: ProfileStore, change: ProfileWrite, rng: random.Random) -> list | None:
    """Writes the change with its batch failing after a random part of its rows were written; returns the batch.

    None when the write sent no batch.
    """
    table = store._table  # type: ignore[attr-defined]
    send = table.bulk_mutate_rows
    batches = []

    def some_rows(entries: list) -> None:
        batches.append(entries)
        send([entry for entry in entries if rng.random() < 0.5])
        raise ConnectionError("the batch failed part-way")

    table.bulk_mutate_rows = some_rows
    try:
        store.write(change)
    except ConnectionError:
        pass
    finally:
        del table.bulk_mutate_rows
    return batches[0] if batches else None


def test_a_sqlite_file_of_the_layout_before_deltas_keeps_its_profiles(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as old:
        old.executescript(OLD_SQLITE_LAYOUT)
        old.execute("INSERT INTO fragments VALUES (?, ?)", (FRAGMENT_KEYS[0], b"ada-crm"))
        old.execute("INSERT INTO views VALUES (?, ?)", (ADA, b"ada"))
        old.execute("INSERT INTO identity_index VALUES (?, ?)", (ADA_EMAIL, ADA))
    with open_profile_store(f"sqlite:///{path}") as store:
        assert store.fragments(FRAGMENT_KEYS) == {FRAGMENT_KEYS[0]: StoredFragment(b"ada-crm", {})}
        assert store.view_by_identity(ADA_EMAIL) == b"ada"
        store.write(ProfileWrite(deltas={FRAGMENT_KEYS[0]: b"ada-crm-2"}, expected=store.fragments(FRAGMENT_KEYS)))
        assert store.fragments(FRAGMENT_KEYS) == {
            FRAGMENT_KEYS[0]: StoredFragment(b"ada-crm", {delta_id(b"ada-crm-2"): b"ada-crm-2"})
        }


# The SQLite profile store's tables before fragments held deltas.
OLD_SQLITE_LAYOUT = """
CREATE TABLE fragments (key TEXT PRIMARY KEY, doc BLOB NOT NULL);
CREATE TABLE views (person TEXT PRIMARY KEY, doc BLOB NOT NULL);
CREATE TABLE identity_index (identity TEXT PRIMARY KEY, person TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE redirects (person TEXT PRIMARY KEY, target TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX redirects_by_target ON redirects (target);
"""
