"""Whom a privacy request covers: the person(s) behind the identities given, found through the identity graph.

:class:`Subject` is what every store's erase and export works from: every identity of the person (normalised, as
stitching stores them), every person id they have had (the current one and those retired by merges), and the texts to
search for in bytes that never decoded (a failed record's original message).
"""

from __future__ import annotations

import dataclasses

from identity.model import Identity


@dataclasses.dataclass(frozen=True)
class Subject:
    """The person(s) a request covers.

    ``identities``: every identity of the person(s), normalised. ``person_ids``: every person id they have had.
    ``given``: the ids as the request gave them, before normalisation (a failed message may carry them that way).
    """

    identities: frozenset[Identity]
    person_ids: frozenset[str]
    given: frozenset[str] = frozenset()

    @property
    def identity_keys(self) -> frozenset[str]:
        """The identities as stores key them: ``"<NAMESPACE>:<id>"``."""
        return frozenset(str(identity) for identity in self.identities)

    def search_terms(self) -> frozenset[bytes]:
        """What to look for in raw bytes: each identity's id as normalised and each id as given, UTF-8 encoded."""
        return frozenset(text.encode() for text in {identity.id for identity in self.identities} | self.given if text)
