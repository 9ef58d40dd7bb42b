"""The identity graph's records: identities, the facts stores keep about them, and the changes stitching reports.

The graph is *event-sourced*: a store keeps only facts that every order of arrival agrees on, and the persons are
derived from them (:mod:`identity.graph`):

- a **sighting** per identity: when it was first seen (the smallest :class:`Stamp` of the records that carried it);
- a **link** per pair of identities seen together in one record: its first and its latest :class:`Stamp`.

Adding facts is commutative (a union, with min and max of stamps), so several workers adding them concurrently end
with the same facts, and so the same persons, as one worker would. A :class:`Stamp` orders by record time, then
message id, which is how every rule breaks ties.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
from collections.abc import Iterable, Mapping
from typing import NamedTuple

import orjson


class Identity(NamedTuple):
    """A normalised identity: a namespace code as configured (``ECID``, ``Email``, ``CRMID``, ...) and its id.

    A NamedTuple rather than a dataclass: identities are hashed and compared tens of thousands of times a batch
    (dictionary keys of every fact, the linking rules' sorts), and a tuple does that in C. It orders by namespace,
    then id."""

    namespace: str
    id: str

    def __str__(self) -> str:
        return f"{self.namespace}:{self.id}"


class Stamp(NamedTuple):
    """When a fact was observed: the record's time (µs since the epoch) and the message that carried it; ordered by
    time, then message id (a NamedTuple for the reason :class:`Identity` is one)."""

    time_us: int
    message_id: str


class Observation(NamedTuple):
    """What one record says to the graph: these identities were seen together at ``stamp`` (a NamedTuple: one is made
    for every record)."""

    identities: tuple[Identity, ...]
    stamp: Stamp


class LinkFact(NamedTuple):
    """Two identities seen together; ``a < b``. ``first`` and ``last`` are the earliest and latest observations (a
    NamedTuple for the reason :class:`Identity` is one: stores read and merge thousands of them a batch)."""

    a: Identity
    b: Identity
    first: Stamp
    last: Stamp


@dataclasses.dataclass(frozen=True)
class GraphFacts:
    """Facts about a set of identities: when each was first seen, and the links among them."""

    sightings: Mapping[Identity, Stamp]
    links: Mapping[tuple[Identity, Identity], LinkFact]

    @classmethod
    def empty(cls) -> GraphFacts:
        return cls({}, {})

    def merged_with(self, observations: Iterable[Observation]) -> GraphFacts:
        """These facts with the observations added: the in-memory reference every store must agree with."""
        sightings = dict(self.sightings)
        links = dict(self.links)
        for observed, stamp in observations:
            identities = sorted(set(observed))
            for identity in identities:
                seen = sightings.get(identity)
                if seen is None or stamp < seen:
                    sightings[identity] = stamp
            for pair in itertools.combinations(identities, 2):
                known = links.get(pair)
                if known is None:
                    links[pair] = LinkFact(*pair, stamp, stamp)
                elif stamp < known.first or stamp > known.last:
                    links[pair] = LinkFact(*pair, min(known.first, stamp), max(known.last, stamp))
        return GraphFacts(sightings, links)

    def union(self, other: GraphFacts) -> GraphFacts:
        """Both sets of facts: each identity's earliest sighting, each link's earliest first and latest last stamp."""
        sightings = dict(self.sightings)
        for identity, stamp in other.sightings.items():
            seen = sightings.get(identity)
            if seen is None or stamp < seen:
                sightings[identity] = stamp
        links = dict(self.links)
        # Most links of a batch are known and most of those not widened: those are kept, not made again.
        for pair, link in other.links.items():
            known = links.get(pair)
            if known is None:
                links[pair] = link
            elif link.first < known.first or link.last > known.last:
                links[pair] = LinkFact(link.a, link.b, min(known.first, link.first), max(known.last, link.last))
        return GraphFacts(sightings, links)

    def adds_to(self, other: GraphFacts) -> bool:
        """Whether these facts hold anything ``other`` lacks: an identity, an earlier sighting, a link, or a link's
        earlier first or later last stamp. Looks at these facts only, not at all of ``other``."""
        additions = self.additions_to(other)
        return bool(additions.sightings or additions.links)

    def additions_to(self, other: GraphFacts) -> GraphFacts:
        """Those of these facts that add to ``other`` (see :meth:`adds_to`): ``other.union`` of them is
        ``other.union`` of all of these."""
        sightings = {
            identity: stamp
            for identity, stamp in self.sightings.items()
            if (seen := other.sightings.get(identity)) is None or stamp < seen
        }
        links = {
            pair: link
            for pair, link in self.links.items()
            if (known := other.links.get(pair)) is None or link.first < known.first or link.last > known.last
        }
        return GraphFacts(sightings, links)

    def to_bytes(self) -> bytes:
        """Compact JSON: ``{"s": [[namespace, id, time_us, message_id], ...], "l": [[a, b, first, last], ...]}``
        with each identity of a link as its position in ``s`` and each stamp as ``[time_us, message_id]``."""
        sightings = self.sightings
        position = dict(zip(sightings, range(len(sightings)), strict=True))
        # Identities, stamps and links are tuples of these fields in this order: a sighting's row is its identity plus
        # its stamp, a plain tuple made in C, which orjson writes as an array.
        return orjson.dumps(
            {
                "s": list(map(operator.add, sightings.keys(), sightings.values())),
                "l": [(position[a], position[b], *first, *last) for a, b, first, last in self.links.values()],
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> GraphFacts:
        document = orjson.loads(data)
        identities = [Identity(namespace, id_) for namespace, id_, _, _ in document["s"]]
        sightings = {
            identity: Stamp(time_us, message_id)
            for identity, (_, _, time_us, message_id) in zip(identities, document["s"], strict=True)
        }
        links = {}
        for a, b, first_us, first_id, last_us, last_id in document["l"]:
            link = LinkFact(identities[a], identities[b], Stamp(first_us, first_id), Stamp(last_us, last_id))
            links[(link.a, link.b)] = link
        return cls(sightings, links)


@dataclasses.dataclass(frozen=True)
class LoggedBatch:
    """A batch of observations a store logged with its facts: the facts it found (``before``), the facts it added
    (``batch``) and its cause, the latest of its records. ``entry`` is the store's name for the log entry.

    The changes the batch made to the graph follow from these alone, so they can be told again after a crash lost
    them between the store and the lake."""

    entry: str
    cause: Stamp
    before: GraphFacts
    batch: GraphFacts


@dataclasses.dataclass(frozen=True)
class IdentityChange:
    """One row of ``identity_changes``: what happened to the graph, to which identities, and why.

    ``kind`` is ``merge``, ``split``, ``rename``, ``link_removed``, ``quarantined`` or ``rejected``; ``rule`` names
    the rule or the ``IDENTITY.*`` code; ``persons_before`` and ``persons_after`` are the person ids involved before
    and after.
    """

    kind: str
    identities: tuple[str, ...]
    persons_before: tuple[str, ...]
    persons_after: tuple[str, ...]
    rule: str
    message_id: str
    time_us: int
    detail: str = ""
