"""What the SQLite-backed stores share: opening a store file and running explicit transactions.

Writers begin ``IMMEDIATE`` transactions, so concurrent processes serialise on the file lock (waiting up to
:data:`BUSY_TIMEOUT_S`, after which :func:`is_busy` says the error is transient), and WAL mode lets readers go on
meanwhile.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from collections.abc import Iterator

from stores.errors import StoreUnavailableError

# Writers hold the lock for milliseconds; a lock held longer is an outage, which the pipeline waits out with
# back-off and says so (stores.outages).
BUSY_TIMEOUT_S = 5.0


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
        connection.execute("PRAGMA journal_mode=WAL")
        connection.executescript(schema)
    except (OSError, sqlite3.Error) as error:
        raise StoreUnavailableError(f"{what} {path} cannot be opened: {error}") from None
    return connection


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


def is_busy(error: BaseException) -> bool:
    """Whether ``error`` is SQLite's answer to a file another connection holds locked past the busy timeout."""
    return isinstance(error, sqlite3.OperationalError) and ("locked" in str(error) or "busy" in str(error))
