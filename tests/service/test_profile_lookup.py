"""Profile lookups and ``profilestream profile get``: README's contract line, normalisation, exit codes.

Most tests read an in-memory :class:`ProfileStore` holding two people written through the store interface: Ann, with
a CRM id, an e-mail, a device and three events, who absorbed a person merged away (:data:`RETIRED`); and Bob, with a
phone and no events yet. The tests marked ``needs_sqlite_store`` write the same people to the real SQLite backend.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

import stores.opening as store_opening
from core.clock import parse_rfc3339_us, wall_clock_us
from pipelines.cli import DEFAULT_PROFILE_STORE, main
from pipelines.config import load_config
from profiles.writer import ProfileWrite
from service.profile_lookup import MalformedLookupError, events_between, lookup_key, lookup_profile
from stores.opening import open_identity_store
from stores.profiles import ProfileStore

ANN = "p-20a6567a1e102cf3df15f3af"
RETIRED = "p-0123456789abcdef01234567"
BOB = "p-fedcba9876543210fedcba98"
NOBODY = "p-000000000000000000000000"
DEVICE = "7" * 38
BOB_PHONE = "+14155550123"
MINUTE_US = 60_000_000
DAY_US = 1_440 * MINUTE_US


def event(event_id: str, event_type: str, timestamp: str) -> dict:
    return {"_id": event_id, "eventType": event_type, "timestamp": timestamp}


ANN_EVENTS = [  # newest first, as the view keeps them
    event("e3", "commerce.purchases", "2026-11-01T09:20:00Z"),
    event("e2", "web.webpagedetails.pageViews", "2026-11-01T09:10:00Z"),
    event("e1", "web.webpagedetails.pageViews", "2026-11-01T09:00:00Z"),
]
ANN_VIEW = {
    "person_id": ANN,
    "identities": [
        {"namespace": "CRMID", "id": "ann"},
        {"namespace": "ECID", "id": DEVICE},
        {"namespace": "Email", "id": "ann@example.com"},
    ],
    "attributes": {"person": {"name": {"firstName": "Ann"}}, "personalEmail": {"address": "ann@example.com"}},
    "events": {
        "count": 3,
        "first_seen": "2026-11-01T09:00:00Z",
        "last_seen": "2026-11-01T09:20:00Z",
        "by_type": {"commerce.purchases": 1, "web.webpagedetails.pageViews": 2},
        "recent": ANN_EVENTS,
    },
}
BOB_VIEW = {
    "person_id": BOB,
    "identities": [{"namespace": "Phone", "id": BOB_PHONE}],
    "attributes": {"mobilePhone": {"number": BOB_PHONE}},
    "events": {"count": 0, "first_seen": None, "last_seen": None, "by_type": {}, "recent": []},
}
SAMPLE_WRITE = ProfileWrite(
    views={ANN: json.dumps(ANN_VIEW).encode(), BOB: json.dumps(BOB_VIEW).encode()},
    index={"CRMID:ann": ANN, f"ECID:{DEVICE}": ANN, "Email:ann@example.com": ANN, f"Phone:{BOB_PHONE}": BOB},
    redirects={RETIRED: ANN},
)
UNKNOWN_EVENTS = {"count": 0, "first_seen": None, "last_seen": None, "by_type": {}, "recent": []}


class MemoryProfileStore(ProfileStore):
    """A profile store in a few dicts, enough to test what reads it; the real backends have their contract tests."""

    def __init__(self) -> None:
        self.fragment_docs: dict[str, bytes] = {}
        self.views: dict[str, bytes] = {}
        self.index: dict[str, str] = {}
        self.redirects: dict[str, str] = {}
        self.closed = False

    def fragments(self, keys: Iterable[str]) -> dict[str, bytes]:
        return {key: self.fragment_docs[key] for key in keys if key in self.fragment_docs}

    def write(self, change: ProfileWrite) -> None:
        self.fragment_docs.update(change.fragments)
        self.views.update(change.views)
        self.index.update(change.index)
        self.redirects.update(change.redirects)
        for key in change.unindex:
            self.index.pop(key, None)
        for person_id in change.drop_views:
            self.views.pop(person_id, None)

    def view_by_identity(self, identity_key: str) -> bytes | None:
        person_id = self.index.get(identity_key)
        return None if person_id is None else self.views.get(person_id)

    def view_by_person(self, person_id: str) -> bytes | None:
        return self.views.get(self.redirects.get(person_id, person_id))

    def retired_into(self, person_ids: Iterable[str]) -> set[str]:
        persons = set(person_ids)
        return {retired for retired, target in self.redirects.items() if target in persons}

    def erase(self, person_ids: Iterable[str], identity_keys: Iterable[str]) -> dict[str, int]:
        persons, keys = set(person_ids), set(identity_keys)
        views = [person for person in self.views if person in persons]
        index = [key for key, person in self.index.items() if key in keys or person in persons]
        redirects = [old for old, target in self.redirects.items() if old in persons or target in persons]
        fragments = [key for key in self.fragment_docs if key.partition("|")[0] in keys]
        for held, gone in ((self.views, views), (self.index, index), (self.redirects, redirects)):
            for key in gone:
                del held[key]
        for key in fragments:
            del self.fragment_docs[key]
        return {"views": len(views), "fragments": len(fragments), "index": len(index), "redirects": len(redirects)}

    def close(self) -> None:
        self.closed = True


def sample_store() -> MemoryProfileStore:
    store = MemoryProfileStore()
    store.write(SAMPLE_WRITE)
    return store


open_profile_store = getattr(store_opening, "open_profile_store", None)
needs_sqlite_store = pytest.mark.skipif(
    open_profile_store is None or importlib.util.find_spec("stores.profiles_sqlite") is None,
    reason="the SQLite profile store has not landed yet (open_profile_store, stores/profiles_sqlite.py)",
)


@pytest.fixture(scope="module")
def settings():
    return load_config(None).stitch_settings()


@pytest.fixture
def store() -> MemoryProfileStore:
    return sample_store()


def test_an_identity_lookup_gives_the_contract_line_with_the_lookup_as_asked(store, settings):
    answer = lookup_profile("Email:ann@example.com", store, settings, by="identity")
    assert answer == {"lookup": "Email:ann@example.com", **ANN_VIEW}


def test_an_identity_is_normalised_as_ingestion_normalised_it(store, settings):
    answer = lookup_profile("EMAIL: Ann@Example.com ", store, settings, by="identity")
    assert (answer["lookup"], answer["person_id"]) == ("EMAIL: Ann@Example.com ", ANN)


def test_a_phone_is_looked_up_in_e164(store, settings):
    assert lookup_profile("Phone:(415) 555-0123", store, settings, by="identity")["person_id"] == BOB


def test_a_person_id_lookup_reads_the_person(store, settings):
    assert lookup_profile(BOB, store, settings, by="person") == {"lookup": BOB, **BOB_VIEW}


def test_a_person_merged_away_answers_with_the_survivor(store, settings):
    answer = lookup_profile(RETIRED, store, settings, by="person")
    assert (answer["lookup"], answer["person_id"]) == (RETIRED, ANN)


@pytest.mark.parametrize(("asked", "by"), [("CRMID:nobody", "identity"), (NOBODY, "person")])
def test_an_unknown_lookup_gives_a_null_person_and_nothing_else(store, settings, asked, by):
    answer = lookup_profile(asked, store, settings, by=by)
    assert answer == {"lookup": asked, "person_id": None, "identities": [], "attributes": {}, "events": UNKNOWN_EVENTS}


def test_keys_a_view_keeps_beyond_the_contract_are_not_shown(settings):
    store = MemoryProfileStore()
    store.write(ProfileWrite(views={BOB: json.dumps({**BOB_VIEW, "seen_event_ids": ["e1"]}).encode()}))
    assert "seen_event_ids" not in lookup_profile(BOB, store, settings, by="person")


@pytest.mark.parametrize(
    ("asked", "by", "fragment"),
    [
        ("ann@example.com", "identity", "expected NAMESPACE:ID"),
        (":ann@example.com", "identity", "expected NAMESPACE:ID"),
        ("Fax:12345", "identity", "IDENTITY.UNKNOWN_NAMESPACE"),
        ("Email:ann.example.com", "identity", "IDENTITY.INVALID_EMAIL"),
        ("ECID:null", "identity", "IDENTITY.BLOCKED"),
        ("p-20A6567A1E102CF3DF15F3AF", "person", "p- and 24 hex digits"),
        ("p-20a6567a1e102cf3df15f3a", "person", "p- and 24 hex digits"),
        (ANN + "\n", "person", "p- and 24 hex digits"),
        ("CRMID:ann", "person", "p- and 24 hex digits"),
    ],
)
def test_a_malformed_lookup_is_an_error_naming_what_was_asked(store, settings, asked, by, fragment):
    with pytest.raises(MalformedLookupError, match=fragment) as raised:
        lookup_profile(asked, store, settings, by=by)
    assert repr(asked) in str(raised.value)


def test_the_lookup_key_is_the_identity_as_the_store_indexes_it(settings):
    assert lookup_key("email:Ann@Example.COM", settings, by="identity") == "Email:ann@example.com"


def us(timestamp: str) -> int:
    return parse_rfc3339_us(timestamp)


def clock_at(timestamp: str) -> Callable[[], int]:
    """A clock stopped at ``timestamp``."""
    return lambda: us(timestamp)


def ids(events: list) -> list[str]:
    return [event["_id"] for event in events]


def test_events_between_keeps_the_newest_up_to_the_limit():
    assert ids(events_between(ANN_EVENTS, limit=2)) == ["e3", "e2"]


def test_events_between_starts_at_start_and_stops_before_end():
    chosen = events_between(
        ANN_EVENTS, limit=10, start_us=us("2026-11-01T09:00:00Z"), end_us=us("2026-11-01T09:20:00Z")
    )
    assert ids(chosen) == ["e2", "e1"]


def test_events_between_compares_instants_whatever_the_offset():
    assert ids(events_between(ANN_EVENTS, limit=10, start_us=us("2026-11-01T10:10:00+01:00"))) == ["e3", "e2"]


def test_events_between_applies_the_limit_after_the_bounds():
    assert ids(events_between(ANN_EVENTS, limit=1, end_us=us("2026-11-01T09:15:00Z"))) == ["e2"]


def test_an_event_without_a_readable_timestamp_is_outside_any_bound_but_kept_without_one():
    recent = [event("odd", "x", "yesterday"), *ANN_EVENTS]
    assert ids(events_between(recent, limit=10)) == ["odd", "e3", "e2", "e1"]
    assert ids(events_between(recent, limit=10, start_us=0)) == ["e3", "e2", "e1"]


def test_an_event_ttl_hides_older_recent_events_but_not_from_the_counts(store, settings):
    at_09_25 = clock_at("2026-11-01T09:25:00Z")
    answer = lookup_profile(ANN, store, settings, by="person", event_ttl_us=15 * MINUTE_US, clock=at_09_25)
    assert ids(answer["events"]["recent"]) == ["e3", "e2"]  # e2, fifteen minutes old, is not older than the TTL
    assert {**answer["events"], "recent": ANN_EVENTS} == ANN_VIEW["events"]


def test_without_an_event_ttl_every_recent_event_shows_whatever_the_time(store, settings):
    answer = lookup_profile(ANN, store, settings, by="person", clock=clock_at("2100-01-01T00:00:00Z"))
    assert answer["events"] == ANN_VIEW["events"]


def ttl_config(folder: Path, cutoff: str) -> Path:
    """A configuration file whose event TTL reaches from now, by the wall clock, back to ``cutoff``.

    For the commands, which read the wall clock: a cutoff minutes away from every sample event leaves them on the same
    side of it however long the test takes.
    """
    path = folder / "profilestream.yaml"
    path.write_text(f"profiles: {{event_ttl_days: {(wall_clock_us() - us(cutoff)) / DAY_US!r}}}\n")
    return path


class OpenedStores:
    """Stands for ``open_profile_store`` in CLI tests: hands out sample stores and remembers what it opened."""

    def __init__(self) -> None:
        self.urls: list[str] = []
        self.read_only: list[bool] = []
        self.stores: list[MemoryProfileStore] = []

    def __call__(self, url: str, *, read_only: bool = False) -> MemoryProfileStore:
        self.urls.append(url)
        self.read_only.append(read_only)
        self.stores.append(sample_store())
        return self.stores[-1]


@pytest.fixture
def opened(monkeypatch) -> OpenedStores:
    # raising=False: until the backends land, store_opening has no open_profile_store to replace.
    stores = OpenedStores()
    monkeypatch.setattr(store_opening, "open_profile_store", stores, raising=False)
    return stores


def profile_get(capsys, *args: str) -> tuple[int, list[dict]]:
    code = main(["profile", "get", *args])
    return code, [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_profile_get_prints_one_line_per_lookup_in_the_order_asked(opened, capsys):
    code, lines = profile_get(capsys, "--person", BOB, "--identity", "CRMID:ann", "--person", RETIRED)
    assert code == 0
    assert [(line["lookup"], line["person_id"]) for line in lines] == [(BOB, BOB), ("CRMID:ann", ANN), (RETIRED, ANN)]


def test_profile_get_exits_1_when_any_lookup_is_unknown(opened, capsys):
    code, lines = profile_get(capsys, "--identity", "CRMID:ann", "--identity", "CRMID:nobody")
    assert code == 1
    assert [line["person_id"] for line in lines] == [ANN, None]


def test_profile_get_hides_recent_events_older_than_the_configured_ttl(opened, capsys, tmp_path):
    config = ttl_config(tmp_path, "2026-11-01T09:05:00Z")
    code, [line] = profile_get(capsys, "--config", str(config), "--person", ANN)
    assert (code, ids(line["events"]["recent"]), line["events"]["count"]) == (0, ["e3", "e2"], 3)


def test_profile_get_reads_the_default_store_and_closes_it(opened, capsys):
    profile_get(capsys, "--person", ANN)
    assert opened.urls == [DEFAULT_PROFILE_STORE]
    assert opened.read_only == [True]
    assert opened.stores[0].closed


@pytest.mark.parametrize("command", [["profile", "get", "--person", ANN], ["identity", "get", "--identity", "CRMID:a"]])
def test_a_lookup_in_a_store_that_does_not_exist_is_one_line_and_makes_no_file(command, tmp_path, capsys):
    missing = tmp_path / "nowhere" / "store.sqlite"

    assert main([*command[:2], "--store", f"sqlite:///{missing}", *command[2:]]) == 2

    assert capsys.readouterr().err.strip().endswith(f"{missing} does not exist")
    assert not (tmp_path / "nowhere").exists()


def test_a_lookup_in_a_store_of_the_other_kind_is_refused_and_changes_nothing(tmp_path, capsys):
    identity_file, profile_file = tmp_path / "identity.sqlite", tmp_path / "profiles.sqlite"
    open_identity_store(f"sqlite:///{identity_file}").close()
    store_opening.open_profile_store(f"sqlite:///{profile_file}").close()
    before = {path: path.read_bytes() for path in (identity_file, profile_file)}

    assert main(["profile", "get", "--store", f"sqlite:///{identity_file}", "--person", ANN]) == 2
    assert "is of another kind: it has no fragments table" in capsys.readouterr().err
    assert main(["identity", "get", "--store", f"sqlite:///{profile_file}", "--identity", "CRMID:a"]) == 2
    assert "is of another kind: it has no identity_sightings table" in capsys.readouterr().err

    assert {path: path.read_bytes() for path in (identity_file, profile_file)} == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--identity", "CRMID:ann", "--identity", "ann"], "--identity 'ann': expected NAMESPACE:ID"),
        (["--person", "ann"], "--person 'ann': expected a person id"),
        (["--identity", "Email:nobody"], "IDENTITY.INVALID_EMAIL"),
        ([], "nothing to look up"),
    ],
)
def test_a_malformed_lookup_exits_2_with_one_line_before_opening_the_store(opened, capsys, args, fragment):
    code = main(["profile", "get", *args])
    captured = capsys.readouterr()
    assert code == 2
    assert (captured.out, opened.urls) == ("", [])
    [line] = captured.err.splitlines()
    assert fragment in line


def test_an_unreachable_store_exits_2_with_one_line(monkeypatch, capsys):
    def unreachable(url: str, *, read_only: bool = False) -> ProfileStore:
        raise ValueError(f"cannot reach {url}")

    monkeypatch.setattr(store_opening, "open_profile_store", unreachable, raising=False)
    code = main(["profile", "get", "--store", "redis://127.0.0.1:1/0", "--person", ANN])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.splitlines() == ["profilestream: error: profile store: cannot reach redis://127.0.0.1:1/0"]


@needs_sqlite_store
def test_profile_get_on_the_real_sqlite_store(tmp_path, capsys):
    url = f"sqlite:///{tmp_path}/profiles.sqlite"
    with open_profile_store(url) as store:
        store.write(SAMPLE_WRITE)
    asked = ["--identity", "Email:Ann@Example.com", "--person", RETIRED, "--identity", "CRMID:nobody"]
    code, lines = profile_get(capsys, "--store", url, *asked)
    assert code == 1
    assert lines == [
        {"lookup": "Email:Ann@Example.com", **ANN_VIEW},
        {"lookup": RETIRED, **ANN_VIEW},
        {"lookup": "CRMID:nobody", "person_id": None, "identities": [], "attributes": {}, "events": UNKNOWN_EVENTS},
    ]
