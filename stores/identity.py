"""Identity stores: where the identity graph's facts live, behind one small interface.

In: batches of :class:`~identity.model.Observation` (identities seen together in one record, with the
record's :class:`~identity.model.Stamp`). Out: the facts of the *raw components* each batch touched (an identity of
the batch and every identity transitively linked to it by any stored link), as they were before the batch and as
they are after it, which is what the linking rules (:func:`identity.graph.resolve`) need to name the persons and what
changed.

- :meth:`IdentityStore.observe` adds the observations' facts atomically and in one round trip, and returns
  ``(before, after)``, ``after`` being ``before.merged_with(observations)``
  (:meth:`GraphFacts.merged_with <identity.model.GraphFacts.merged_with>`) over the touched components; adding facts
  commutes, so concurrent writers end with the facts a single writer would have.
- :meth:`IdentityStore.facts_of` reads the raw components of some identities, changing nothing.
- :meth:`IdentityStore.observe_and_log` also logs a batch that adds facts, in the same atomic write
  (:class:`~identity.model.LoggedBatch`: its cause, the facts it found and added), found again by
  :meth:`IdentityStore.logged` from the cause's message id; :meth:`~IdentityStore.discard` drops an entry with the next
  write; entries are kept ``CHANGE_LOG_RETENTION_S`` (30 days).
- :meth:`IdentityStore.erase` removes identities for a privacy request: their sightings, their links and the log
  entries that mention them; what remains of their components is split into the raw components it now makes.
- A store object is used by one thread at a time; open one per worker (:mod:`stores.opening`).

A backend subclasses :class:`IdentityStore` with ``_add`` (add a batch's facts atomically in one round trip, log it
when asked, drop the discarded entries, and return the touched components' facts from before and the log entry),
``facts_of``, ``logged``, ``erase`` and ``close``; :class:`FactsBuilder` makes the
:class:`~identity.model.GraphFacts` of what it reads. Why facts and raw components:
docs/decisions/0015-the-identity-store-keeps-facts-and-raw-components.md; why the log:
docs/decisions/0016-identity-changes-are-logged-with-their-batch.md.

    with open_identity_store("sqlite:///data/identity.sqlite") as store:
        before, after = store.observe(observations)
"""

from __future__ import annotations

import abc
from collections.abc import Container, Iterable, Sequence
from types import TracebackType

from identity.model import GraphFacts, Identity, LinkFact, LoggedBatch, Observation, Stamp

CHANGE_LOG_RETENTION_S = 30 * 24 * 3600


class IdentityStore(abc.ABC):
    """The facts of the identity graph, read and added by raw component; one module implements it per backend."""

    def __init__(self) -> None:
        self._discarded: list[str] = []

    def observe(self, observations: Sequence[Observation]) -> tuple[GraphFacts, GraphFacts]:
        """Atomically add the observations' facts; return the facts of the raw components touched, before and after.

        The components touched are those of every identity of the observations. One round trip per call (none for a
        batch without identities).
        """
        before, after, _ = self.observe_and_log(observations, None)
        return before, after

    def observe_and_log(
        self, observations: Sequence[Observation], cause: Stamp | None
    ) -> tuple[GraphFacts, GraphFacts, str | None]:
        """``observe``, and with a ``cause``, log the batch in the same write when it adds facts; returns the log
        entry too (``None``: not logged)."""
        batch = GraphFacts.empty().merged_with(observations)
        if not batch.sightings:
            return GraphFacts.empty(), GraphFacts.empty(), None
        discarded, self._discarded = self._discarded, []
        before, entry = self._add(batch, cause, discarded)
        # The union with the batch's facts: the same facts as merging the observations again, in fewer steps.
        return before, before.union(batch), entry

    def discard(self, entry: str) -> None:
        """Drop a log entry whose batch changed nothing worth telling, with the next write (should the process die
        first, the entry stays, and telling it again tells nothing)."""
        self._discarded.append(entry)

    @abc.abstractmethod
    def _add(self, batch: GraphFacts, cause: Stamp | None, discarded: Sequence[str]) -> tuple[GraphFacts, str | None]:
        """Atomically, in one round trip: add these facts, log the batch under ``cause`` when there is one and the
        batch adds facts, and drop the ``discarded`` entries; return the touched components' facts as they were and
        the new entry."""

    @abc.abstractmethod
    def logged(self, message_ids: Iterable[str]) -> list[LoggedBatch]:
        """The logged batches whose cause is one of these messages, in one round trip."""

    @abc.abstractmethod
    def facts_of(self, identities: Iterable[Identity]) -> GraphFacts:
        """The raw components of these identities (unknown identities have none); read only."""

    @abc.abstractmethod
    def erase(self, identities: Iterable[Identity]) -> dict[str, int]:
        """Remove these identities from the store, atomically (in one write where the backend allows it): their
        sightings, every link touching any of them, and every change-log entry whose facts (found or added) hold any
        of them; the entry only serves telling a batch's changes again after a crash. Returns the counts removed,
        ``{"identities": n, "links": n, "log_entries": n}``, and what a backend adds about the erasure of the bytes.

        Other identities keep their sightings and the links among themselves; a component that the erased identities
        held together comes apart into the raw components that remain, so reads find only what is still linked.
        Erasing again removes nothing and returns zeros."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def is_transient(self, error: BaseException) -> bool:
        """Whether ``error`` says the store cannot be reached for now (calling again later may work)."""
        return False

    def __enter__(self) -> IdentityStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


def logs_any(batch: LoggedBatch, identities: Container[Identity]) -> bool:
    """Whether a logged batch's facts, those it found or those it added, hold any of these identities (a link's
    identities are among its facts' sightings)."""
    return any(identity in identities for facts in (batch.before, batch.batch) for identity in facts.sightings)


class FactsBuilder:
    """Collects the facts a backend reads: the sightings first, then the links among those identities.

    Rows go in many at a time, each as plain columns, and each identity and stamp is made once: an identity recurs in
    every link it has, a stamp in all the facts one record made, and making them (a call per row, even) is much of
    the time a store takes to read.
    """

    def __init__(self) -> None:
        self._sightings: dict[Identity, Stamp] = {}
        self._links: dict[tuple[Identity, Identity], LinkFact] = {}
        # Each identity by itself: found by an equal (namespace, id) tuple, as Identity is one.
        self._identities: dict[tuple[str, str], Identity] = {}
        self._stamps: dict[tuple[int, str], Stamp] = {}

    def add_sightings(self, rows: Iterable[tuple[str, str, int, str]]) -> list[Identity]:
        """Adds ``(namespace, id, time_us, message_id)`` rows; returns their identities, in order."""
        sightings, identities, stamps = self._sightings, self._identities, self._stamps
        added = []
        for namespace, id_, time_us, message_id in rows:
            identity = _new(Identity, (namespace, id_))
            identities[identity] = identity
            key = (time_us, message_id)
            sightings[identity] = stamps.get(key) or stamps.setdefault(key, _new(Stamp, key))
            added.append(identity)
        return added

    def add_links(self, rows: Iterable[tuple[str, str, str, str, int, str, int, str]]) -> None:
        """Adds ``(a_namespace, a_id, b_namespace, b_id, first_us, first_id, last_us, last_id)`` rows, each of two
        identities already added."""
        links, identity, stamps = self._links, self._identities.__getitem__, self._stamps
        for a_namespace, a_id, b_namespace, b_id, first_us, first_id, last_us, last_id in rows:
            a, b = identity((a_namespace, a_id)), identity((b_namespace, b_id))
            first, last = (first_us, first_id), (last_us, last_id)
            first = stamps.get(first) or stamps.setdefault(first, _new(Stamp, first))
            last = stamps.get(last) or stamps.setdefault(last, _new(Stamp, last))
            links[(a, b)] = _new(LinkFact, (a, b, first, last))

    def facts(self) -> GraphFacts:
        return GraphFacts(self._sightings, self._links)


# A NamedTuple from a tuple of its fields, in C: its own constructor is a Python function, a call a row.
_new = tuple.__new__
