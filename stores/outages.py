"""Riding out store outages: a store whose calls wait, with back-off, while its server cannot be reached.

In: a store (identity or profile, any backend) and a name for it. Out: an object with the store's methods, each of
which calls the store again, after a growing pause, for as long as the store says the error it raised is transient
(:meth:`~stores.identity.IdentityStore.is_transient`: a Redis server stopped, restarting or refusing
connections, a SQLite file locked by another process past its busy timeout, Bigtable unavailable), up to
``patience_s`` (15 minutes) of outage; then the error goes up, and the runner retries the bundle. Any other error
goes up at once.

An outage is logged twice, whatever the number of calls it held up: a warning when it starts, and one when the store
answers again, with how long it was away (an answer that is an error other than an outage counts: a write that reached
a stopped Redis server runs when the server continues, and the retry's check then fails). The pipeline's stages open
their stores through :func:`patient`, so a short outage delays the run instead of failing its bundles (a bundle that
fails four times fails a Beam run); the lookup commands do not, since a person waiting at a terminal is better served
by an error.

Retrying a call that failed is safe, because every store call is idempotent or checked: adding identity facts is a
union (a batch logged twice is told twice, and the lake keeps each change once), and a profile write that reached
the store before its answer was lost fails its check of the fragments it expected the second time, and is computed
again from what the store holds.
"""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import Any

from stores.errors import StoreUnavailableError

PATIENCE_S = 15 * 60.0
FIRST_PAUSE_S = 0.1
LONGEST_PAUSE_S = 5.0

_LOGGER = logging.getLogger(__name__)


class Patient:
    """Wraps ``store``: its methods retry transient errors (see the module docstring); ``close`` is the store's."""

    def __init__(
        self,
        store: Any,
        name: str,
        *,
        patience_s: float = PATIENCE_S,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._name = name
        self._patience_s = patience_s
        self._sleep = sleep
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._store, name)
        if name == "close" or not callable(found):
            return found
        return functools.partial(self._call, found)

    def __enter__(self) -> Patient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._store.close()

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        outage_started = None
        pause = FIRST_PAUSE_S
        while True:
            try:
                answer = method(*args, **kwargs)
            except Exception as error:
                if not self._store.is_transient(error):
                    # An error that is no outage is an answer: the store is back, whatever it said.
                    self._tell_back(outage_started)
                    raise
                now = self._clock()
                if outage_started is None:
                    outage_started = now
                    # An error from opening the store names it already.
                    detail = " ".join(str(error).split()).removeprefix(f"{self._name} cannot be reached: ")
                    _LOGGER.warning(
                        "%s cannot be reached (%s): waiting for it, with back-off, for up to %.0f s",
                        self._name,
                        detail or type(error).__name__,
                        self._patience_s,
                    )
                if now - outage_started >= self._patience_s:
                    raise
                # Jitter, so that the workers of a cluster do not come back all at once.
                self._sleep(pause * random.uniform(0.5, 1.0))
                pause = min(2 * pause, LONGEST_PAUSE_S)
                continue
            self._tell_back(outage_started)
            return answer

    def _tell_back(self, outage_started: float | None) -> None:
        if outage_started is not None:
            _LOGGER.warning("%s answers again, after %.1f s", self._name, self._clock() - outage_started)


def patient(open_store: Callable[[str], Any], url: str, what: str, **options: Any) -> Patient:
    """Opens the store ``url`` names with ``open_store``, waiting out an outage at the start too."""
    name = f"{what} {url}"
    opened = Patient(_Opening(open_store, url), name, **options).open()
    return Patient(opened, name, **options)


class _Opening:
    """Opening a store as a call to retry: the store is unavailable as long as opening it says so."""

    def __init__(self, open_store: Callable[[str], Any], url: str) -> None:
        self._open_store = open_store
        self._url = url

    def open(self) -> Any:
        return self._open_store(self._url)

    @staticmethod
    def is_transient(error: BaseException) -> bool:
        # Opening a store checks that its server answers, and says so with this error.
        return isinstance(error, StoreUnavailableError)

    def close(self) -> None:
        pass
