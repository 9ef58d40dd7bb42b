"""``make bench``, identity part: linking throughput of the identity stores, and the stitching stage's peak memory.

    python -m tools.bench_identity [--identities N] [--stage-records N]

Traffic, seeded and streamed (never held whole): people arrive one after the other, each with 1-3 devices (ECID), an
e-mail and, for some, a CRM id, each device first seen with their e-mail (and CRM id); people seen before come back,
now and then on a device of their household's other person (between two CRM ids the unique-namespace rule fires).
Every observation holds 2 or 3 identities; people keep arriving until the graph holds ``--identities`` identities
(1,000,000; a few more, as the last person comes whole).

Figures (README, "`make bench`"), each beside a reference from the same run:

- **links/s** per store backend (SQLite in a file; Redis on a private ``redis-server`` on a free loopback port,
  without persistence, stopped at the end), batches of 500 going through the stage's per-batch steps
  (``store.observe``, ``resolve`` of the facts before and after, ``changes``), beside :class:`InMemoryGraph`, the same
  steps over an in-memory graph; a link is a pair of identities observed together; printed with the size of the graph
  in the store (the SQLite file and its log, or Redis's ``used_memory``).
- **peak memory**: ``ru_maxrss`` of :class:`~transforms.stitch.StitchIdentities` on FnApiRunner with a SQLite store
  over the first ``--stage-records`` records (100,000), beside the in-memory reference stitching the same records,
  each in a fresh process, with what was there before the work started (imports, schemas).

About 20 minutes on a 2-core machine (1 for the memory figure, then 4 of batches for the reference, 7 for SQLite and
5 for Redis). How the figures are kept fair on a shared machine:
docs/decisions/0027-benchmarks-print-a-reference-from-the-same-run.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import datetime
import itertools
import multiprocessing
import multiprocessing.connection
import random
import resource
import shutil
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import apache_beam as beam
import redis

from core.clock import EPOCH
from core.records import ValidRecord
from identity.graph import GraphRules, changes, resolve
from identity.model import GraphFacts, Identity, Observation, Stamp
from identity.namespaces import EXPERIENCE_EVENT_CLASS, extract_identities, record_time_us
from pipelines.config import Config
from schemas.registry import SchemaRegistry
from stores.identity import IdentityStore
from stores.opening import identity_store_handler, open_identity_store
from tools.store_servers import private_redis
from transforms.stitch import StitchIdentities

SEED = 20261101
BATCH_SIZE = 500  # the stage's default batch
TURN_BATCHES = 40
REFERENCE = "reference"
IDENTITIES = 1_000_000
STAGE_RECORDS = 100_000
START_US = 1_793_523_600_000_000  # 2026-11-01T09:00:00Z
STEP_US = 100_000  # record time between two observations
RETURNS_PER_ARRIVAL = 2
SHARED_DEVICE_SHARE = 0.05
CRMID_SHARE = 0.4
EVENT_DATASET = "experience_events"
MB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Person:
    """Someone in the traffic: their devices, their e-mail and maybe a CRM id."""

    devices: tuple[Identity, ...]
    email: Identity
    crmid: Identity | None

    @property
    def identities(self) -> int:
        return len(self.devices) + 1 + (self.crmid is not None)

    def seen_on(self, device: Identity) -> tuple[Identity, ...]:
        return (device, self.email) if self.crmid is None else (device, self.email, self.crmid)


def person(index: int, seed: int = SEED) -> Person:
    """The ``index``-th person of the traffic; a function of the index alone, so nobody need be kept."""
    chance = random.Random(f"{seed}:{index}")
    devices = tuple(Identity("ECID", str(chance.randrange(10**37, 10**38))) for _ in range(chance.randint(1, 3)))
    crmid = Identity("CRMID", f"crm-{index}") if chance.random() < CRMID_SHARE else None
    return Person(devices, Identity("Email", f"person{index}@example.com"), crmid)


def traffic(identities: int, seed: int = SEED) -> Iterator[Observation]:
    """Observations until ``identities`` distinct identities have been seen; see the module docstring."""
    chance = random.Random(seed)
    arrived = seen = 0
    stamps = (Stamp(START_US + position * STEP_US, f"m{position:09d}") for position in itertools.count())
    while seen < identities:
        newcomer = person(arrived, seed)
        arrived += 1
        seen += newcomer.identities
        for device in newcomer.devices:
            yield Observation(newcomer.seen_on(device), next(stamps))
        for _ in range(RETURNS_PER_ARRIVAL):
            index = chance.randrange(arrived)
            returning = person(index, seed)
            device = chance.choice(returning.devices)
            household = index ^ 1  # people 2k and 2k+1 share a home
            if chance.random() < SHARED_DEVICE_SHARE and household < arrived:
                device = chance.choice(person(household, seed).devices)
            yield Observation(returning.seen_on(device), next(stamps))


def batches(observations: Iterable[Observation], size: int = BATCH_SIZE) -> Iterator[list[Observation]]:
    iterator = iter(observations)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def links_in(observation: Observation) -> int:
    count = len(set(observation.identities))
    return count * (count - 1) // 2


class InMemoryGraph:
    """The reference: the graph's facts in dicts, by raw component as the stores keep them, added with ``merged_with``.

    ``observe`` answers as :meth:`IdentityStore.observe <stores.identity.IdentityStore.observe>` does: the
    facts of the raw components the observations touch, before and after them.
    """

    def __init__(self) -> None:
        self._component_of: dict[Identity, int] = {}
        self._components: dict[int, GraphFacts] = {}
        self._next_component = itertools.count()

    def observe(self, observations: Sequence[Observation]) -> tuple[GraphFacts, GraphFacts]:
        touched = {
            self._component_of[identity]
            for observation in observations
            for identity in observation.identities
            if identity in self._component_of
        }
        sightings, links = {}, {}
        for component in touched:
            facts = self._components.pop(component)
            sightings.update(facts.sightings)
            links.update(facts.links)
        before = GraphFacts(sightings, links)
        after = before.merged_with(observations)
        for facts in _raw_components(after):
            component = next(self._next_component)
            self._components[component] = facts
            self._component_of.update(dict.fromkeys(facts.sightings, component))
        return before, after


def _raw_components(facts: GraphFacts) -> list[GraphFacts]:
    """The facts split into connected components, every link counting."""
    parent = {identity: identity for identity in facts.sightings}

    def root(identity: Identity) -> Identity:
        while parent[identity] != identity:
            parent[identity] = parent[parent[identity]]
            identity = parent[identity]
        return identity

    for a, b in facts.links:
        parent[root(a)] = root(b)
    sightings = defaultdict(dict)
    links = defaultdict(dict)
    for identity, stamp in facts.sightings.items():
        sightings[root(identity)][identity] = stamp
    for pair, link in facts.links.items():
        links[root(pair[0])][pair] = link
    return [GraphFacts(members, links[top]) for top, members in sightings.items()]


def stitch_batch(graph: IdentityStore | InMemoryGraph, observations: Sequence[Observation], rules: GraphRules) -> int:
    """What the stage does with a batch once it has its observations; returns the number of changes reported."""
    before, after = graph.observe(observations)
    latest = max(observation.stamp for observation in observations)
    return len(changes(resolve(before, rules), resolve(after, rules), latest))


@dataclasses.dataclass(frozen=True)
class Throughput:
    links: int = 0
    seconds: float = 0.0
    changes: int = 0

    def __add__(self, other: Throughput) -> Throughput:
        return Throughput(self.links + other.links, self.seconds + other.seconds, self.changes + other.changes)

    @property
    def links_per_s(self) -> float:
        return self.links / self.seconds


def build_in_turns(stores: Mapping[str, str | None], identities: int) -> dict[str, Throughput]:
    """Builds one graph of the traffic per store URL (``None``: the in-memory reference), each in a process of its
    own, the processes taking turns of :data:`TURN_BATCHES` batches; the throughput of each, by label."""
    context = multiprocessing.get_context("spawn")
    connections, builders = {}, []
    for label, url in stores.items():
        connection, builder_end = context.Pipe()
        builders.append(context.Process(target=_build, args=(builder_end, url, identities), daemon=True))
        builders[-1].start()
        connections[label] = connection
    for connection in connections.values():
        connection.recv()  # ready: imported and connected, so no builder starts up while another is timed
    totals = dict.fromkeys(stores, Throughput())
    for turn in itertools.count():
        # Who goes first rotates, so that none always follows the same one.
        labels = list(stores)[turn % len(stores) :] + list(stores)[: turn % len(stores)]
        parts = {}
        for label in labels:
            connections[label].send(TURN_BATCHES)
            parts[label] = connections[label].recv()
            totals[label] += parts[label]
        if not any(part.links for part in parts.values()):
            break
    for connection in connections.values():
        connection.send(0)
        connection.close()
    for builder in builders:
        builder.join()  # each closes its store first
    return totals


def _build(connection: multiprocessing.connection.Connection, url: str | None, identities: int) -> None:
    """A builder process: each number received is how many more batches to stitch; answers with their throughput."""
    rules = Config().stitch_settings().graph
    graph = InMemoryGraph() if url is None else open_identity_store(url)
    pending = batches(traffic(identities))
    connection.send(None)
    while turn := connection.recv():
        part = Throughput()
        for batch in itertools.islice(pending, turn):
            start = time.perf_counter()
            found = stitch_batch(graph, batch, rules)
            part += Throughput(sum(map(links_in, batch)), time.perf_counter() - start, found)
        connection.send(part)
    if url is not None:
        graph.close()


def traffic_size(identities: int) -> tuple[int, int, int]:
    """Observations, links and batches of the traffic."""
    observations = links = 0
    for observation in traffic(identities):
        observations += 1
        links += links_in(observation)
    return observations, links, -(-observations // BATCH_SIZE)


def sample_records(count: int, identities: int) -> Iterator[ValidRecord]:
    """The first ``count`` observations of the traffic as the ExperienceEvents that would carry them."""
    for observation in itertools.islice(traffic(identities), count):
        stamp = observation.stamp
        at = (EPOCH + datetime.timedelta(microseconds=stamp.time_us)).isoformat().replace("+00:00", "Z")
        identity_map = {identity.namespace: [{"id": identity.id}] for identity in observation.identities}
        entity = {"_id": f"e-{stamp.message_id}", "timestamp": at, "identityMap": identity_map}
        yield ValidRecord(
            EVENT_DATASET, EXPERIENCE_EVENT_CLASS, entity, stamp.message_id, 0, stamp.time_us, stamp.time_us
        )


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def stage_memory(records: int, identities: int, store_url: str) -> tuple[int, int]:
    """Peak RSS before and after running the stage over the sample records (run it in a process of its own)."""
    registry = SchemaRegistry.load()
    settings = Config().stitch_settings()
    before = _max_rss()
    with beam.Pipeline(runner="FnApiRunner") as pipeline:
        _ = (
            pipeline
            | beam.Impulse()
            | "SampleRecords" >> beam.FlatMap(lambda _: sample_records(records, identities))
            | StitchIdentities(registry, identity_store_handler(store_url), settings)
        )
    return before, _max_rss()


def reference_memory(records: int, identities: int) -> tuple[int, int]:
    """Peak RSS before and after the in-memory reference stitches the sample records (in a process of its own)."""
    settings = Config().stitch_settings()
    before = _max_rss()
    graph = InMemoryGraph()
    for batch in batches(sample_records(records, identities)):
        observations = [
            Observation(
                extract_identities(record.entity, settings.namespaces, settings.rules).identities,
                Stamp(record_time_us(record.entity, record.schema_id, record.publish_time_us), record.message_id),
            )
            for record in batch
        ]
        stitch_batch(graph, observations, settings.graph)
    return before, _max_rss()


def in_fresh_process(function: Callable[..., tuple[int, int]], *args: object) -> tuple[int, int]:
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def stored_megabytes(url: str) -> float:
    """How much the graph takes in the store: the SQLite file and its write-ahead log, or the Redis server's memory."""
    if url.startswith("redis://"):
        with redis.Redis.from_url(url) as client:
            return client.info("memory")["used_memory"] / MB
    database = Path(url.removeprefix("sqlite:///"))
    return sum(path.stat().st_size for path in database.parent.glob(database.name + "*")) / MB


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=IDENTITIES, help="size of the identity graph to build")
    parser.add_argument("--stage-records", type=int, default=STAGE_RECORDS, help="records for the memory figure")
    args = parser.parse_args(argv)
    observations, links, batch_count = traffic_size(args.identities)
    print(
        f"identity graph: {args.identities:,} identities from {observations:,} generated observations "
        f"({links:,} links) in {batch_count:,} batches of {BATCH_SIZE}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as work:
        # First, while this process is small (see the module docstring).
        stage_start, stage_peak = in_fresh_process(
            stage_memory, args.stage_records, args.identities, f"sqlite:///{work}/stage.sqlite"
        )
        reference_start, reference_peak = in_fresh_process(reference_memory, args.stage_records, args.identities)
        print(
            f"peak RSS over the first {args.stage_records:,} records: StitchIdentities (FnApiRunner, SQLite) "
            f"{stage_peak / MB:,.0f} MB ({stage_start / MB:,.0f} MB before the run) vs in-memory reference "
            f"{reference_peak / MB:,.0f} MB ({reference_start / MB:,.0f} MB before): "
            f"ratio {stage_peak / reference_peak:4.2f}",
            flush=True,
        )
        with contextlib.ExitStack() as servers:
            stores = {"SQLite (file)": f"sqlite:///{work}/identity.sqlite"}
            redis_found = shutil.which("redis-server") is not None
            if redis_found:
                stores["Redis (private redis-server)"] = servers.enter_context(private_redis(work))
            measured = build_in_turns({REFERENCE: None, **stores}, args.identities)
            reference = measured[REFERENCE]
            print(
                f"reference, in-memory graph (merged_with+resolve+changes) {reference.links_per_s:10,.0f} links/s  "
                f"({reference.seconds:5.1f} s, {reference.changes:,} changes)"
            )
            for label, url in stores.items():
                store = measured[label]
                print(
                    f"store {label:<50} {store.links_per_s:10,.0f} links/s  ({store.seconds:5.1f} s, "
                    f"{store.changes:,} changes, {stored_megabytes(url):,.0f} MB stored)  "
                    f"ratio to reference {store.links_per_s / reference.links_per_s:4.2f}"
                )
        if not redis_found:
            print("store Redis skipped: redis-server not found (Debian package redis-server)")


if __name__ == "__main__":
    main()
