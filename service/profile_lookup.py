"""Profile lookups, by identity or by person id: what ``profilestream profile get`` prints and the HTTP API serves.

Each lookup is one read of the profile store (:mod:`stores.profiles`), which keeps every person's merged
view and indexes it by every identity of the person and by the retired person ids a merge redirected to it. The
answer is the view in the shape README's "`profilestream profile get`" states::

    {"lookup": "NS:ID" or person id as asked, "person_id": str | null,
     "identities": [{"namespace", "id"}],            # as stored (normalised)
     "attributes": {...},                             # merged record fields, nested, runtime names
     "events": {"count", "first_seen", "last_seen", "by_type", "recent"}}

With an event TTL (``profiles.event_ttl_days``), ``recent`` leaves out the events whose ``timestamp`` is older than
the TTL by the lookup's clock; the counts, ``first_seen`` and ``last_seen`` still cover every event the view keeps.

An unknown lookup gives ``person_id: null``, no identities or attributes and an event summary of nothing. A person
id asked for after a merge answers with the survivor's ``person_id``.

Malformed lookups raise :class:`MalformedLookupError` (a usage error for the CLI, a 422 for the HTTP API): an
identity not of the form ``NAMESPACE:ID``, or one that ingestion would reject (unknown namespace, blocked value,
invalid e-mail, ...; the message names the ``IDENTITY.*`` code), since the store can never hold it; a person id not
of the form ``p-`` and 24 hex digits.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from core.clock import micros, parse_rfc3339, wall_clock_us
from identity.namespaces import extract_identities
from identity.stitching import StitchSettings
from stores.profiles import ProfileStore

LookupBy = Literal["identity", "person"]

PERSON_ID_PATTERN = r"^p-[0-9a-f]{24}$"
"""How :mod:`identity.graph` names a person: ``p-`` and 24 hex digits of its anchor's SHA-256."""
_PERSON_ID = re.compile(PERSON_ID_PATTERN)


class MalformedLookupError(ValueError):
    """A lookup that can never find anything as written; the message is one line and quotes what was asked,
    ``reason`` says what is wrong without quoting it (for answers that must not echo an identity)."""

    def __init__(self, asked: str, reason: str) -> None:
        super().__init__(f"{asked!r}: {reason}")
        self.reason = reason


def lookup_key(asked: str, settings: StitchSettings, *, by: LookupBy) -> str:
    """The store key a lookup reads: a normalised ``NAMESPACE:ID``, or the person id as asked."""
    if by == "person":
        if not _PERSON_ID.fullmatch(asked):
            raise MalformedLookupError(asked, "expected a person id, p- and 24 hex digits")
        return asked
    namespace, separator, raw_id = asked.partition(":")
    if not separator or not namespace:
        raise MalformedLookupError(asked, "expected NAMESPACE:ID")
    # Normalised exactly as ingestion normalised what it stored, so that Email:Ann@Example.com finds ann@example.com.
    extraction = extract_identities({"identityMap": {namespace: [{"id": raw_id}]}}, settings.namespaces, settings.rules)
    if not extraction.identities:
        raise MalformedLookupError(asked, f"{extraction.rejections[0].code}, an identity ingestion never keeps")
    [identity] = extraction.identities
    return str(identity)


def lookup_profile(
    asked: str,
    store: ProfileStore,
    settings: StitchSettings,
    *,
    by: LookupBy,
    event_ttl_us: int | None = None,
    clock: Callable[[], int] = wall_clock_us,
) -> dict[str, Any]:
    """The contract line for one lookup, read from ``store`` in one read; see the module docstring.

    ``event_ttl_us`` (None: none) hides recent events older than that many microseconds before ``clock()``.
    """
    key = lookup_key(asked, settings, by=by)
    view = store.view_by_person(key) if by == "person" else store.view_by_identity(key)
    if view is None:
        no_events = {"count": 0, "first_seen": None, "last_seen": None, "by_type": {}, "recent": []}
        return {"lookup": asked, "person_id": None, "identities": [], "attributes": {}, "events": no_events}
    profile = json.loads(view)
    events = profile["events"]
    if event_ttl_us is not None:
        # Applied here rather than when the view is written: a view is rewritten only when its person changes, so
        # events would otherwise outlive the TTL in a quiet profile.
        recent = events["recent"]
        events = {**events, "recent": events_between(recent, limit=len(recent), start_us=clock() - event_ttl_us)}
    # Only the contract's keys: anything else a view may carry for the merge is not part of what users are shown.
    return {
        "lookup": asked,
        "person_id": profile["person_id"],
        "identities": profile["identities"],
        "attributes": profile["attributes"],
        "events": events,
    }


def events_between(
    recent: Sequence[Mapping[str, Any]], *, limit: int, start_us: int | None = None, end_us: int | None = None
) -> list[Mapping[str, Any]]:
    """The first ``limit`` of a view's recent events (newest first) whose ``timestamp`` is in ``[start, end)``.

    Either bound may be left out. With a bound, an event whose timestamp is not RFC 3339 is left out too: it cannot
    be said to lie inside.
    """
    inside = (event for event in recent if _inside(event.get("timestamp"), start_us, end_us))
    return list(itertools.islice(inside, limit))


def _inside(timestamp: Any, start_us: int | None, end_us: int | None) -> bool:
    if start_us is None and end_us is None:
        return True
    moment = parse_rfc3339(timestamp) if isinstance(timestamp, str) else None
    if moment is None:
        return False
    time_us = micros(moment)
    return (start_us is None or time_us >= start_us) and (end_us is None or time_us < end_us)
