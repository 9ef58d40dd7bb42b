"""Opening stores from their URLs (stores/opening.py): the one parser both kinds share, and the handlers the stages
pickle and open on the workers. Each backend's own behaviour is in the contract tests beside this file."""

from __future__ import annotations

import pickle
import threading

import pytest

from identity.model import Identity, Observation, Stamp
from stores.errors import StoreUnavailableError
from stores.opening import (
    IDENTITY_STORE,
    PROFILE_STORE,
    StoreUrl,
    identity_store_handler,
    open_identity_store,
    open_profile_store,
    parse_store_url,
    profile_store_handler,
)
from stores.outages import Patient

BOTH_KINDS = (IDENTITY_STORE, PROFILE_STORE)
ECID = Identity("ECID", "1" * 38)


@pytest.mark.parametrize("kind", BOTH_KINDS)
@pytest.mark.parametrize(
    ("url", "names"),
    [
        ("sqlite:///data/identity.sqlite", ("data/identity.sqlite",)),
        ("sqlite:////var/lib/store.sqlite", ("/var/lib/store.sqlite",)),
        ("sqlite:///:memory:", (":memory:",)),
        ("redis://localhost:6379/0", ("redis://localhost:6379/0",)),
        ("redis://localhost", ("redis://localhost",)),
    ],
)
def test_both_kinds_take_sqlite_and_redis_urls(kind, url, names):
    assert parse_store_url(url, kind) == StoreUrl(url, url.partition("://")[0], names)


def test_a_bigtable_url_names_the_project_instance_and_table_of_a_profile_store():
    url = "bigtable://my-project/my-instance/profiles"
    assert parse_store_url(url, PROFILE_STORE) == StoreUrl(url, "bigtable", ("my-project", "my-instance", "profiles"))


@pytest.mark.parametrize(
    ("url", "kind", "message"),
    [
        (
            "bigtable://p/i/t",
            IDENTITY_STORE,
            "unknown identity store URL 'bigtable://p/i/t': expected sqlite:///PATH or redis://HOST:PORT/DB",
        ),
        (
            "mysql://localhost/profiles",
            PROFILE_STORE,
            "unknown profile store URL 'mysql://localhost/profiles': expected sqlite:///PATH, redis://HOST:PORT/DB "
            "or bigtable://PROJECT/INSTANCE/TABLE",
        ),
        (
            "sqlite://host/identity.sqlite",
            IDENTITY_STORE,
            "malformed identity store URL 'sqlite://host/identity.sqlite': expected sqlite:///PATH or "
            "redis://HOST:PORT/DB",
        ),
        (
            "redis://localhost:6379/zero",
            PROFILE_STORE,
            "malformed profile store URL 'redis://localhost:6379/zero': the database must be a number, not 'zero'",
        ),
        (
            "redis://localhost:port/0",
            IDENTITY_STORE,
            "malformed identity store URL 'redis://localhost:port/0': Port could not be cast to integer value as "
            "'port'",
        ),
        (
            "bigtable://project/instance",
            PROFILE_STORE,
            "malformed profile store URL 'bigtable://project/instance': expected sqlite:///PATH, "
            "redis://HOST:PORT/DB or bigtable://PROJECT/INSTANCE/TABLE",
        ),
    ],
)
def test_a_bad_url_is_a_value_error_naming_the_kind_of_store(url, kind, message):
    with pytest.raises(ValueError) as raised:
        parse_store_url(url, kind)
    assert str(raised.value) == message
    assert not isinstance(raised.value, StoreUnavailableError)


def test_a_handler_pickles_as_its_url_and_opens_the_store_on_the_other_side(tmp_path):
    url = f"sqlite:///{tmp_path}/identity.sqlite"
    handler = identity_store_handler(url)

    shipped = pickle.loads(pickle.dumps(handler))

    assert shipped == handler
    with shipped.open() as store:
        assert isinstance(store, Patient)  # opened with patience for an outage
        store.observe([Observation((ECID,), Stamp(1, "m1"))])
    with open_identity_store(url) as store:
        assert set(store.facts_of([ECID]).sightings) == {ECID}


def test_a_handler_opens_nothing_until_asked(tmp_path):
    handler = profile_store_handler(f"sqlite:///{tmp_path}/profiles.sqlite")
    pickle.loads(pickle.dumps(handler))
    assert not (tmp_path / "profiles.sqlite").exists()


@pytest.mark.parametrize("open_store", [open_identity_store, open_profile_store], ids=["identity", "profile"])
def test_a_new_store_file_opened_by_several_workers_at_once_opens_for_each(tmp_path, open_store):
    """Workers of one run open the same new file at the same moment; SQLite may refuse one of them its switch to WAL
    at once, without waiting (about one round in sixteen of four openers did)."""
    openers, rounds = 6, 30
    refused: list[BaseException] = []

    def open_when_all_are_ready(url: str, ready: threading.Barrier) -> None:
        ready.wait()
        try:
            open_store(url).close()
        except StoreUnavailableError as error:
            refused.append(error)

    for round_number in range(rounds):
        url = f"sqlite:///{tmp_path}/store-{round_number}.sqlite"
        ready = threading.Barrier(openers, timeout=30)
        threads = [threading.Thread(target=open_when_all_are_ready, args=(url, ready)) for _ in range(openers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert refused == []
