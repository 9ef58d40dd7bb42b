"""The identity store on SQLite: the embedded default, one file that the processes of one machine share.

In: the facts of a batch of observations (from :meth:`IdentityStore.observe
<stores.identity.IdentityStore.observe>`) or identities to read. Out: the facts of their raw components.
Opened by :func:`~stores.opening.open_identity_store` from ``sqlite:///path.db``; the folder is created.

Tables: ``identity_sightings (namespace, id, time_us, message_id)``, when each identity was first seen;
``identity_components (namespace, id, component)``, the raw component each identity is in; ``identity_links
(a_namespace, a_id, b_namespace, b_id, component, first_*, last_*)``, each link (``a < b``) with its earliest and
latest stamps and its component; ``identity_change_log (entry, cause_message_id, cause_time_us, before, batch,
logged_at_us)``, the logged batches, their facts as :meth:`GraphFacts.to_bytes <identity.model.GraphFacts.to_bytes>`
(entries older than the retention go when a store is opened). A batch is added in one ``BEGIN IMMEDIATE``
transaction (:mod:`stores.sqlite_files`), which reads the touched components and writes only the facts they lack.
Why: docs/decisions/0018-sqlite-stores-take-turns-in-immediate-transactions.md.

An erase (:meth:`SqliteIdentityStore.erase`) deletes in one transaction and then truncates the write-ahead log; a
writing store sets ``secure_delete``, so deleted rows leave no bytes in the file (:mod:`stores.sqlite_files`).

Durability: a writing store sets ``synchronous=NORMAL``, so a commit appends to the write-ahead log without waiting
for the disk (an fsync took 7 ms a commit on the development machine, 14 µs of every message of a batch of 500); the
log is synced when it is checkpointed into the file. A process that crashes loses nothing it committed: the log is in
the operating system's hands. A power loss or an operating-system crash may lose the last transactions committed
before it (never the file's consistency): their facts and log entries are gone while their records may already
have gone on to the lake and the profiles with the persons those facts made, so until the same identities are seen
together again the graph lacks those links, and a person they merged may come apart in later records.
"""

from __future__ import annotations

import contextlib
import itertools
import operator
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence

import orjson

from core.clock import wall_clock_us
from identity.model import GraphFacts, Identity, LoggedBatch, Stamp
from stores.identity import CHANGE_LOG_RETENTION_S, FactsBuilder, IdentityStore, logs_any
from stores.sqlite_files import erase_rows, insert_rows, is_busy, open_store_file, transaction

# Bound parameters per IN list, well under SQLite's limit of 32,766.
_IDS_PER_QUERY = 500

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS identity_sightings (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    time_us INTEGER NOT NULL,
    message_id TEXT NOT NULL,
    PRIMARY KEY (namespace, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS identity_components (
    namespace TEXT NOT NULL,
    id TEXT NOT NULL,
    component INTEGER NOT NULL,
    PRIMARY KEY (namespace, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identity_components_by_component ON identity_components (component);
CREATE TABLE IF NOT EXISTS identity_links (
    a_namespace TEXT NOT NULL,
    a_id TEXT NOT NULL,
    b_namespace TEXT NOT NULL,
    b_id TEXT NOT NULL,
    component INTEGER NOT NULL,
    first_time_us INTEGER NOT NULL,
    first_message_id TEXT NOT NULL,
    last_time_us INTEGER NOT NULL,
    last_message_id TEXT NOT NULL,
    PRIMARY KEY (a_namespace, a_id, b_namespace, b_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identity_links_by_component ON identity_links (component);
CREATE TABLE IF NOT EXISTS identity_change_log (
    entry INTEGER PRIMARY KEY,
    cause_message_id TEXT NOT NULL,
    cause_time_us INTEGER NOT NULL,
    before BLOB NOT NULL,
    batch BLOB NOT NULL,
    logged_at_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS identity_change_log_by_cause ON identity_change_log (cause_message_id);
COMMIT;
"""
# The identities a call asks about. A table rather than JSON or a long IN list: any number of them fits, and ids
# holding a NUL character (which SQLite's JSON and text functions cut short) compare whole. A connection's own, so a
# read-only one has it too.
_WANTED = """
CREATE TEMP TABLE IF NOT EXISTS wanted (namespace TEXT NOT NULL, id TEXT NOT NULL, PRIMARY KEY (namespace, id))
    WITHOUT ROWID
"""
_TABLES = ("identity_sightings", "identity_components", "identity_links")

# CROSS JOIN makes SQLite loop over the few wanted identities: it knows nothing of the temporary table's size and
# would otherwise scan every identity instead. The order the rows come in is the order of the facts read, which the
# change log keeps (GraphFacts.to_bytes): the touched components in the order their first wanted identity comes.
_TOUCHED = """
WITH touched AS (
    SELECT DISTINCT c.component FROM temp.wanted AS w CROSS JOIN identity_components AS c USING (namespace, id)
)
"""
_MEMBERS = (
    _TOUCHED
    + """
SELECT m.namespace, m.id, s.time_us, s.message_id, m.component
FROM touched JOIN identity_components AS m USING (component) JOIN identity_sightings AS s USING (namespace, id)
"""
)
_LINKS = (
    _TOUCHED
    + """
SELECT l.a_namespace, l.a_id, l.b_namespace, l.b_id,
    l.first_time_us, l.first_message_id, l.last_time_us, l.last_message_id
FROM touched JOIN identity_links AS l USING (component)
"""
)
_SIGHTING_COLUMNS, _COMPONENT_COLUMN = operator.itemgetter(0, 1, 2, 3), operator.itemgetter(4)
_ADD_SIGHTINGS = """
INSERT INTO identity_sightings (namespace, id, time_us, message_id) VALUES {rows}
ON CONFLICT (namespace, id) DO UPDATE SET time_us = excluded.time_us, message_id = excluded.message_id
WHERE (excluded.time_us, excluded.message_id) < (time_us, message_id)
"""
# SET expressions all read the row as it was, so each pair of columns tests the same condition.
_ADD_LINKS = """
INSERT INTO identity_links (
    a_namespace, a_id, b_namespace, b_id, component, first_time_us, first_message_id, last_time_us, last_message_id
) VALUES {rows}
ON CONFLICT (a_namespace, a_id, b_namespace, b_id) DO UPDATE SET
    first_time_us = iif(
        (excluded.first_time_us, excluded.first_message_id) < (first_time_us, first_message_id),
        excluded.first_time_us, first_time_us),
    first_message_id = iif(
        (excluded.first_time_us, excluded.first_message_id) < (first_time_us, first_message_id),
        excluded.first_message_id, first_message_id),
    last_time_us = iif(
        (excluded.last_time_us, excluded.last_message_id) > (last_time_us, last_message_id),
        excluded.last_time_us, last_time_us),
    last_message_id = iif(
        (excluded.last_time_us, excluded.last_message_id) > (last_time_us, last_message_id),
        excluded.last_message_id, last_message_id)
"""


_LOGGED_ROWS = "SELECT entry, cause_time_us, cause_message_id, before, batch FROM identity_change_log"
_WANTED_ROWS = "SELECT namespace, id FROM temp.wanted"
_ERASE_LINKS = f"""
DELETE FROM identity_links WHERE (a_namespace, a_id) IN ({_WANTED_ROWS}) OR (b_namespace, b_id) IN ({_WANTED_ROWS})
"""


class SqliteIdentityStore(IdentityStore):
    """The identity graph's facts in a SQLite file (or ``:memory:``, private to this store)."""

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        super().__init__()
        self._connection = open_store_file(path, _SCHEMA, "identity store", read_only=read_only, tables=_TABLES)
        self._connection.execute(_WANTED)
        if read_only:
            return
        # See the module docstring: a commit writes the log without waiting for the disk.
        self._connection.execute("PRAGMA synchronous=NORMAL")
        with transaction(self._connection):
            self._connection.execute(
                "DELETE FROM identity_change_log WHERE logged_at_us < ?",
                (wall_clock_us() - CHANGE_LOG_RETENTION_S * 1_000_000,),
            )

    def _add(self, batch: GraphFacts, cause: Stamp | None, discarded: Sequence[str]) -> tuple[GraphFacts, str | None]:
        with transaction(self._connection):
            before, component_of = self._read(batch.sightings)
            # Only what the rows lack is written: the lock is held since the read, so `before` is what they hold.
            additions = batch.additions_to(before)
            target_of = self._join_components(additions, component_of)
            insert_rows(
                self._connection,
                _ADD_SIGHTINGS,
                [(*identity, *stamp) for identity, stamp in additions.sightings.items()],
            )
            insert_rows(
                self._connection,
                _ADD_LINKS,
                [(*a, *b, target_of[a], *first, *last) for a, b, first, last in additions.links.values()],
            )
            self._connection.executemany(
                "DELETE FROM identity_change_log WHERE entry = ?", [(int(entry),) for entry in discarded]
            )
            entry = None
            if cause is not None and (additions.sightings or additions.links):
                logged = self._connection.execute(
                    "INSERT INTO identity_change_log (cause_message_id, cause_time_us, before, batch, logged_at_us)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (cause.message_id, cause.time_us, before.to_bytes(), batch.to_bytes(), wall_clock_us()),
                )
                entry = str(logged.lastrowid)
        return before, entry

    def logged(self, message_ids: Iterable[str]) -> list[LoggedBatch]:
        wanted = list(dict.fromkeys(message_ids))
        chunks = [wanted[start : start + _IDS_PER_QUERY] for start in range(0, len(wanted), _IDS_PER_QUERY)]
        found = []
        # Several queries read in one transaction, so that they see one state of the log; one query always does.
        with transaction(self._connection, "BEGIN") if len(chunks) > 1 else contextlib.nullcontext():
            for chunk in chunks:
                marks = ",".join("?" * len(chunk))
                found += self._connection.execute(
                    f"{_LOGGED_ROWS} WHERE cause_message_id IN ({marks}) ORDER BY entry",
                    chunk,
                ).fetchall()
        return [_logged_batch(*row) for row in found]

    def erase(self, identities: Iterable[Identity]) -> dict[str, int]:
        """See :meth:`IdentityStore.erase`: one transaction, after which the write-ahead log is truncated and
        ``"wal_truncated"`` says whether it was (:func:`~stores.sqlite_files.erase_rows`). The log entries are found by
        searching their bytes for the identities' ids and decoding those that hold one: every entry is read."""
        erased = set(identities)
        return erase_rows(self._connection, lambda: self._erase(erased))

    def facts_of(self, identities: Iterable[Identity]) -> GraphFacts:
        # A read transaction, so the members and the links come from one snapshot.
        with transaction(self._connection, "BEGIN"):
            facts, _ = self._read(identities)
        return facts

    def close(self) -> None:
        self._connection.close()

    def _erase(self, erased: set[Identity]) -> dict[str, int]:
        """Deletes the identities' rows and the log entries that mention them, and splits what remains of their
        components; within the caller's transaction."""
        execute = self._connection.execute
        before, component_of = self._read(erased)
        links = execute(_ERASE_LINKS).rowcount
        sightings = execute(f"DELETE FROM identity_sightings WHERE (namespace, id) IN ({_WANTED_ROWS})").rowcount
        execute(f"DELETE FROM identity_components WHERE (namespace, id) IN ({_WANTED_ROWS})")
        self._split(_without(before, erased), component_of)
        entries = [(int(batch.entry),) for batch in self._logged_mentioning(erased) if logs_any(batch, erased)]
        self._connection.executemany("DELETE FROM identity_change_log WHERE entry = ?", entries)
        return {"identities": sightings, "links": links, "log_entries": len(entries)}

    def _logged_mentioning(self, identities: set[Identity]) -> list[LoggedBatch]:
        """The logged batches whose facts' bytes hold the JSON text of one of the identities' ids: every batch that
        logs one of them, and maybe some others (an id may be part of another id or of a message id)."""
        texts = list({orjson.dumps(identity.id)[1:-1] for identity in identities})
        found = {}
        for start in range(0, len(texts), _IDS_PER_QUERY):
            chunk = texts[start : start + _IDS_PER_QUERY]
            # instr() of BLOBs compares bytes: the entries are searched without decoding them.
            where = " OR ".join(f"instr(before, ?{i}) OR instr(batch, ?{i})" for i in range(1, len(chunk) + 1))
            for row in self._connection.execute(f"{_LOGGED_ROWS} WHERE {where}", chunk):
                found[row[0]] = row
        return [_logged_batch(*row) for row in found.values()]

    def _split(self, remaining: GraphFacts, component_of: dict[Identity, int]) -> None:
        """Gives each raw component of the remaining facts a component of its own: the largest part of each former
        component (ties: the first found) keeps it, each other part takes a new one."""
        parts: dict[int, list[list[Identity]]] = defaultdict(list)
        for members in _raw_components(remaining):
            parts[component_of[members[0]]].append(members)
        next_component = self._next_component()
        moved: dict[Identity, int] = {}
        for split in parts.values():
            for members in sorted(split, key=len, reverse=True)[1:]:
                moved.update(dict.fromkeys(members, next_component))
                next_component += 1
        self._connection.executemany(
            "UPDATE identity_components SET component = ? WHERE namespace = ? AND id = ?",
            [(component, *identity) for identity, component in moved.items()],
        )
        self._connection.executemany(
            "UPDATE identity_links SET component = ?"
            " WHERE a_namespace = ? AND a_id = ? AND b_namespace = ? AND b_id = ?",
            [(moved[a], *a, *b) for a, b in remaining.links if a in moved],
        )

    def is_transient(self, error: BaseException) -> bool:
        return is_busy(error)

    def _read(self, identities: Iterable[Identity]) -> tuple[GraphFacts, dict[Identity, int]]:
        """The facts of the identities' components, and the component of each of their members."""
        execute = self._connection.execute
        execute("DELETE FROM temp.wanted")
        # An identity is a (namespace, id) tuple: the row itself.
        insert_rows(self._connection, "INSERT OR IGNORE INTO temp.wanted VALUES {rows}", list(identities))
        builder = FactsBuilder()
        members = execute(_MEMBERS).fetchall()
        found = builder.add_sightings(map(_SIGHTING_COLUMNS, members))
        builder.add_links(execute(_LINKS))
        return builder.facts(), dict(zip(found, map(_COMPONENT_COLUMN, members), strict=True))

    def _join_components(self, additions: GraphFacts, component_of: dict[Identity, int]) -> dict[Identity, int]:
        """Merge the components the new links join, place the new identities; the component of each identity of
        the additions (a new identity has a new sighting; a new link's identities may have none)."""
        # Union-find over the batch's links. A node is a stored component, or an identity new to the store.
        parent: dict[int | Identity, int | Identity] = {}

        def root(node: int | Identity) -> int | Identity:
            path = []
            while node in parent:
                path.append(node)
                node = parent[node]
            for step in path:
                parent[step] = node
            return node

        for a, b in additions.links:
            root_a, root_b = root(component_of.get(a, a)), root(component_of.get(b, b))
            if root_a != root_b:
                parent[root_a] = root_b
        groups: dict[int | Identity, list[Identity]] = defaultdict(list)
        for identity in dict.fromkeys([*additions.sightings, *itertools.chain.from_iterable(additions.links)]):
            groups[root(component_of.get(identity, identity))].append(identity)

        sizes: Counter[int] | None = None  # Counted when first needed: most groups are in one component or none.
        next_component = None
        moves: list[tuple[int, int]] = []
        placements: list[tuple[str, str, int]] = []
        target_of: dict[Identity, int] = {}
        for members in groups.values():
            components = {component_of[i] for i in members if i in component_of}
            if len(components) == 1:
                (target,) = components
            elif components:
                # Into the largest (ties: the lowest id), so an identity moves at most log2(n) times.
                sizes = sizes or Counter(component_of.values())
                target = max(components, key=lambda component: (sizes[component], -component))
            else:
                if next_component is None:
                    next_component = self._next_component()
                target, next_component = next_component, next_component + 1
            moves += [(target, component) for component in components if component != target]
            placements += [(i.namespace, i.id, target) for i in members if i not in component_of]
            target_of.update(dict.fromkeys(members, target))
        self._connection.executemany("UPDATE identity_components SET component = ? WHERE component = ?", moves)
        self._connection.executemany("UPDATE identity_links SET component = ? WHERE component = ?", moves)
        insert_rows(self._connection, "INSERT INTO identity_components VALUES {rows}", placements)
        return target_of

    def _next_component(self) -> int:
        """The number after the largest component any identity is in: a new component's."""
        (next_component,) = self._connection.execute(
            "SELECT COALESCE(MAX(component), 0) + 1 FROM identity_components"
        ).fetchone()
        return next_component


def _logged_batch(entry: int, time_us: int, message_id: str, before: bytes, batch: bytes) -> LoggedBatch:
    """A logged batch from its row of ``identity_change_log``."""
    return LoggedBatch(
        str(entry), Stamp(time_us, message_id), GraphFacts.from_bytes(before), GraphFacts.from_bytes(batch)
    )


def _without(facts: GraphFacts, erased: set[Identity]) -> GraphFacts:
    """The facts without the erased identities' sightings and the links that touch them."""
    return GraphFacts(
        {identity: stamp for identity, stamp in facts.sightings.items() if identity not in erased},
        {pair: link for pair, link in facts.links.items() if erased.isdisjoint(pair)},
    )


def _raw_components(facts: GraphFacts) -> list[list[Identity]]:
    """The identities of the facts grouped by raw component: those their links connect, directly or not."""
    neighbours: dict[Identity, list[Identity]] = defaultdict(list)
    for a, b in facts.links:
        neighbours[a].append(b)
        neighbours[b].append(a)
    seen: set[Identity] = set()
    components = []
    for start in facts.sightings:
        if start in seen:
            continue
        seen.add(start)
        members, frontier = [start], [start]
        while frontier:
            for neighbour in neighbours[frontier.pop()]:
                if neighbour not in seen:
                    seen.add(neighbour)
                    members.append(neighbour)
                    frontier.append(neighbour)
        components.append(members)
    return components
