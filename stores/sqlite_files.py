"""What the SQLite-backed stores share: opening a store file, running explicit transactions, inserting many rows.

Writers begin ``IMMEDIATE`` transactions, so concurrent processes serialise on the file lock (waiting up to
:data:`BUSY_TIMEOUT_S`, after which :func:`is_busy` says the error is transient), and WAL mode lets readers go on
meanwhile.

A writing connection sets ``secure_delete``: SQLite then overwrites what it deletes with zeros, in the page and in
the pages it frees, where it would otherwise leave the bytes until the space is used again. Always, not only for an
erase: bytes left by an earlier delete or update (an older view, a compacted delta) would outlive the erase. It costs
nothing measured: the SQLite the stores run on here (Debian's 3.40) is built with it on by default, so every benchmark
of the stores (README, ``make bench``) ran with it; upstream's default is off, which this setting overrides. A file
written by a SQLite with it off may keep bytes of deletes made then in its free space until ``VACUUM``.
:func:`erase_rows` runs a privacy erase and then truncates the write-ahead log, which holds earlier versions of the
pages it changed.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import random
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from stores.errors import StoreUnavailableError

# Writers hold the lock for milliseconds; a lock held longer is an outage, which the pipeline waits out with
# back-off and says so (stores.outages).
BUSY_TIMEOUT_S = 5.0
# Truncating the write-ahead log waits for readers (each attempt up to BUSY_TIMEOUT_S); readers hold the log only for
# one query or transaction, so a few attempts find a moment with none.
TRUNCATE_ATTEMPTS = 3
# The most rows one statement of insert_rows takes: 9 columns of each stay far below SQLite's 32,766 parameters.
ROWS_PER_INSERT = 256


def open_store_file(
    path: str, schema: str, what: str, *, read_only: bool = False, tables: tuple[str, ...] = ()
) -> sqlite3.Connection:
    """A connection to the store file at ``path`` (or ``:memory:``) with ``schema`` applied; ``what`` names the store
    in the one-line :class:`StoreUnavailableError` raised when it cannot be opened.

    ``read_only`` opens an existing file without changing it (the lookups: a missing file is an error, not an empty
    store made on the spot), and checks that it holds ``tables``, so that a store of another kind is refused.
    """
    if read_only and path != ":memory:" and not os.path.isfile(path):
        raise StoreUnavailableError(f"{what} {path} does not exist")
    try:
        if read_only:
            uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
            connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            found = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            missing = [table for table in tables if table not in found]
            if missing:
                connection.close()
                raise StoreUnavailableError(f"{what} {path} is of another kind: it has no {missing[0]} table")
            return connection
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # Transactions are begun explicitly (IMMEDIATE for writes). Beam may run a DoFn's setup and its bundles on
        # different threads, so the connection may move between threads; only one uses it at a time.
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA secure_delete=ON")
        _apply_schema(connection, schema)
    except (OSError, sqlite3.Error) as error:
        raise StoreUnavailableError(f"{what} {path} cannot be opened: {error}") from None
    return connection


def _apply_schema(connection: sqlite3.Connection, schema: str) -> None:
    """WAL mode and ``schema`` (statements that may run again) on ``connection``. Where another connection opens the
    same new file at the same moment, SQLite can refuse these at once, without its busy handler waiting (it does
    where waiting could deadlock): so they are tried again, for as long as a writer would wait for the lock."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(schema)
            return
        except sqlite3.OperationalError as error:
            if not is_busy(error) or time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0.005, 0.02))


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """Runs the block in one transaction begun with ``begin``; rolls it back when the block raises."""
    connection.execute(begin)
    try:
        yield
    except BaseException:
        # Some errors (a full disk, for one) have already rolled the transaction back.
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def erase_rows(connection: sqlite3.Connection, erase: Callable[[], dict[str, int]]) -> dict[str, int]:
    """Runs ``erase`` (which deletes rows and returns counts of what it deleted) in one ``BEGIN IMMEDIATE``
    transaction, on a writing connection (so with ``secure_delete`` on), then checkpoints the write-ahead log into the
    file and truncates it: the log holds every version of a page written since it last began again, the erased rows
    as they were included. Returns the counts and ``"wal_truncated"``: 1 when the log was truncated to nothing, 0 when
    readers held it through every attempt (the rows are gone from the file, but earlier versions of their pages may
    still be in the log; erasing again deletes nothing and tries the truncation again).
    """
    with transaction(connection):
        counts = erase()
    for attempt in range(TRUNCATE_ATTEMPTS):
        busy, _, _ = connection.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        if not busy:
            return {**counts, "wal_truncated": 1}
        time.sleep(0.1 * (attempt + 1))
    return {**counts, "wal_truncated": 0}


def is_busy(error: BaseException) -> bool:
    """Whether ``error`` is SQLite's answer to a file another connection holds locked past the busy timeout."""
    return isinstance(error, sqlite3.OperationalError) and ("locked" in str(error) or "busy" in str(error))


def insert_rows(connection: sqlite3.Connection, statement: str, rows: Sequence[Sequence[Any]]) -> None:
    """Runs ``statement``, an ``INSERT`` whose ``VALUES`` are written ``{rows}``, over ``rows``, many a statement.

    The same as ``executemany`` of one row a statement, row after row, at a third of the cost for a few hundred rows.
    A statement takes a power of two rows up to :data:`ROWS_PER_INSERT`, so a connection's statement cache (128
    statements) keeps the few texts made.
    """
    start = 0
    while start < len(rows):
        size = min(ROWS_PER_INSERT, 1 << ((len(rows) - start).bit_length() - 1))
        chunk = rows[start : start + size]
        connection.execute(
            statement.replace("{rows}", _row_marks(size, len(chunk[0]))), list(itertools.chain.from_iterable(chunk))
        )
        start += size


@functools.cache
def _row_marks(rows: int, columns: int) -> str:
    return ", ".join(["(" + ", ".join("?" * columns) + ")"] * rows)
