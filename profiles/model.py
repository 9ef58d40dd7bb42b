"""Profiles as pure logic: fragments built from records, merge policies, the merged view, and regrouping.

In: valid records of profile-enabled datasets (an entity in runtime names, its record time, ingestion time and message
id), applied one at a time to a :class:`Fragment` (:func:`apply`), each made a fragment of its own
(:func:`record_fragment`), or folded in bulk (:func:`merge_fragments`); a person's identities and fragments with a
:class:`MergePolicy` (:func:`build_view`); a new grouping of identities into persons (:func:`regroup`). Out:
fragments and views, and their JSON bytes for the profile store (:mod:`stores.profiles`). Nothing here reads a clock
or a store.

Guarantees: a fragment is what one dataset's records said about one identity, the record's highest-priority identity
(:func:`fragment_identity`, the identity :func:`identity.graph.record_person` takes the person from), keyed
``"<NAMESPACE>:<id>|<dataset>"``; merging is commutative, associative and idempotent, so any order, any batching and
any repetition give the same fragment and the same bytes. Attributes come from profile records: every leaf as a dot
path of runtime names (arrays are leaves; ``.`` and ``~`` inside a name are written ``~1`` and ``~0``), each keeping
the value of the greatest :class:`RecordStamp`; not attributes: ``identityMap``, ``_id``, ``repositoryCreatedBy``,
``repositoryLastModifiedBy``, ``createdByBatchID``, ``modifiedByBatchID`` and every top-level ``repo:*`` field
(``extSourceSystemAudit`` stays). Events come from ExperienceEvents, deduplicated on ``_id``. The guardrails
(:class:`ProfileLimits`) count what they cut instead of failing. :class:`TimestampOrdered` (the default) picks each
path's value by stamp, :class:`DatasetPrecedence` from the first dataset of its order that has it (unlisted datasets
after, by stamp); paths nest back into objects, and where one fragment holds a value and another an object, the
preferred one wins.

Fragment JSON (:func:`fragment_to_bytes`: sorted keys, compact, UTF-8)::

    {"identity": {"namespace": "Email", "id": "ann@example.com"}, "dataset": "profile_records",
     "attributes": {"person.name.firstName": ["Ann", record_time_us, ingest_time_us, "message id"], ...},
     "events": {"<_id>": ["<eventType or empty>", timestamp_us], ...},
     "recent": {"<_id>": {event body or stub}, ...},
     "first_seen_us": int | null,
     "events_dropped": [hash, ...], "oversize_events": [hash, ...], "oversize_records": [hash, ...]}

:func:`build_view` gives the ``profile get`` document minus ``lookup`` (README, "`profilestream profile get`")::

    {"person_id": "p-...", "identities": [{"namespace": "Email", "id": "ann@example.com"}, ...],
     "attributes": {nested runtime names},
     "events": {"count": int, "first_seen": "RFC 3339 Z" | null, "last_seen": "..." | null,
                "by_type": {"<eventType>": int, ...}, "recent": [event bodies, newest first]}}

``count`` is the distinct events kept plus ``events_dropped``; ``by_type`` counts the kept ones (an event without
``eventType`` under ``""``), so beyond the guardrail ``count`` exceeds their sum; given ``now_us`` and
``event_ttl_us``, ``recent`` leaves out events older than the TTL.

Why fragments per identity: docs/decisions/0012-profile-fragments-belong-to-identities.md; the merge rules and
guardrails: docs/decisions/0013-profile-fragments-merge-order-free.md; ordering by record time:
docs/decisions/0014-profile-attributes-ordered-by-record-time.md.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import hashlib
import heapq
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, NamedTuple

import orjson

from core.clock import EPOCH
from identity.graph import GraphRules
from identity.model import Identity

_NOT_ATTRIBUTES = frozenset(
    {"_id", "identityMap", "repositoryCreatedBy", "repositoryLastModifiedBy", "createdByBatchID", "modifiedByBatchID"}
)
_LINEAGE_PREFIX = "repo:"
_EXACT_UP_TO = 256


@dataclasses.dataclass(frozen=True)
class ProfileLimits:
    """The guardrails (README, "Configuration"): events kept per fragment, recent bodies kept, event and record sizes
    in bytes."""

    max_events: int = 5000
    recent_events: int = 50
    max_event_bytes: int = 10 * 1024
    max_record_bytes: int = 100 * 1024

    def __post_init__(self) -> None:
        # Recent bodies must be among the kept events, or a cut could strand a body without its summary.
        if not 0 <= self.recent_events <= self.max_events or self.max_events < 1:
            raise ValueError(f"need 0 <= recent_events <= max_events and max_events >= 1: {self}")


DEFAULT_LIMITS = ProfileLimits()


# Stamps, attributes and entries are NamedTuples rather than dataclasses because tuples compare in C, and merging a
# full fragment compares thousands of them.
class RecordStamp(NamedTuple):
    """How attribute values are ordered: the record's own time, then its ingestion time, then its message id."""

    record_time_us: int
    ingest_time_us: int
    message_id: str


class Attribute(NamedTuple):
    """One leaf value and the stamp of the record that set it."""

    value: Any
    stamp: RecordStamp


class EventEntry(NamedTuple):
    """What the summary keeps of an event: its timestamp and ``eventType`` (``""`` when it has none)."""

    timestamp_us: int
    event_type: str


@dataclasses.dataclass(frozen=True)
class DistinctCount:
    """How many distinct keys were added, as a set that merges by union (K minimum values).

    It holds the 256 smallest 64-bit hashes of the keys: exact while fewer than 256 keys were added (barring a hash
    collision), beyond that an estimate with a standard error of about 6%, in a bounded size.
    """

    hashes: tuple[int, ...] = ()

    @classmethod
    def of(cls, keys: Iterable[str]) -> DistinctCount:
        return cls(_smallest({_hash64(key) for key in keys}))

    def union(self, other: DistinctCount) -> DistinctCount:
        if not other.hashes or other.hashes == self.hashes:
            return self
        if not self.hashes:
            return other
        return DistinctCount(_smallest({*self.hashes, *other.hashes}))

    def estimate(self) -> int:
        if len(self.hashes) < _EXACT_UP_TO:
            return len(self.hashes)
        return round((_EXACT_UP_TO - 1) * 2**64 / (self.hashes[-1] + 1))


# Empty, and immutable: shared by every fragment that has no keys to count.
_NO_KEYS = DistinctCount()


@dataclasses.dataclass(frozen=True)
class Fragment:
    """What one dataset's records said about one identity; see the module docstring.

    ``recent`` maps event ids to bodies and is always a subset of ``events``. The last event seen is always among
    the kept ones, so only the first needs keeping apart (``first_seen_us``). ``recent_json`` holds the canonical JSON
    (:func:`_canonical`) of bodies in ``recent``, by event id, where it is known (it is for all but oversize stubs):
    every view and compacted fragment embeds up to ``recent_events`` bodies, and encoding them again each time was
    most of the cost of encoding a view.
    """

    identity: Identity
    dataset: str
    attributes: Mapping[str, Attribute] = dataclasses.field(default_factory=dict)
    events: Mapping[str, EventEntry] = dataclasses.field(default_factory=dict)
    recent: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    first_seen_us: int | None = None
    events_dropped: DistinctCount = _NO_KEYS
    oversize_events: DistinctCount = _NO_KEYS
    oversize_records: DistinctCount = _NO_KEYS
    recent_json: dict[str, bytes] = dataclasses.field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> str:
        """The profile store's fragment key, ``"<NAMESPACE>:<id>|<dataset>"``."""
        return f"{self.identity}|{self.dataset}"


def fragment_identity(identities: Iterable[Identity], rules: GraphRules) -> Identity | None:
    """The identity a record's fragment belongs to: its highest-priority identity (then namespace and id)."""
    return min(identities, key=lambda identity: (-rules.priority.get(identity.namespace, 0), identity), default=None)


def apply(
    fragment: Fragment,
    record_entity: Mapping[str, Any],
    *,
    is_event: bool,
    record_time_us: int,
    ingest_time_us: int,
    message_id: str,
    policy_limits: ProfileLimits = DEFAULT_LIMITS,
) -> Fragment:
    """``fragment`` with one valid record applied; for an event, ``record_time_us`` is its ``timestamp``."""
    single = record_fragment(
        fragment.identity,
        fragment.dataset,
        record_entity,
        is_event=is_event,
        record_time_us=record_time_us,
        ingest_time_us=ingest_time_us,
        message_id=message_id,
        policy_limits=policy_limits,
    )
    return merge_fragments(fragment, single, policy_limits=policy_limits)


def record_fragment(
    identity: Identity,
    dataset: str,
    record_entity: Mapping[str, Any],
    *,
    is_event: bool,
    record_time_us: int,
    ingest_time_us: int,
    message_id: str,
    policy_limits: ProfileLimits = DEFAULT_LIMITS,
) -> Fragment:
    """The fragment of one valid record alone: what :func:`apply` merges in, and what applying the record to an empty
    fragment gives."""
    stamp = RecordStamp(record_time_us, ingest_time_us, message_id)
    if is_event:
        return _event_fragment(identity, dataset, record_entity, stamp, policy_limits)
    return _record_fragment(identity, dataset, record_entity, stamp, policy_limits)


def merge_fragments(a: Fragment, b: Fragment, *, policy_limits: ProfileLimits = DEFAULT_LIMITS) -> Fragment:
    """The fragment holding what ``a`` and ``b`` (of the same key) hold; commutative, associative, idempotent."""
    # Comparing the fields first spares formatting both keys at every merge; distinct fields can still make one key.
    if (a.identity != b.identity or a.dataset != b.dataset) and a.key != b.key:
        raise ValueError(f"fragments of different keys: {a.key!r} and {b.key!r}")
    attributes = dict(a.attributes)
    for path, attribute in b.attributes.items():
        held = attributes.get(path)
        if held is None or _outranks((attribute.stamp,), attribute.value, (held.stamp,), held.value):
            attributes[path] = attribute
    entries, bodies, known_json = _union_events((a, b))
    dropped = a.events_dropped.union(b.events_dropped)
    # A batch adds a few events to many: removing the few oldest is cheaper than ranking all that stay.
    if len(entries) > policy_limits.max_events:
        cut = heapq.nsmallest(len(entries) - policy_limits.max_events, entries, key=_recency(entries))
        dropped = dropped.union(DistinctCount.of(cut))
        for event_id in cut:
            del entries[event_id]
            bodies.discard(event_id)
            known_json.pop(event_id, None)
    if len(bodies) > policy_limits.recent_events:
        for event_id in heapq.nsmallest(len(bodies) - policy_limits.recent_events, bodies, key=_recency(entries)):
            bodies.discard(event_id)
            known_json.pop(event_id, None)
    first_seen = [seen for seen in (a.first_seen_us, b.first_seen_us) if seen is not None]
    return Fragment(
        identity=a.identity,
        dataset=a.dataset,
        attributes=attributes,
        events=entries,
        recent=bodies,
        first_seen_us=min(first_seen, default=None),
        events_dropped=dropped,
        oversize_events=a.oversize_events.union(b.oversize_events),
        oversize_records=a.oversize_records.union(b.oversize_records),
        recent_json=known_json,
    )


class MergePolicy(abc.ABC):
    """Picks each attribute path's value among a person's fragments: the candidate of the highest rank wins."""

    def merge(self, fragments: Iterable[Fragment]) -> dict[str, Any]:
        """The merged attributes, nested back from dot paths."""
        best: dict[str, tuple[tuple, Attribute]] = {}
        for fragment in fragments:
            for path, attribute in fragment.attributes.items():
                rank = self._rank(fragment.dataset, attribute.stamp)
                held = best.get(path)
                if held is None or _outranks(rank, attribute.value, held[0], held[1].value):
                    best[path] = (rank, attribute)
        return _nest(best)

    @abc.abstractmethod
    def _rank(self, dataset: str, stamp: RecordStamp) -> tuple:
        """How much a value from ``dataset`` set at ``stamp`` is preferred (greater wins)."""


@dataclasses.dataclass(frozen=True)
class TimestampOrdered(MergePolicy):
    """Each path takes the value with the greatest stamp across the person's fragments (the default)."""

    def _rank(self, dataset: str, stamp: RecordStamp) -> tuple:
        return (stamp,)


@dataclasses.dataclass(frozen=True)
class DatasetPrecedence(MergePolicy):
    """Each path takes the value of the first dataset in ``order`` that has it; unlisted datasets follow, by stamp."""

    order: tuple[str, ...]

    def _rank(self, dataset: str, stamp: RecordStamp) -> tuple:
        position = self.order.index(dataset) if dataset in self.order else len(self.order)
        return (-position, stamp)


def build_view(
    person_id: str,
    identities: Iterable[Identity],
    fragments: Iterable[Fragment],
    policy: MergePolicy,
    *,
    recent_limit: int = 50,
    now_us: int | None = None,
    event_ttl_us: int | None = None,
) -> dict[str, Any]:
    """The person's merged profile as ``profile get`` shows it, without ``lookup``; see the module docstring.

    ``recent_limit`` can be at most the fragments' ``recent_events``: they keep no more. ``now_us`` and
    ``event_ttl_us`` go together.
    """
    if (now_us is None) != (event_ttl_us is None):
        raise ValueError("now_us and event_ttl_us go together")
    return _view(person_id, identities, list(fragments), policy, recent_limit, now_us, event_ttl_us, embed_json=False)


def build_view_bytes(
    person_id: str,
    identities: Iterable[Identity],
    fragments: Iterable[Fragment],
    policy: MergePolicy,
    *,
    recent_limit: int = 50,
) -> bytes:
    """``view_to_bytes(build_view(...))`` byte for byte, cheaper: the recent bodies go in as the JSON their fragments
    keep (``Fragment.recent_json``), which is what encoding them with sorted keys gives, instead of being encoded
    again."""
    return _canonical(_view(person_id, identities, list(fragments), policy, recent_limit, None, None, embed_json=True))


def _view(
    person_id: str,
    identities: Iterable[Identity],
    held: Sequence[Fragment],
    policy: MergePolicy,
    recent_limit: int,
    now_us: int | None,
    event_ttl_us: int | None,
    *,
    embed_json: bool,
) -> dict[str, Any]:
    # A person's events mostly sit in one fragment, which a view only reads: no union to copy.
    entries, bodies, known_json = (
        (held[0].events, held[0].recent, held[0].recent_json) if len(held) == 1 else _union_events(held)
    )
    # By recency, newest first: timestamp, then id (pairs rather than a key function, which cost a call per body).
    ranked = sorted([(entries[event_id].timestamp_us, event_id) for event_id in bodies], reverse=True)
    if now_us is not None and event_ttl_us is not None:
        ranked = [pair for pair in ranked if now_us - pair[0] <= event_ttl_us]
    dropped = _NO_KEYS
    for fragment in held:
        dropped = dropped.union(fragment.events_dropped)
    first_seen = min((f.first_seen_us for f in held if f.first_seen_us is not None), default=None)
    # Entries order by timestamp first: the greatest holds the last one.
    last_entry = max(entries.values(), default=None)
    return {
        "person_id": person_id,
        "identities": [{"namespace": identity.namespace, "id": identity.id} for identity in sorted(set(identities))],
        "attributes": policy.merge(held),
        "events": {
            "count": len(entries) + dropped.estimate(),
            "first_seen": _rfc3339(first_seen),
            "last_seen": _rfc3339(None if last_entry is None else last_entry.timestamp_us),
            "by_type": dict(sorted(_count_types(entries.values()).items())),
            "recent": [
                _embedded(bodies, known_json if embed_json else {}, event_id) for _, event_id in ranked[:recent_limit]
            ],
        },
    }


def regroup(fragments_by_key: Mapping[str, Fragment], person_of: Mapping[Identity, str]) -> dict[str, list[Fragment]]:
    """Each person's fragments (in key order) under the grouping ``person_of``, which must cover their identities."""
    persons: dict[str, list[Fragment]] = defaultdict(list)
    for key in sorted(fragments_by_key):
        fragment = fragments_by_key[key]
        persons[person_of[fragment.identity]].append(fragment)
    return dict(persons)


def fragment_to_bytes(fragment: Fragment) -> bytes:
    """The fragment as deterministic JSON (the shape in the module docstring)."""
    document = {
        "identity": {"namespace": fragment.identity.namespace, "id": fragment.identity.id},
        "dataset": fragment.dataset,
        "attributes": {
            path: [
                attribute.value,
                attribute.stamp.record_time_us,
                attribute.stamp.ingest_time_us,
                attribute.stamp.message_id,
            ]
            for path, attribute in fragment.attributes.items()
        },
        "events": {event_id: [entry.event_type, entry.timestamp_us] for event_id, entry in fragment.events.items()},
        "recent": {
            event_id: _embedded(fragment.recent, fragment.recent_json, event_id) for event_id in fragment.recent
        },
        "first_seen_us": fragment.first_seen_us,
        "events_dropped": fragment.events_dropped.hashes,
        "oversize_events": fragment.oversize_events.hashes,
        "oversize_records": fragment.oversize_records.hashes,
    }
    return _canonical(document)


def fragment_from_bytes(data: bytes) -> Fragment:
    document = orjson.loads(data)
    recent_json = {event_id: _canonical(body) for event_id, body in document["recent"].items()}
    return Fragment(
        identity=Identity(document["identity"]["namespace"], document["identity"]["id"]),
        dataset=document["dataset"],
        attributes={
            path: Attribute(value, RecordStamp(record_time_us, ingest_time_us, message_id))
            for path, (value, record_time_us, ingest_time_us, message_id) in document["attributes"].items()
        },
        events={
            event_id: EventEntry(timestamp_us, event_type)
            for event_id, (event_type, timestamp_us) in document["events"].items()
        },
        recent=_EncodedBodies(dict(recent_json)),
        first_seen_us=document["first_seen_us"],
        recent_json=recent_json,
        events_dropped=DistinctCount(tuple(document["events_dropped"])),
        oversize_events=DistinctCount(tuple(document["oversize_events"])),
        oversize_records=DistinctCount(tuple(document["oversize_records"])),
    )


def view_to_bytes(view: Mapping[str, Any]) -> bytes:
    """The view as deterministic JSON, so that writing an unchanged view writes the same bytes."""
    return _canonical(view)


def view_from_bytes(data: bytes) -> dict[str, Any]:
    return orjson.loads(data)


def _record_fragment(
    identity: Identity, dataset: str, entity: Mapping[str, Any], stamp: RecordStamp, limits: ProfileLimits
) -> Fragment:
    # Sorting the keys changes no length: the canonical bytes are needed only for the digest of an oversize record.
    if len(orjson.dumps(entity)) > limits.max_record_bytes:
        # Two entities of one batch message share a message id; their content tells them apart.
        key = f"{stamp.message_id}:{hashlib.sha256(_canonical(entity)).hexdigest()}"
        return Fragment(identity, dataset, oversize_records=DistinctCount.of([key]))
    attributes: dict[str, Attribute] = {}
    for name, value in entity.items():
        if name not in _NOT_ATTRIBUTES and not name.startswith(_LINEAGE_PREFIX):
            _add_leaves(_escaped(name), value, stamp, attributes)
    return Fragment(identity, dataset, attributes=attributes)


def _event_fragment(
    identity: Identity, dataset: str, entity: Mapping[str, Any], stamp: RecordStamp, limits: ProfileLimits
) -> Fragment:
    event_id = entity["_id"]  # validation requires the _id of every ExperienceEvent
    encoded = _canonical(entity)
    oversize = len(encoded) > limits.max_event_bytes
    body = {name: entity[name] for name in ("_id", "timestamp", "eventType") if name in entity} if oversize else entity
    # As a merge would cut it: a single record's fragment is what applying it to an empty one gives.
    kept = bool(limits.recent_events)
    return Fragment(
        identity,
        dataset,
        events={event_id: EventEntry(stamp.record_time_us, entity.get("eventType", ""))},
        recent=_EncodedBodies({event_id: body if oversize else encoded}) if kept else {},
        first_seen_us=stamp.record_time_us,
        oversize_events=DistinctCount.of([event_id]) if oversize else _NO_KEYS,
        recent_json={event_id: encoded} if kept and not oversize else {},
    )


class _EncodedBodies(Mapping[str, Mapping[str, Any]]):
    """A fragment's recent bodies by event id, each held as its canonical JSON where that is known and decoded only
    when read. Why: the writer's cache of fragments outlives many flushes, and holding its bodies as objects made them
    most of the process's containers, which every full garbage collection walks (they were 28% at the end of the
    bench loop); the hot paths read only the JSON (:func:`_embedded`). A body held as JSON reads back as what decoding
    it gives, as a fragment read from the store does."""

    __slots__ = ("_held",)

    def __init__(self, held: dict[str, bytes | Mapping[str, Any]]) -> None:
        # Bytes are a body's JSON; anything else is the body (JSON objects are never bytes).
        self._held = held

    @classmethod
    def of(cls, recent: Mapping[str, Mapping[str, Any]], recent_json: Mapping[str, bytes]) -> _EncodedBodies:
        """A fresh copy of a fragment's bodies, as JSON where ``recent_json`` knows it."""
        if isinstance(recent, _EncodedBodies):
            return cls(dict(recent._held))
        return cls({event_id: recent_json.get(event_id, body) for event_id, body in recent.items()})

    def hold(self, event_id: str, body_or_json: bytes | Mapping[str, Any]) -> None:
        self._held[event_id] = body_or_json

    def discard(self, event_id: str) -> None:
        self._held.pop(event_id, None)

    def __getitem__(self, event_id: str) -> Mapping[str, Any]:
        held = self._held[event_id]
        return orjson.loads(held) if isinstance(held, bytes) else held

    def __contains__(self, event_id: object) -> bool:
        return event_id in self._held

    def __iter__(self) -> Iterator[str]:
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)

    def __repr__(self) -> str:
        return repr(dict(self.items()))


class _EventUnion(NamedTuple):
    """Every event id with its winning entry, the bodies that belong to a winning entry, and the JSON known of those
    bodies (``Fragment.recent_json``)."""

    entries: dict[str, EventEntry]
    bodies: _EncodedBodies
    known_json: dict[str, bytes]


def _union_events(fragments: Sequence[Fragment]) -> _EventUnion:
    """The events of ``fragments`` together, in fresh dicts."""
    if not fragments:
        return _EventUnion({}, _EncodedBodies({}), {})
    # The first fragment is copied whole (the stored one, when a batch merges in): only the ids another fragment
    # holds a later copy of need looking at, and their bodies from the first are stale.
    entries = dict(fragments[0].events)
    bodies = _EncodedBodies.of(fragments[0].recent, fragments[0].recent_json)
    known_json = dict(fragments[0].recent_json)
    for fragment in fragments[1:]:
        for event_id, entry in fragment.events.items():
            held = entries.get(event_id)
            if held is None or entry > held:
                entries[event_id] = entry
                bodies.discard(event_id)
                known_json.pop(event_id, None)
    for fragment in fragments[1:]:
        for event_id in fragment.recent:
            # A fragment that kept the winning entry without its body had `recent_events` newer events, so that id
            # cannot make the merged top N either.
            if fragment.events[event_id] != entries[event_id]:
                continue
            if event_id in bodies:
                body, held = fragment.recent[event_id], bodies[event_id]
                if body == held or _canonical(body) <= _canonical(held):
                    continue
            known = fragment.recent_json.get(event_id)
            if known is None:
                bodies.hold(event_id, fragment.recent[event_id])
                known_json.pop(event_id, None)
            else:
                bodies.hold(event_id, known)
                known_json[event_id] = known
    return _EventUnion(entries, bodies, known_json)


def _count_types(entries: Iterable[EventEntry]) -> dict[str, int]:
    # A plain dict: a Counter's setup cost more than the counting for the few events most views hold.
    counts: dict[str, int] = {}
    for entry in entries:
        counts[entry.event_type] = counts.get(entry.event_type, 0) + 1
    return counts


def _embedded(bodies: Mapping[str, Mapping[str, Any]], known_json: Mapping[str, bytes], event_id: str) -> Any:
    """The body of ``event_id`` for :func:`_canonical` to encode: its JSON put in as is where known
    (:class:`orjson.Fragment`), which gives the same bytes, and the body itself, decoded, where not."""
    known = known_json.get(event_id)
    return bodies[event_id] if known is None else orjson.Fragment(known)


def _recency(entries: Mapping[str, EventEntry]) -> Callable[[str], tuple[int, str]]:
    """The sort key of event ids by recency: timestamp, then id."""
    return lambda event_id: (entries[event_id].timestamp_us, event_id)


def _outranks(rank: tuple, value: Any, held_rank: tuple, held_value: Any) -> bool:
    # Equal ranks come from one record or one batch message; the values decide so that order never does.
    return rank > held_rank or (
        rank == held_rank and value != held_value and _canonical(value) > _canonical(held_value)
    )


def _add_leaves(path: str, value: Any, stamp: RecordStamp, into: dict[str, Attribute]) -> None:
    # Entities are decoded JSON (or Avro) whose objects are dicts; an ABC isinstance check here costs a third of apply.
    if isinstance(value, dict):
        for name, inner in value.items():
            _add_leaves(f"{path}.{_escaped(name)}", inner, stamp, into)
    else:
        into[path] = Attribute(value, stamp)


def _escaped(name: str) -> str:
    return name.replace("~", "~0").replace(".", "~1")


def _nest(best: Mapping[str, tuple[tuple, Attribute]]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    # Most preferred first: a path that collides with one already placed (a value where an object is, or the
    # reverse) is the less preferred one and is left out.
    for path, (_, attribute) in sorted(best.items(), key=lambda item: (item[1][0], item[0]), reverse=True):
        *parents, last = _path_names(path)
        node: Any = tree
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node.setdefault(last, attribute.value)
    return tree


# A person's paths are the same at every view, and a view splits them all.
@functools.lru_cache(maxsize=16_384)
def _path_names(path: str) -> tuple[str, ...]:
    """The runtime names of a dot path, unescaped."""
    return tuple(part.replace("~1", ".").replace("~0", "~") for part in path.split("."))


def _canonical(value: Any) -> bytes:
    """Compact UTF-8 JSON with sorted keys: the same value always gives the same bytes, and bytes order as the
    strings they encode. orjson rather than the json module: views and fragments are rewritten at every flush, and
    encoding them was the largest single cost of the profile stage."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _hash64(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big")


def _smallest(hashes: set[int]) -> tuple[int, ...]:
    return tuple(heapq.nsmallest(_EXACT_UP_TO, hashes))


# A person's first event stays the same, and its last is often another's: views format the same times again and again.
@functools.lru_cache(maxsize=4096)
def _rfc3339(time_us: int | None) -> str | None:
    if time_us is None:
        return None
    return (EPOCH + timedelta(microseconds=time_us)).isoformat().replace("+00:00", "Z")
