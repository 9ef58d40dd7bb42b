"""``make bench``, profiles part: profile writes/s of each profile store, and lookup latency of the HTTP API.

    python -m tools.bench_profiles [--people N] [--requests N] [--clients N] [--backends sqlite,redis,bigtable]

Traffic: ``--people`` people (1,000) of the identity benchmark's traffic (:func:`tools.bench_identity.person`), each
visiting :data:`VISITS` times, the visits shuffled together; a visit is one MergeProfiles flush of 1-4
ExperienceEvents on one of their devices (signed in) and, on the first visit and now and then after, a profile record
(name, address, loyalty).
There is no stitching: each person is one person, named after their highest-priority identity as the graph names it.
Fragments and views are built with :mod:`profiles.model`, as the stage does, before any clock runs.

Figures, per backend (SQLite in a file; Redis on a private ``redis-server`` without persistence and Bigtable on
Google's ``cbtemulator``, each on a free loopback port and stopped at the end; a backend whose server is not installed
is skipped with a one-line reason), each beside a reference from the same run (README, "`make bench`"):

- **profile writes/s**: per flush, ``store.fragments`` of every (identity, profile dataset) key of the person and one
  ``store.write`` of what the stage writes (:func:`~profiles.writer.fragment_writes`: a delta per fragment touched, or
  its compacted base; the view; the index; the fragments read, as expected), so profiles/s is flushes/s, beside *raw*
  flushes of the same cells (each base and each delta a cell of its own) and bytes under keys of their own, in turns
  of :data:`TURN_FLUSHES`: SQLite ``SELECT ... IN`` and one ``INSERT OR REPLACE`` transaction; Redis ``MGET`` and the
  ``SET`` of each cell in one pipeline (no ``MULTI``); Bigtable one ``read_rows`` and one ``bulk_mutate_rows``. The
  ratio is what the store's bookkeeping costs.
- **HTTP lookup latency**: ``profilestream serve`` in a process of its own on the store just filled, taking
  ``--requests`` (2,000) from ``--clients`` (4) keep-alive clients, half ``GET /profiles?identity=NS:ID`` and half
  ``GET /profiles/{person_id}``, with the bearer token; p50, p99 and requests/s, beside the store's own lookups
  (``view_by_identity``, ``view_by_person``) and a raw get of the view's cell from as many threads, in turns of
  :data:`TURN_LOOKUPS`. Every answer is checked (a 200 naming the expected person).

About 2 minutes on a 2-core machine. Why figures stand beside references:
docs/decisions/0027-benchmarks-print-a-reference-from-the-same-run.md.
"""

from __future__ import annotations

import abc
import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import os
import random
import secrets
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import httpx2
import redis

from core.clock import EPOCH
from identity.graph import person_id
from identity.model import Identity
from identity.namespaces import EXPERIENCE_EVENT_CLASS
from pipelines.config import Config
from profiles import model as profile_model
from profiles.writer import ProfileWrite, StoredFragment, delta_id, fragment_writes
from schemas.registry import SchemaRegistry
from service.api import API_TOKEN_ENV
from service.profile_lookup import LookupBy
from stores.opening import open_profile_store
from stores.profiles import ProfileStore
from stores.profiles_sqlite import tune_for_writing
from stores.sqlite_files import open_store_file, transaction
from tools.bench_identity import (
    SEED,
    START_US,
    Person,
    person,
)
from tools.local_servers import free_port, local_server
from tools.store_servers import bigtable_emulator_binary, private_bigtable_emulator, private_redis

PEOPLE = 1_000
VISITS = 3
REQUESTS = 2_000
CLIENTS = 4
TURN_FLUSHES = 50
TURN_LOOKUPS = 200
PROFILE_SCHEMA = "https://ns.adobe.com/xdm/context/profile"
PROFILE_UPDATE_SHARE = 0.3  # of the visits after the first
VISIT_STEP_US = 60_000_000
REQUEST_TIMEOUT_S = 10.0
BACKENDS = ("sqlite", "redis", "bigtable")
BIGTABLE_EMULATOR_HOST = "BIGTABLE_EMULATOR_HOST"
FIRST_NAMES = ("Ann", "Bob", "Cat", "Dev", "Eve", "Fin", "Gus", "Hal", "Ivy", "Jo")
LAST_NAMES = ("Adams", "Brown", "Clark", "Davis", "Evans", "Green", "Hughes", "Jones")
CITIES = ("Leeds", "York", "Bath", "Derby", "Exeter", "Hull")
TIERS = ("bronze", "silver", "gold")
PAGES = ("home", "search", "product", "basket", "checkout", "account")
EVENT_TYPES = ("web.webpagedetails.pageViews", "commerce.productViews", "commerce.productListAdds")


@dataclasses.dataclass(frozen=True)
class Profiled:
    """A person of the traffic as the store knows them: their person id and identity keys (``NS:ID``)."""

    person_id: str
    identities: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Flush:
    """One flush of one person: the fragment keys it reads and the write it makes, and their raw equivalents."""

    person_id: str
    keys: tuple[str, ...]
    write: ProfileWrite
    raw_keys: tuple[str, ...]
    raw_cells: Mapping[str, bytes]


@dataclasses.dataclass(frozen=True)
class Traffic:
    """The people, and their visits' flushes in the order they come."""

    people: list[Profiled]
    flushes: list[Flush]


def generate(people: int, seed: int = SEED) -> Traffic:
    """The people and their flushes, with the bytes each flush writes; see the module docstring."""
    registry = SchemaRegistry.load()
    rules = Config().stitch_settings().graph
    policy = profile_model.TimestampOrdered()
    event_schema, profile_schema = registry.get(EXPERIENCE_EVENT_CLASS), registry.get(PROFILE_SCHEMA)
    datasets = [name for name, dataset in registry.datasets.items() if dataset.profile]
    chance = random.Random(seed)
    everyone = [person(index, seed) for index in range(people)]
    identities_of = [
        sorted({*someone.devices, someone.email, *([someone.crmid] if someone.crmid else [])}) for someone in everyone
    ]
    profiled = [
        Profiled(person_id(profile_model.fragment_identity(identities, rules)), tuple(map(str, identities)))
        for identities in identities_of
    ]
    visits = [index for index in range(people) for _ in range(VISITS)]
    chance.shuffle(visits)
    fragments: dict[str, profile_model.Fragment] = {}
    stored: dict[str, StoredFragment] = {}
    seen: set[int] = set()
    flushes = []
    for position, index in enumerate(visits):
        someone, known = everyone[index], profiled[index]
        records = _visit(
            someone, index, position, chance, profile=index not in seen or chance.random() < PROFILE_UPDATE_SHARE
        )
        seen.add(index)
        deltas: dict[str, profile_model.Fragment] = {}
        for entity, is_event, record_time_us, message_id in records:
            carried = [Identity(namespace, ids[0]["id"]) for namespace, ids in entity["identityMap"].items()]
            owner = profile_model.fragment_identity(carried, rules)
            dataset = (event_schema if is_event else profile_schema).dataset.name
            key = f"{owner}|{dataset}"
            delta = deltas.get(key) or profile_model.Fragment(identity=owner, dataset=dataset)
            deltas[key] = profile_model.apply(
                delta,
                entity,
                is_event=is_event,
                record_time_us=record_time_us,
                ingest_time_us=record_time_us,
                message_id=message_id,
            )
        keys = tuple(f"{identity}|{dataset}" for identity in known.identities for dataset in datasets)
        expected = {key: stored.get(key) for key in keys}
        for key, delta in deltas.items():
            held = fragments.get(key)
            fragments[key] = delta if held is None else profile_model.merge_fragments(held, delta)
        appended, compacted, after = fragment_writes(deltas, fragments, stored)
        stored.update(after)
        held = [fragments[key] for key in sorted(keys) if key in fragments]
        view = profile_model.build_view(known.person_id, identities_of[index], held, policy)
        write = ProfileWrite(
            deltas=appended,
            fragments=compacted,
            views={known.person_id: profile_model.view_to_bytes(view)},
            index=dict.fromkeys(known.identities, known.person_id),
            expected=expected,
        )
        raw_keys = [f"f:{key}" for key in keys]
        raw_keys += [f"f:{key}#{name}" for key, read in expected.items() if read is not None for name in read.deltas]
        flushes.append(Flush(known.person_id, keys, write, tuple(raw_keys), raw_cells(write)))
    return Traffic(profiled, flushes)


def raw_cells(write: ProfileWrite) -> dict[str, bytes]:
    """The write's bases, deltas, view and index entries as named cells of the same bytes."""
    cells = {f"f:{key}": doc for key, doc in write.fragments.items()}
    cells |= {f"f:{key}#{delta_id(doc)}": doc for key, doc in write.deltas.items()}
    cells |= {f"v:{owner}": doc for owner, doc in write.views.items()}
    cells |= {f"i:{identity}": owner.encode() for identity, owner in write.index.items()}
    return cells


def _visit(
    someone: Person, index: int, position: int, chance: random.Random, *, profile: bool
) -> list[tuple[dict[str, Any], bool, int, str]]:
    """A visit's records: (entity, is it an event, record time, message id)."""
    start_us = START_US + position * VISIT_STEP_US
    device = chance.choice(someone.devices)
    records = []
    if profile:
        at = _rfc3339(start_us)
        entity = {
            "_id": f"r-{position}",
            # From a CRM rather than a browser: the person's e-mail and CRM id, no device.
            "identityMap": _identity_map(someone.seen_on(device)[1:]),
            "person": {"name": {"firstName": chance.choice(FIRST_NAMES), "lastName": chance.choice(LAST_NAMES)}},
            "homeAddress": {"city": chance.choice(CITIES), "postalCode": str(chance.randrange(10_000, 100_000))},
            "personalEmail": {"address": someone.email.id},
            "loyalty": {"tier": chance.choice(TIERS), "points": chance.randrange(10_000)},
            "extSourceSystemAudit": {"lastUpdatedDate": at},
        }
        records.append((entity, False, start_us, f"m{position}-r"))
    for number in range(chance.randint(1, 4)):
        time_us = start_us + (number + 1) * 1_000_000
        page = chance.choice(PAGES)
        entity = {
            "_id": f"e-{position}-{number}",
            "timestamp": _rfc3339(time_us),
            "eventType": chance.choice(EVENT_TYPES),
            "identityMap": _identity_map(someone.seen_on(device)),
            "web": {"webPageDetails": {"name": page, "URL": f"https://shop.example.com/{page}?p={index}"}},
        }
        records.append((entity, True, time_us, f"m{position}-{number}"))
    return records


def _identity_map(identities: Sequence[Identity]) -> dict[str, list[dict[str, str]]]:
    return {identity.namespace: [{"id": identity.id}] for identity in identities}


def _rfc3339(time_us: int) -> str:
    return (EPOCH + datetime.timedelta(microseconds=time_us)).isoformat().replace("+00:00", "Z")


class RawCells(abc.ABC):
    """The reference: plain gets and sets of named cells on a store's technology, with nothing of a profile store."""

    @abc.abstractmethod
    def get_many(self, keys: Sequence[str]) -> int:
        """Reads the cells in one round trip; how many are stored."""

    @abc.abstractmethod
    def set_many(self, cells: Mapping[str, bytes]) -> None:
        """Writes the cells in one round trip."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class _SqliteCells(RawCells):
    def __init__(self, path: str) -> None:
        # Opened and tuned as the profile store opens its file (WAL, explicit transactions), so only the statements
        # differ.
        schema = "CREATE TABLE IF NOT EXISTS cells (key TEXT PRIMARY KEY, doc BLOB NOT NULL);"
        self._connection = open_store_file(path, schema, "raw cells")
        tune_for_writing(self._connection)

    def get_many(self, keys: Sequence[str]) -> int:
        marks = ",".join("?" * len(keys))
        return len(self._connection.execute(f"SELECT key, doc FROM cells WHERE key IN ({marks})", keys).fetchall())

    def set_many(self, cells: Mapping[str, bytes]) -> None:
        with transaction(self._connection):
            self._connection.executemany("INSERT OR REPLACE INTO cells VALUES (?, ?)", cells.items())

    def get(self, key: str) -> bytes | None:
        row = self._connection.execute("SELECT doc FROM cells WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def close(self) -> None:
        self._connection.close()


class _RedisCells(RawCells):
    def __init__(self, url: str, prefix: str = "bench:raw:") -> None:
        self._client = redis.Redis.from_url(url)
        self._prefix = prefix

    def get_many(self, keys: Sequence[str]) -> int:
        return sum(doc is not None for doc in self._client.mget([self._prefix + key for key in keys]))

    def set_many(self, cells: Mapping[str, bytes]) -> None:
        pipeline = self._client.pipeline(transaction=False)
        for key, doc in cells.items():
            pipeline.set(self._prefix + key, doc)
        pipeline.execute()

    def get(self, key: str) -> bytes | None:
        return self._client.get(self._prefix + key)

    def close(self) -> None:
        self._client.close()


class _BigtableCells(RawCells):
    _FAMILY, _COLUMN = "d", b"doc"

    def __init__(self, project: str, instance: str, table: str) -> None:
        from google.cloud.bigtable.data import BigtableDataClient

        # The table is made as the store makes its own (same families, one version per cell), so both are alike.
        open_profile_store(f"bigtable://{project}/{instance}/{table}").close()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Connecting to Bigtable emulator", RuntimeWarning)
            self._client = BigtableDataClient(project=project)
        self._table = self._client.get_table(instance, table)

    def get_many(self, keys: Sequence[str]) -> int:
        from google.cloud.bigtable.data import ReadRowsQuery

        return len(self._table.read_rows(ReadRowsQuery(row_keys=[key.encode() for key in keys])))

    def set_many(self, cells: Mapping[str, bytes]) -> None:
        from google.cloud.bigtable.data import RowMutationEntry, SetCell

        entries = [
            RowMutationEntry(key.encode(), [SetCell(self._FAMILY, self._COLUMN, doc)]) for key, doc in cells.items()
        ]
        self._table.bulk_mutate_rows(entries)

    def get(self, key: str) -> bytes | None:
        row = self._table.read_row(key.encode())
        return None if row is None else row.cells[0].value

    def close(self) -> None:
        self._client.close()


def open_raw_cells(url: str) -> RawCells:
    """Raw cells on the technology a store URL names (the forms of :func:`open_profile_store`)."""
    scheme, _, rest = url.partition("://")
    if scheme == "sqlite":
        return _SqliteCells(rest.removeprefix("/"))
    if scheme == "redis":
        return _RedisCells(url)
    if scheme == "bigtable":
        return _BigtableCells(*rest.split("/"))
    raise ValueError(f"unknown store URL {url!r}")


@dataclasses.dataclass(frozen=True)
class Rate:
    count: int = 0
    seconds: float = 0.0

    def __add__(self, other: Rate) -> Rate:
        return Rate(self.count + other.count, self.seconds + other.seconds)

    @property
    def per_s(self) -> float:
        return self.count / self.seconds


def flush_profiles(store: ProfileStore, flushes: Sequence[Flush]) -> None:
    """What the stage does against the store per flush: read the person's fragments, write everything at once."""
    for flush in flushes:
        store.fragments(flush.keys)
        store.write(flush.write)


def flush_raw(cells: RawCells, flushes: Sequence[Flush]) -> None:
    for flush in flushes:
        cells.get_many(flush.raw_keys)
        cells.set_many(flush.raw_cells)


def write_in_turns(
    store: ProfileStore, cells: RawCells, flushes: Sequence[Flush], turn: int = TURN_FLUSHES
) -> tuple[Rate, Rate]:
    """The flushes through the store and through the raw cells, taking turns; profiles/s and raw flushes/s."""
    profiles = raw = Rate()
    for number, start in enumerate(range(0, len(flushes), turn)):
        chunk = flushes[start : start + turn]
        # Who goes first alternates, so that neither always follows the other.
        for side in (0, 1) if number % 2 == 0 else (1, 0):
            began = time.perf_counter()
            if side == 0:
                flush_profiles(store, chunk)
                profiles += Rate(sum(len(flush.write.views) for flush in chunk), time.perf_counter() - began)
            else:
                flush_raw(cells, chunk)
                raw += Rate(len(chunk), time.perf_counter() - began)
    return profiles, raw


@dataclasses.dataclass(frozen=True)
class Lookup:
    """One lookup of the load: by an identity key or a person id, and the person it must find."""

    by: LookupBy
    asked: str
    person_id: str


def lookups(people: Sequence[Profiled], count: int, seed: int = SEED) -> list[Lookup]:
    """Half by a random identity of a random person, half by a random person's id, alternating."""
    chance = random.Random(f"{seed}:lookups")
    chosen = []
    for number in range(count):
        someone = chance.choice(people)
        if number % 2 == 0:
            chosen.append(Lookup("identity", chance.choice(someone.identities), someone.person_id))
        else:
            chosen.append(Lookup("person", someone.person_id, someone.person_id))
    return chosen


@dataclasses.dataclass(frozen=True)
class Latency:
    seconds: tuple[float, ...] = ()
    wall_s: float = 0.0

    def __add__(self, other: Latency) -> Latency:
        return Latency(self.seconds + other.seconds, self.wall_s + other.wall_s)

    @property
    def p50_ms(self) -> float:
        return self._percentile(50)

    @property
    def p99_ms(self) -> float:
        return self._percentile(99)

    @property
    def per_s(self) -> float:
        return len(self.seconds) / self.wall_s

    def _percentile(self, percent: int) -> float:
        return statistics.quantiles(self.seconds, n=100, method="inclusive")[percent - 1] * 1000


@dataclasses.dataclass(frozen=True)
class Side:
    """One way of looking up: a reader per client, and the check of each answer (raises when it is wrong)."""

    readers: Sequence[Callable[[Lookup], Any]]
    check: Callable[[Lookup, Any], None]


def http_side(clients: Sequence[httpx2.Client]) -> Side:
    def read(client: httpx2.Client, lookup: Lookup) -> httpx2.Response:
        if lookup.by == "identity":
            return client.get("/profiles", params={"identity": lookup.asked})
        return client.get(f"/profiles/{lookup.asked}")

    def check(lookup: Lookup, response: httpx2.Response) -> None:
        if response.status_code != 200 or response.json()["person_id"] != lookup.person_id:
            raise RuntimeError(f"{lookup}: HTTP {response.status_code} {response.text[:200]}")

    return Side([lambda lookup, client=client: read(client, lookup) for client in clients], check)


def store_side(store: ProfileStore, clients: int) -> Side:
    def read(lookup: Lookup) -> bytes | None:
        return store.view_by_identity(lookup.asked) if lookup.by == "identity" else store.view_by_person(lookup.asked)

    def check(lookup: Lookup, view: bytes | None) -> None:
        if view is None or profile_model.view_from_bytes(view)["person_id"] != lookup.person_id:
            raise RuntimeError(f"{lookup}: the store answers {view!r:.200}")

    return Side([read] * clients, check)


def raw_side(cells: RawCells, clients: int) -> Side:
    def read(lookup: Lookup) -> bytes | None:
        return cells.get(f"v:{lookup.person_id}")

    def check(lookup: Lookup, doc: bytes | None) -> None:
        if doc is None:
            raise RuntimeError(f"{lookup}: no raw view cell")

    return Side([read] * clients, check)


def timed_lookups(pool: concurrent.futures.Executor, side: Side, chosen: Sequence[Lookup]) -> Latency:
    """The lookups shared out among the side's clients, each in a thread; every one timed and its answer checked."""
    clients = len(side.readers)

    def client(number: int) -> list[tuple[float, Lookup, Any]]:
        done = []
        for lookup in chosen[number::clients]:
            began = time.perf_counter()
            answer = side.readers[number](lookup)
            done.append((time.perf_counter() - began, lookup, answer))
        return done

    began = time.perf_counter()
    parts = list(pool.map(client, range(clients)))
    wall_s = time.perf_counter() - began
    for part in parts:
        for _, lookup, answer in part:
            side.check(lookup, answer)
    return Latency(tuple(seconds for part in parts for seconds, _, _ in part), wall_s)


def lookup_latency(
    base_url: str,
    token: str,
    store: ProfileStore,
    cells: RawCells,
    chosen: Sequence[Lookup],
    clients: int = CLIENTS,
    turn: int = TURN_LOOKUPS,
) -> dict[str, Latency]:
    """Latencies of the lookups through the HTTP API, the store and the raw cells, taking turns (see the docstring)."""
    headers = {"Authorization": f"Bearer {token}"}
    with contextlib.ExitStack() as stack:
        https = [
            stack.enter_context(httpx2.Client(base_url=base_url, headers=headers, timeout=REQUEST_TIMEOUT_S))
            for _ in range(clients)
        ]
        sides = {"http": http_side(https), "store": store_side(store, clients), "raw": raw_side(cells, clients)}
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(clients))
        for side in sides.values():
            timed_lookups(pool, side, chosen[:clients])  # warm-up: connections opened, caches touched
        measured = dict.fromkeys(sides, Latency())
        for number, start in enumerate(range(0, len(chosen), turn)):
            labels = list(sides)[number % len(sides) :] + list(sides)[: number % len(sides)]
            for label in labels:
                measured[label] += timed_lookups(pool, sides[label], chosen[start : start + turn])
    return measured


@contextlib.contextmanager
def running_api(store_url: str, folder: str) -> Iterator[tuple[str, str]]:
    """``profilestream serve`` on the store, on a free loopback port with a fresh token; its base URL and token."""
    token = secrets.token_urlsafe(24)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--profile-store", store_url]
    environment = {**os.environ, API_TOKEN_ENV: token}
    with (
        httpx2.Client(base_url=base_url, timeout=1.0) as probe,
        local_server(
            "profilestream serve",
            command,
            Path(folder, "serve.log"),
            lambda: _healthy(probe),
            port=port,
            env=environment,
        ),
    ):
        yield base_url, token


def _healthy(probe: httpx2.Client) -> bool:
    try:
        return probe.get("/health").status_code == 200
    except httpx2.TransportError:
        return False


def start_backend(backend: str, folder: str, servers: contextlib.ExitStack) -> tuple[str, str, str] | None:
    """The backend's label, store URL and raw cells URL, its server started on ``servers``; ``None``, after saying
    why, when the server is not installed."""
    if backend == "sqlite":
        return "SQLite", f"sqlite:///{folder}/profiles.sqlite", f"sqlite:///{folder}/raw.sqlite"
    if backend == "redis":
        if shutil.which("redis-server") is None:
            print("Redis skipped: redis-server not found (Debian package redis-server)", flush=True)
            return None
        url = servers.enter_context(private_redis(folder))
        return "Redis", url, url
    binary = bigtable_emulator_binary()
    if binary is None:
        print("Bigtable skipped: cbtemulator not found (the Google Cloud CLI's bigtable emulator)", flush=True)
        return None
    host = servers.enter_context(private_bigtable_emulator(folder, binary))
    # Google's clients find the emulator through the environment: the store's, the raw cells' and the server's.
    servers.enter_context(mock.patch.dict(os.environ, {BIGTABLE_EMULATOR_HOST: host}))
    return "Bigtable", "bigtable://bench/bench/profiles", "bigtable://bench/bench/raw"


def bench_backend(
    label: str, store_url: str, cells_url: str, traffic: Traffic, chosen: Sequence[Lookup], clients: int, folder: str
) -> None:
    """Prints one backend's figures: profile writes/s beside raw flushes/s, then lookup latencies."""
    with open_profile_store(store_url) as store, contextlib.closing(open_raw_cells(cells_url)) as cells:
        profiles, raw = write_in_turns(store, cells, traffic.flushes)
        print(
            f"{label:<9} profile writes {profiles.per_s:8,.0f} profiles/s ({profiles.seconds:4.1f} s)   raw get+set "
            f"{raw.per_s:8,.0f} raw flushes/s ({raw.seconds:4.1f} s)   ratio {profiles.per_s / raw.per_s:4.2f}",
            flush=True,
        )
        with running_api(store_url, folder) as (base_url, token):
            measured = lookup_latency(base_url, token, store, cells, chosen, clients)
    http = measured["http"]
    print(
        f"{label:<9} HTTP lookups   p50 {http.p50_ms:7.3f} ms  p99 {http.p99_ms:7.3f} ms  {http.per_s:7,.0f} req/s",
        flush=True,
    )
    for name, reference in (("store lookups", measured["store"]), ("raw get", measured["raw"])):
        print(
            f"{'':<9}   {name:<13} p50 {reference.p50_ms:7.3f} ms  p99 {reference.p99_ms:7.3f} ms  "
            f"{reference.per_s:7,.0f} reads/s   ratio HTTP/this p50 {http.p50_ms / reference.p50_ms:6.1f}  "
            f"p99 {http.p99_ms / reference.p99_ms:6.1f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--people", type=int, default=PEOPLE, help="people in the traffic")
    parser.add_argument("--requests", type=int, default=REQUESTS, help="HTTP requests of the latency load")
    parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent HTTP clients")
    parser.add_argument(
        "--backends", default=",".join(BACKENDS), help=f"comma-separated, among {', '.join(BACKENDS)} (default: all)"
    )
    args = parser.parse_args(argv)
    backends = args.backends.split(",")
    if unknown := set(backends) - set(BACKENDS):
        parser.error(f"unknown backends: {', '.join(sorted(unknown))}")
    traffic = generate(args.people)
    chosen = lookups(traffic.people, args.requests)
    identities = sum(len(someone.identities) for someone in traffic.people)
    print(
        f"profiles: {args.people:,} people ({identities:,} identities), {len(traffic.flushes):,} flushes "
        f"({VISITS} visits each); lookups: {args.requests:,} from {args.clients} clients\n"
        "one raw flush: a plain batch get of a flush's fragment keys, then a batch set of its cells "
        "(bases, deltas, view, index)",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as work, contextlib.ExitStack() as servers:
        for backend in backends:
            started = start_backend(backend, work, servers)
            if started is not None:
                bench_backend(*started, traffic, chosen, args.clients, work)


if __name__ == "__main__":
    main()
