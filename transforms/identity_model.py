"""The identity graph's records: identities, the facts stores keep about them, and the changes stitching reports.

The graph is *event-sourced*: a store keeps only facts that every order of arrival agrees on, and the persons are
derived from them (:mod:`transforms.identity_graph`):

- a **sighting** per identity: when it was first seen (the smallest :class:`Stamp` of the records that carried it);
- a **link** per pair of identities seen together in one record: its first and its latest :class:`Stamp`.

Adding facts is commutative (a union, with min and max of stamps), so several workers adding them concurrently end
with the same facts, and so the same persons, as one worker would. A :class:`Stamp` orders by record time, then
message id, which is how every rule breaks ties.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping


@dataclasses.dataclass(frozen=True, order=True)
class Identity:
    """A normalised identity: a namespace code as configured (``ECID``, ``Email``, ``CRMID``, ...) and its id."""

    namespace: str
    id: str

    def __str__(self) -> str:
        return f"{self.namespace}:{self.id}"


@dataclasses.dataclass(frozen=True, order=True)
class Stamp:
    """When a fact was observed: the record's time (µs since the epoch) and the message that carried it."""

    time_us: int
    message_id: str


@dataclasses.dataclass(frozen=True)
class Observation:
    """What one record says to the graph: these identities were seen together at ``stamp``."""

    identities: tuple[Identity, ...]
    stamp: Stamp


@dataclasses.dataclass(frozen=True)
class LinkFact:
    """Two identities seen together; ``a < b``. ``first`` and ``last`` are the earliest and latest observations."""

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
        for observation in observations:
            identities = sorted(set(observation.identities))
            stamp = observation.stamp
            for identity in identities:
                seen = sightings.get(identity)
                sightings[identity] = stamp if seen is None else min(seen, stamp)
            for position, a in enumerate(identities):
                for b in identities[position + 1 :]:
                    known = links.get((a, b))
                    links[(a, b)] = (
                        LinkFact(a, b, stamp, stamp)
                        if known is None
                        else LinkFact(a, b, min(known.first, stamp), max(known.last, stamp))
                    )
        return GraphFacts(sightings, links)


@dataclasses.dataclass(frozen=True)
class IdentityChange:
    """One row of ``identity_changes``: what happened to the graph, to which identities, and why.

    ``kind`` is ``merge``, ``split``, ``link_removed``, ``quarantined`` or ``rejected``; ``rule`` names the rule or
    the ``IDENTITY.*`` code; ``persons_before`` and ``persons_after`` are the person ids involved before and after.
    """

    kind: str
    identities: tuple[str, ...]
    persons_before: tuple[str, ...]
    persons_after: tuple[str, ...]
    rule: str
    message_id: str
    time_us: int
    detail: str = ""
