"""``profilestream identity get``: who an identity belongs to, read from the identity store.

Each lookup normalises the identity as ingestion does (``Email:Ann@Example.com`` finds ``ann@example.com``), reads
the facts of its component in one store read, resolves them with the linking rules and returns::

    {"identity": "NS:ID" as asked, "person_id": str | null,
     "identities": [{"namespace", "id"}],           # the person's identities, as stored (normalised)
     "quarantined": ["NS:ID", ...],                  # identities of the component set apart as suspect
     "links": [{"a", "b", "first_seen", "first_message", "last_seen", "last_message", "removed_by"}]}

``links`` are the links touching the person's identities, with when and by which message they were first and last
made; ``removed_by`` names the rule that removed a link from the graph (``null`` for a link in force). An unknown or
rejected identity gives ``person_id: null`` (with the rejection's ``IDENTITY.*`` code in ``rejected``).
"""

from __future__ import annotations

from datetime import timedelta

from core.clock import EPOCH
from identity.graph import resolve
from identity.model import Stamp
from identity.namespaces import extract_identities
from identity.stitching import StitchSettings
from stores.identity import IdentityStore


def lookup_identity(asked: str, store: IdentityStore, settings: StitchSettings) -> dict:
    """The answer for one ``NAMESPACE:ID`` (the caller checks that form)."""
    namespace, _, raw_id = asked.partition(":")
    extraction = extract_identities({"identityMap": {namespace: [{"id": raw_id}]}}, settings.namespaces, settings.rules)
    unknown = {"identity": asked, "person_id": None, "identities": [], "quarantined": [], "links": []}
    if not extraction.identities:
        return {**unknown, "rejected": extraction.rejections[0].code}
    [identity] = extraction.identities
    facts = store.facts_of([identity])
    if identity not in facts.sightings:
        return unknown
    resolution = resolve(facts, settings.graph)
    person = resolution.person_of[identity]
    members = sorted(member for member, owner in resolution.person_of.items() if owner == person)
    member_set = set(members)
    links = [
        {
            "a": str(link.a),
            "b": str(link.b),
            "first_seen": _rfc3339(link.first),
            "first_message": link.first.message_id,
            "last_seen": _rfc3339(link.last),
            "last_message": link.last.message_id,
            "removed_by": resolution.removed.get((link.a, link.b)),
        }
        for _, link in sorted(facts.links.items())
        if link.a in member_set or link.b in member_set
    ]
    return {
        "identity": asked,
        "person_id": person,
        "identities": [{"namespace": member.namespace, "id": member.id} for member in members],
        "quarantined": sorted(map(str, resolution.quarantined)),
        "links": links,
    }


def _rfc3339(stamp: Stamp) -> str:
    return (EPOCH + timedelta(microseconds=stamp.time_us)).isoformat().replace("+00:00", "Z")
