"""The profile store on SQLite: the embedded default, one file that the processes of one machine share.

Opened by :func:`~stores.opening.open_profile_store` from ``sqlite:///path.db`` (the folder is created) or
``sqlite:///:memory:`` (private to the store object). Tables: ``fragments (key, doc)``, the base of each (identity,
dataset); ``fragment_deltas (key, delta, doc)``, the deltas appended to it since; ``views (person, doc)``, the merged
profile of each live person; ``identity_index (identity, person)``, every identity of a profile; ``redirects (person,
target)``, a person id merged away → the person that absorbed it.

A write runs in one ``BEGIN IMMEDIATE`` transaction (:mod:`stores.sqlite_files`), first reads the delta names and base
keys of the fragments it expects (and the bases it replaces) and raises :class:`~profiles.writer.ProfileWriteConflict`
if any differs, then drops views and index entries and puts. It skips that check when SQLite's ``data_version`` says
that no other connection has committed since this one's last read found every fragment the write expects as it expects
it, and this one has not written since: as for a single writer's flushes, each of which reads and then writes. A file of
the layout before deltas (bases only) is read as it is: the table of deltas is added, empty.
Redirects are one step long, so each lookup is one query that follows at most one. An erase
(:meth:`SqliteProfileStore.erase`) deletes in one transaction and then truncates the write-ahead log; a writing store
sets ``secure_delete``, so deleted rows leave no bytes in the file (:mod:`stores.sqlite_files`). Why:
docs/decisions/0018-sqlite-stores-take-turns-in-immediate-transactions.md,
docs/decisions/0020-redirects-are-one-step-long.md.

Durability: a writing store sets ``synchronous=NORMAL``, as the identity store does (:mod:`stores.identity_sqlite`), so
a commit appends to the write-ahead log without waiting for the disk (a flush's commit, some 2.5 MB, took 48 ms to sync
on the development machine, 100 µs of wall time per message); the log is synced when it is checkpointed into the file. A
process that crashes loses nothing it committed: the log is in the operating system's hands. A power loss or an
operating-system crash may lose the last writes committed before it (never the file's consistency: a write's deltas,
bases, views, index entries and redirects go or stay together), while their records may already have been acknowledged
and gone on to the lake: the profiles then lack what those records said (an attribute until a later record sets it
again, an event for good), and their persons' views stay as they were until the persons' next flush.

A writing store keeps :data:`CACHE_KIB` of pages in memory, where SQLite's default is 2 MiB: a flush of 500 messages
reads about 2.5 MB of fragments and writes as much, so with the default every flush read its pages from the operating
system again (a seventh of the store's CPU time over five copies of the sample). It also checkpoints its log into the
file every :data:`CHECKPOINT_PAGES` pages rather than SQLite's 1,000: such a flush writes some 650 pages, so with the
default nearly every other commit copied the log into the file and synced it, pages that the next flushes write again
(the persons' views) included; over the same copies the store's CPU time per message fell by a tenth. The log file grows
to about 16 MB and stays that size, and what a power loss may lose (see Durability) is up to that much of the last
writes, the log being synced only when it is checkpointed.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

from profiles.writer import ProfileWrite, ProfileWriteConflict, StoredFragment, delta_id
from stores.profiles import ProfileStore, changed_since_read, changes_nothing
from stores.sqlite_files import erase_rows, is_busy, open_store_file, transaction

CACHE_KIB = 16 * 1024
CHECKPOINT_PAGES = 4000
# Bound parameters per IN list, well under SQLite's limit of 32,766.
KEYS_PER_QUERY = 500

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS fragments (key TEXT PRIMARY KEY, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS fragment_deltas (key TEXT NOT NULL, delta TEXT NOT NULL, doc BLOB NOT NULL,
  PRIMARY KEY (key, delta));
CREATE TABLE IF NOT EXISTS views (person TEXT PRIMARY KEY, doc BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS identity_index (identity TEXT PRIMARY KEY, person TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS redirects (person TEXT PRIMARY KEY, target TEXT NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS redirects_by_target ON redirects (target);
COMMIT;
"""

_VIEW_BY_IDENTITY = """
SELECT v.doc FROM identity_index AS i
LEFT JOIN redirects AS r ON r.person = i.person
JOIN views AS v ON v.person = COALESCE(r.target, i.person)
WHERE i.identity = ?
"""
_VIEW_BY_PERSON = """
SELECT doc FROM views WHERE person = COALESCE((SELECT target FROM redirects WHERE person = :person), :person)
"""
# One redirect, in three steps. A survivor that the retired person had absorbed earlier (the persons merged one way,
# split, and merge the other way now) is live again: the newer redirect wins.
_REVIVE_SURVIVOR = "DELETE FROM redirects WHERE person = :survivor AND target = :retired"
_REDIRECT = """
INSERT OR REPLACE INTO redirects (person, target)
VALUES (:retired, COALESCE((SELECT target FROM redirects WHERE person = :survivor), :survivor))
"""
_REPOINT = """
UPDATE redirects SET target = (SELECT target FROM redirects WHERE person = :retired) WHERE target = :retired
"""


class SqliteProfileStore(ProfileStore):
    """Fragments, views, the identity index and redirects in a SQLite file (or ``:memory:``)."""

    def __init__(self, path: str, *, read_only: bool = False) -> None:
        self._connection = open_store_file(
            path, _SCHEMA, "profile store", read_only=read_only, tables=("fragments", "views", "identity_index")
        )
        if not read_only:
            tune_for_writing(self._connection)

        # What the last read found of each key it asked for (absent: None) and the file's data version then; forgotten
        # at a write (this connection's own writes leave the version as it is).
        self._read_at: dict[str, tuple[int, StoredFragment | None]] = {}

    def fragments(self, keys: Iterable[str]) -> dict[str, StoredFragment]:
        wanted = list(keys)
        with transaction(self._connection, "BEGIN"):
            found = _stored(self._select(_FRAGMENT_ROWS, wanted))
            version = self._data_version()
            self._read_at = {key: (version, found.get(key)) for key in wanted}
        return found

    def write(self, change: ProfileWrite) -> None:
        if changes_nothing(change):
            return
        execute_each = self._connection.executemany
        read_at, self._read_at = self._read_at, {}
        with transaction(self._connection):
            replaced = [key for key in change.fragments if key in change.expected]
            # Expected as read, and no connection has committed since: the fragments are as expected.
            version = self._data_version()
            if any(read_at.get(key) != (version, read) for key, read in change.expected.items()):
                # Names only, and the bases only where they are replaced: the check must cost less than the read.
                names = [(key, delta, b"") for key, delta in self._select(_FRAGMENT_NAMES, change.expected)]
                held = _stored([*names, *self._select(_BASES, replaced)])
                if changed_since_read(change, held):
                    raise ProfileWriteConflict(f"{len(change.expected)} fragments changed since they were read")
            execute_each("DELETE FROM views WHERE person = ?", [(person,) for person in change.drop_views])
            execute_each("DELETE FROM identity_index WHERE identity = ?", [(key,) for key in change.unindex])
            execute_each(
                "DELETE FROM fragment_deltas WHERE key = ? AND delta = ?",
                [(key, delta) for key in replaced for delta in (change.expected[key] or _ABSENT).deltas],
            )
            execute_each(_PUT_BASE, change.fragments.items())
            execute_each(
                "INSERT OR REPLACE INTO fragment_deltas VALUES (?, ?, ?)",
                [(key, delta_id(doc), doc) for key, doc in change.deltas.items()],
            )
            execute_each(_PUT_VIEW, change.views.items())
            execute_each(_INDEX, change.index.items())
            execute_each("DELETE FROM redirects WHERE person = ?", [(person,) for person in change.views])
            # In order: each redirect resolves against the ones before it.
            for retired, survivor in change.redirects.items():
                if retired == survivor:
                    continue
                names = {"retired": retired, "survivor": survivor}
                for statement in (_REVIVE_SURVIVOR, _REDIRECT, _REPOINT):
                    self._connection.execute(statement, names)

    def view_by_identity(self, identity_key: str) -> bytes | None:
        return _first(self._connection.execute(_VIEW_BY_IDENTITY, (identity_key,)).fetchone())

    def view_by_person(self, person_id: str) -> bytes | None:
        return _first(self._connection.execute(_VIEW_BY_PERSON, {"person": person_id}).fetchone())

    def erase(self, person_ids: Iterable[str], identity_keys: Iterable[str]) -> dict[str, int]:
        """See :meth:`ProfileStore.erase`: one transaction, after which the write-ahead log is truncated and
        ``"wal_truncated"`` says whether it was (:func:`~stores.sqlite_files.erase_rows`). The index entries pointing
        to the persons are found by reading the whole index, which is kept by identity only."""
        persons, keys = list(person_ids), list(identity_keys)
        # The erase writes: what the last read found is no longer known to hold.
        self._read_at = {}
        return erase_rows(self._connection, lambda: self._erase(persons, keys))

    def retired_into(self, person_ids: Iterable[str]) -> set[str]:
        return {
            person for (person,) in self._select("SELECT person FROM redirects WHERE target IN ({keys})", person_ids)
        }

    def close(self) -> None:
        self._connection.close()

    def is_transient(self, error: BaseException) -> bool:
        return is_busy(error)

    def _data_version(self) -> int:
        """SQLite's count of the commits of other connections to the file, as of this transaction."""
        return self._connection.execute("PRAGMA data_version").fetchone()[0]

    def _erase(self, persons: list[str], keys: list[str]) -> dict[str, int]:
        """Deletes the persons' rows and the identities' index entries and fragments; within the caller's
        transaction."""
        views = self._select("DELETE FROM views WHERE person IN ({keys}) RETURNING person", persons)
        redirects = self._select(
            "DELETE FROM redirects WHERE person IN ({keys}) OR target IN ({keys}) RETURNING person", persons
        )
        index = self._select("DELETE FROM identity_index WHERE identity IN ({keys}) RETURNING identity", keys)
        index += self._select("DELETE FROM identity_index WHERE person IN ({keys}) RETURNING identity", persons)
        fragments: set[str] = set()
        for key in keys:
            # The keys from "<key>|" up to "<key>}", "}" following "|": a range of the primary key.
            bounds = (f"{key}|", f"{key}}}")
            for table in ("fragments", "fragment_deltas"):
                deleted = self._connection.execute(
                    f"DELETE FROM {table} WHERE key >= ? AND key < ? RETURNING key", bounds
                )
                fragments.update(fragment for (fragment,) in deleted)
        return {"views": len(views), "fragments": len(fragments), "index": len(index), "redirects": len(redirects)}

    def _select(self, query: str, keys: Iterable[str]) -> list[tuple]:
        """The rows of ``query`` (a SELECT, or a DELETE that returns rows, whose every ``{keys}`` is an IN list) for
        these keys."""
        wanted = list(dict.fromkeys(keys))
        found: list[tuple] = []
        # A plain IN list per chunk: filling a temporary table with the keys first cost twice the read itself.
        for start in range(0, len(wanted), KEYS_PER_QUERY):
            chunk = wanted[start : start + KEYS_PER_QUERY]
            marks = ",".join("?" * len(chunk))
            found += self._connection.execute(query.format(keys=marks), chunk * query.count("{keys}"))
        return found


def tune_for_writing(connection: sqlite3.Connection) -> None:
    """Sets what a writing store sets (see the module docstring): commits that do not wait for the disk, a cache of
    :data:`CACHE_KIB` and a checkpoint every :data:`CHECKPOINT_PAGES`."""
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    connection.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")


_ABSENT = StoredFragment(None, {})
# Bases and views are rewritten where they are: INSERT OR REPLACE deleted each row and inserted it again, updating the
# table and its key's index both.
_PUT_BASE = "INSERT INTO fragments VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET doc = excluded.doc"
_PUT_VIEW = "INSERT INTO views VALUES (?, ?) ON CONFLICT (person) DO UPDATE SET doc = excluded.doc"
# A flush indexes every identity of the persons it writes, almost all as they were: an entry that holds its person
# already is left alone rather than deleted and inserted again.
_INDEX = """
INSERT INTO identity_index VALUES (?, ?)
ON CONFLICT (identity) DO UPDATE SET person = excluded.person WHERE person != excluded.person
"""
# Rows of (fragment key, delta name or NULL for the base, document).
_BASES = "SELECT key, NULL, doc FROM fragments WHERE key IN ({keys})"
_FRAGMENT_ROWS = f"{_BASES} UNION ALL SELECT key, delta, doc FROM fragment_deltas WHERE key IN ({{keys}})"
_FRAGMENT_NAMES = (
    "SELECT key, NULL FROM fragments WHERE key IN ({keys}) "
    "UNION ALL SELECT key, delta FROM fragment_deltas WHERE key IN ({keys})"
)


def _stored(rows: Iterable[tuple[str, str | None, bytes]]) -> dict[str, StoredFragment]:
    """Fragments from rows of (key, delta name or ``None`` for the base, document)."""
    bases: dict[str, bytes] = {}
    deltas: dict[str, dict[str, bytes]] = {}
    for key, delta, doc in rows:
        if delta is None:
            bases[key] = doc
        else:
            deltas.setdefault(key, {})[delta] = doc
    return {key: StoredFragment(bases.get(key), deltas.get(key, {})) for key in bases.keys() | deltas.keys()}


def _first(row: tuple[bytes] | None) -> bytes | None:
    return None if row is None else row[0]
