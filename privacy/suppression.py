"""The suppression list: the keyed hashes of identities a delete job erased with ``suppress``, whose later messages the
pipeline drops.

A delete job run with ``--suppress`` puts the erased identities' hashes (:func:`privacy.keys.identity_hash`) on the
list with its job id; stitching (:mod:`transforms.stitch`) then drops a record that carries any of them before it
reaches a store or the lake, and counts it under ``suppressed``. The list lives in the privacy store's SQLite file
(``data/privacy.sqlite`` by default) beside the job receipts of :class:`privacy.jobs.JobStore`, in the table
``suppressed (hash, job_id, added)``.

- :class:`SuppressionList` adds to the file and reads it; a file that does not exist is an empty list, which reading
  does not create. :meth:`~SuppressionList.changed` says cheaply whether the list changed since it was last read.
- :class:`Suppression` is what a run hands its stitching stage: the file and the key, picklable.
- :class:`SuppressionCheck`, opened from it on the worker, answers whether identities are suppressed, reading the
  list again when it changed, at most once every :data:`REFRESH_S` seconds, and hashing each identity once.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Iterable

from identity.model import Identity
from privacy.keys import identity_hash
from stores.sqlite_files import open_store_file, transaction

# How stale a running pipeline's copy of the list may be: a suppression reaches it within this many seconds.
REFRESH_S = 1.0
# Identities whose hash a check keeps: a person's messages come in runs, and the cache stays a few MiB.
HASHES_CACHED = 1 << 16

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS suppressed (hash TEXT PRIMARY KEY, job_id TEXT NOT NULL, added TEXT NOT NULL);
COMMIT;
"""
# The version of a list whose file does not exist.
_NO_FILE = (-1, 0)


class SuppressionList:
    """The suppression list in the SQLite file at ``path`` (``:memory:`` for tests): for one thread at a time per
    object, and for several processes on one file."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._connection: sqlite3.Connection | None = None
        # SQLite's data_version counts the commits of other connections only; this counts this one's.
        self._own_commits = 0
        self._version_read: tuple[int, int] | None = None

    def add(self, hashes: Iterable[str], job_id: str) -> int:
        """Puts ``hashes`` on the list for the job ``job_id`` (creating the file if need be); how many were not on it
        already."""
        connection = self._opened(create=True)
        added = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
        before = connection.total_changes
        with transaction(connection):
            connection.executemany(
                "INSERT OR IGNORE INTO suppressed (hash, job_id, added) VALUES (?, ?, ?)",
                [(hash_, job_id, added) for hash_ in hashes],
            )
        count = connection.total_changes - before
        self._own_commits += count > 0
        return count

    def hashes(self) -> frozenset[str]:
        """Every hash on the list (none when the file does not exist)."""
        connection = self._opened()
        # Read before the hashes: a commit in between makes the next changed() true, and the list is read again.
        self._version_read = self._version(connection)
        if connection is None:
            return frozenset()
        return frozenset(hash_ for (hash_,) in connection.execute("SELECT hash FROM suppressed"))

    def changed(self) -> bool:
        """Whether the list may differ from what :meth:`hashes` last returned (true before it is first read); one
        pragma, no read of the table."""
        return self._version(self._opened()) != self._version_read

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _opened(self, *, create: bool = False) -> sqlite3.Connection | None:
        """The connection to the file, opened now if it exists (or ``create``); None while it does not exist."""
        if self._connection is None and (create or self._path == ":memory:" or os.path.isfile(self._path)):
            self._connection = open_store_file(self._path, _SCHEMA, "privacy store")
        return self._connection

    def _version(self, connection: sqlite3.Connection | None) -> tuple[int, int]:
        if connection is None:
            return _NO_FILE
        return connection.execute("PRAGMA data_version").fetchone()[0], self._own_commits


@dataclasses.dataclass(frozen=True)
class Suppression:
    """What a run checks records against: the privacy store's file and the privacy key the hashes were made with;
    picklable, so that the stitching stage takes it to the workers, where :meth:`open` opens the check."""

    path: str
    key: bytes = dataclasses.field(repr=False)
    refresh_s: float = REFRESH_S

    def open(self, clock: Callable[[], float] = time.monotonic) -> SuppressionCheck:
        return SuppressionCheck(SuppressionList(self.path), self.key, refresh_s=self.refresh_s, clock=clock)


class SuppressionCheck:
    """Whether identities are on ``suppression_list``, as it was at most ``refresh_s`` seconds ago by ``clock``.

    The list is read when the check opens, then again when it changed, looked at no more than once every
    ``refresh_s``; each identity's hash is computed once while it stays among the :data:`HASHES_CACHED` last used.
    """

    def __init__(
        self,
        suppression_list: SuppressionList,
        key: bytes,
        *,
        refresh_s: float = REFRESH_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._list = suppression_list
        self._refresh_s = refresh_s
        self._clock = clock
        self._hashes = suppression_list.hashes()
        self._next_look = clock() + refresh_s
        self._hash_of = functools.lru_cache(maxsize=HASHES_CACHED)(functools.partial(identity_hash, key))

    def suppressed(self, identities: Iterable[Identity]) -> bool:
        """Whether any of ``identities`` (normalised) is on the list."""
        now = self._clock()
        if now >= self._next_look:
            self._next_look = now + self._refresh_s
            if self._list.changed():
                self._hashes = self._list.hashes()
        return bool(self._hashes) and not self._hashes.isdisjoint(map(self._hash_of, identities))

    def close(self) -> None:
        self._list.close()
