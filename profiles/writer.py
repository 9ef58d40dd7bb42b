"""Merging into the profile store without Beam: the settings, the write a flush makes, and the writer that makes it.

:class:`ProfileWriter` applies a batch of stitched records and identity changes (one flush of
:class:`transforms.merge_profiles.MergeProfiles`) to the profile store: it reads the persons' identities from the
identity store and their fragments from the profile store, applies the records (:mod:`profiles.model`), and writes
one :class:`ProfileWrite`, computed again when another writer changed a fragment it read
(:class:`ProfileWriteConflict`). It needs of the stores only what :class:`IdentityFacts` and
:class:`FragmentStore` say, which :mod:`stores.identity` and :mod:`stores.profiles` provide.

A fragment is stored as a base and the deltas appended since (:class:`StoredFragment`): a flush appends, per
(identity, dataset) it touches, one delta built from its own records only, and the fragment is their merge
(:func:`profiles.model.merge_fragments`, order-free). A flush that would leave more than :data:`COMPACT_AFTER_DELTAS`
deltas writes the merged fragment as the new base instead, and :meth:`ProfileWriter.close` compacts the fragments it
left deltas on. Why: docs/decisions/0031-profile-deltas-appended-not-rewritten.md.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

from core.records import ValidRecord
from identity.graph import resolve
from identity.model import GraphFacts, Identity, IdentityChange
from identity.namespaces import extract_identities, record_time_us
from identity.stitching import StitchSettings
from profiles import model as profile_model
from schemas.registry import SchemaRegistry

FRAGMENT_CACHE_SIZE = 20_000
CONFLICT_ATTEMPTS = 50
# Deltas a fragment may hold before a flush folds them into its base, which bounds what a read brings back. Over five
# copies of the sample, 4 read 5.3 KB and wrote 1.7 KB of fragments per message; 8 read 6.5 KB for the same writes,
# and 2 wrote 2.3 KB.
COMPACT_AFTER_DELTAS = 4
# Fragments compacted per write when a writer closes.
COMPACT_PER_WRITE = 500
# The changes after which a person id answers with another's profile.
RETIRING_CHANGES = ("merge", "rename")


@dataclasses.dataclass(frozen=True)
class ProfileSettings:
    """How profiles are merged: the policy, the datasets that feed them, and the buffering."""

    policy: profile_model.MergePolicy = dataclasses.field(default_factory=profile_model.TimestampOrdered)
    limits: profile_model.ProfileLimits = profile_model.DEFAULT_LIMITS
    flush_interval_s: float = 1.0
    max_buffered: int = 500
    shards: int = 16


class StoredFragment(NamedTuple):
    """What the store holds of one fragment: its base (``None`` before the first compaction) and the deltas appended
    since, by :func:`delta_id`. The fragment is the merge of them all."""

    base: bytes | None
    deltas: Mapping[str, bytes]


def delta_id(delta: bytes) -> str:
    """The name a delta is stored under: a digest of its bytes, so that appending a delta again changes nothing."""
    return hashlib.blake2b(delta, digest_size=12).hexdigest()


@dataclasses.dataclass(frozen=True)
class ProfileWrite:
    """One batch of changes: deltas to append, fragment bases and views to put, identity index entries to set or
    drop, redirects to set.

    ``deltas`` maps fragment keys to a delta to append (under :func:`delta_id`); ``fragments`` maps fragment keys to a
    new base, which replaces the base and the deltas the key was read with (its ``expected`` entry; none if it has
    none). ``expected`` maps fragment keys to what the write was computed from (``None``: absent); the write applies
    only while every one of them still holds the same deltas (by id) and a base as it did (present or not, and the
    same bytes where the write replaces it). ``index`` maps identity keys to person ids; ``unindex`` lists identity
    keys that belong to no profile any more; ``redirects`` maps retired person ids to the person that absorbed them;
    ``drop_views`` lists person ids whose view is gone (merged away or split up).
    """

    deltas: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    fragments: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    views: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    index: Mapping[str, str] = dataclasses.field(default_factory=dict)
    unindex: tuple[str, ...] = ()
    redirects: Mapping[str, str] = dataclasses.field(default_factory=dict)
    drop_views: tuple[str, ...] = ()
    expected: Mapping[str, StoredFragment | None] = dataclasses.field(default_factory=dict)


class ProfileWriteConflict(Exception):
    """A fragment a write was computed from is no longer as it was read; the write changed nothing."""


class IdentityFacts(Protocol):
    """What the writer asks of the identity store (:class:`stores.identity.IdentityStore` is one)."""

    def facts_of(self, identities: Iterable[Identity]) -> GraphFacts: ...

    def close(self) -> None: ...


class FragmentStore(Protocol):
    """What the writer asks of the profile store (:class:`stores.profiles.ProfileStore` is one)."""

    def fragments(self, keys: Iterable[str]) -> dict[str, StoredFragment]: ...

    def write(self, change: ProfileWrite) -> None: ...

    def close(self) -> None: ...


class DecodedFragments:
    """The fragments this process last read or wrote, composed and decoded, by key and by what the store held: a
    person's next flush reads back what its last one wrote, and decoding and merging it again was a sixth of the
    pipeline's time. A fragment is reused only when the store holds the very base it was composed from and every delta
    it was composed from (the deltas appended since are merged in), so a write from elsewhere is never missed. Safe to
    share between threads (the stage shares one per process among its DoFn instances)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: collections.OrderedDict[str, tuple[StoredFragment, profile_model.Fragment]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def fragment(
        self,
        key: str,
        stored: StoredFragment | bytes,
        limits: profile_model.ProfileLimits = profile_model.DEFAULT_LIMITS,
    ) -> profile_model.Fragment:
        """The fragment ``stored`` holds (bytes alone: a base without deltas)."""
        if isinstance(stored, bytes):
            stored = StoredFragment(stored, {})
        with self._lock:
            held = self._entries.get(key)
            if held is not None:
                self._entries.move_to_end(key)
        if held is not None and held[0] == stored:
            return held[1]
        if held is not None and held[0].base == stored.base and held[0].deltas.keys() <= stored.deltas.keys():
            added = StoredFragment(None, {name: stored.deltas[name] for name in stored.deltas.keys() - held[0].deltas})
            fragment = merge_stored(held[1], added, limits)
        else:
            fragment = merge_stored(None, stored, limits)
        if fragment is None:
            raise ValueError(f"fragment {key} is stored empty")
        self.remember(key, stored, fragment)
        return fragment

    def remember(self, key: str, stored: StoredFragment, fragment: profile_model.Fragment) -> None:
        with self._lock:
            self._entries[key] = (stored, fragment)
            self._entries.move_to_end(key)
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)


def fragment_writes(
    deltas: Mapping[str, profile_model.Fragment],
    merged: Mapping[str, profile_model.Fragment],
    read: Mapping[str, StoredFragment],
) -> tuple[dict[str, bytes], dict[str, bytes], dict[str, StoredFragment]]:
    """What a flush writes of the fragments it touched, given each one's delta, the fragment with it merged in, and
    what was read: the deltas to append, the bases to put instead where a fragment held :data:`COMPACT_AFTER_DELTAS`
    deltas already, and what each fragment holds then."""
    appended, compacted, after = {}, {}, {}
    for key in sorted(deltas):
        stored = read.get(key) or StoredFragment(None, {})
        if len(stored.deltas) < COMPACT_AFTER_DELTAS:
            appended[key] = profile_model.fragment_to_bytes(deltas[key])
            after[key] = StoredFragment(stored.base, {**stored.deltas, delta_id(appended[key]): appended[key]})
        else:
            compacted[key] = profile_model.fragment_to_bytes(merged[key])
            after[key] = StoredFragment(compacted[key], {})
    return appended, compacted, after


def merge_stored(
    fragment: profile_model.Fragment | None,
    stored: StoredFragment,
    limits: profile_model.ProfileLimits = profile_model.DEFAULT_LIMITS,
) -> profile_model.Fragment | None:
    """``fragment`` (``None``: nothing) merged with the stored base and deltas, in the order of their names."""
    for part in (stored.base, *(stored.deltas[name] for name in sorted(stored.deltas))):
        if part is not None:
            decoded = profile_model.fragment_from_bytes(part)
            fragment = (
                decoded if fragment is None else profile_model.merge_fragments(fragment, decoded, policy_limits=limits)
            )
    return fragment


class ProfileWriter:
    """Applies records and identity changes to the profile store: the work of one flush, without Beam.

    It owns the two stores it is given (``close`` closes them). ``decoded`` is the cache of decoded fragments to use;
    by default one of its own. ``count_conflict`` is called for each write the store refused
    (:class:`ProfileWriteConflict`).
    """

    def __init__(
        self,
        registry: SchemaRegistry,
        identities: IdentityFacts,
        profiles: FragmentStore,
        stitch: StitchSettings,
        settings: ProfileSettings,
        *,
        decoded: DecodedFragments | None = None,
        count_conflict: Callable[[], object] = lambda: None,
    ) -> None:
        self._registry = registry
        self._identities = identities
        self._profiles = profiles
        self._stitch = stitch
        self._settings = settings
        self._decoded = decoded or DecodedFragments(FRAGMENT_CACHE_SIZE)
        self._datasets = [name for name, dataset in registry.datasets.items() if dataset.profile]
        self._count_conflict = count_conflict
        self._uncompacted: set[str] = set()

    def close(self) -> None:
        """Compacts the fragments this writer left deltas on, then closes both stores."""
        try:
            pending = sorted(self._uncompacted)
            for start in range(0, len(pending), COMPACT_PER_WRITE):
                self._retried(lambda chunk=pending[start : start + COMPACT_PER_WRITE]: self._compact(chunk))
        finally:
            self._identities.close()
            self._profiles.close()

    def write(self, records: Sequence[ValidRecord], changes: Sequence[IdentityChange]) -> int:
        """Applies the records and rebuilds the view of every person they, or the merges and splits, now concern.

        A record carries the person it had when stitched; if that person has since been merged away, its records go
        to the survivor, the person its identities belong to now. Returns how many views it wrote.

        Another worker may write a fragment this write read: the store then refuses it, and it is computed again
        from what the store holds now (after a short random pause, up to ``CONFLICT_ATTEMPTS`` times).
        """
        return self._retried(lambda: self._write_once(records, changes))

    def _retried(self, write_once: Callable[[], int]) -> int:
        attempt = 0
        while True:
            try:
                return write_once()
            except ProfileWriteConflict:
                attempt += 1
                self._count_conflict()
                if attempt == CONFLICT_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))

    def _write_once(self, records: Sequence[ValidRecord], changes: Sequence[IdentityChange]) -> int:
        rules = self._stitch.graph
        extracted = [(record, self._identities_of(record)) for record in records]
        known = {identity for _, identities in extracted for identity in identities}
        # A split's identities too: the side that keeps the old person id gets no record, yet needs its view rebuilt.
        known |= {_identity(text) for change in changes for text in change.identities}
        resolution = resolve(self._identities.facts_of(known), rules)
        current = sorted({resolution.person_of[identity] for identity in known if identity in resolution.person_of})
        members = {owner: [] for owner in current}
        for identity, owner in sorted(resolution.person_of.items()):
            if owner in members:
                members[owner].append(identity)
        owned_identities = [identity for owned in members.values() for identity in owned]
        keys = [f"{identity}|{dataset}" for identity in owned_identities for dataset in self._datasets]
        read = self._profiles.fragments(keys)
        fragments = {key: self._decoded.fragment(key, stored, self._settings.limits) for key, stored in read.items()}
        deltas: dict[str, profile_model.Fragment] = {}
        for record, identities in extracted:
            owner = profile_model.fragment_identity(identities, rules)
            if owner is None:
                continue
            key = f"{owner}|{record.dataset}"
            schema = self._registry.get(record.schema_id)
            single = profile_model.record_fragment(
                owner,
                record.dataset,
                record.entity,
                is_event=schema.time_series,
                record_time_us=record_time_us(record.entity, schema.class_id, record.publish_time_us),
                ingest_time_us=record.publish_time_us,
                message_id=record.message_id,
                policy_limits=self._settings.limits,
            )
            held = deltas.get(key)
            deltas[key] = single if held is None else self._merged(held, single)
        for key, delta in deltas.items():
            held = fragments.get(key)
            fragments[key] = delta if held is None else self._merged(held, delta)
        keys_of = collections.defaultdict(list)
        for key, fragment in fragments.items():
            keys_of[fragment.identity].append(key)
        views = {}
        for owner, owned in members.items():
            held = [fragments[key] for key in sorted(key for identity in owned for key in keys_of[identity])]
            views[owner] = profile_model.build_view_bytes(owner, owned, held, self._settings.policy)
        # Only a merge or a rename retires a person id; a record stitched to a person that is now another's goes to
        # the person its identities belong to, and the merge's own flush leaves the redirect.
        redirects = {
            old: change.persons_after[0]
            for change in changes
            if change.kind in RETIRING_CHANGES
            for old in change.persons_before
            if old not in members and change.persons_after
        }
        appended, compacted, after = fragment_writes(deltas, fragments, read)
        self._profiles.write(
            ProfileWrite(
                deltas=appended,
                fragments=compacted,
                views=views,
                index={str(identity): owner for owner, owned in members.items() for identity in owned},
                redirects=redirects,
                drop_views=tuple(sorted(redirects)),
                expected={key: read.get(key) for key in keys},
            )
        )
        for key, stored in after.items():
            self._decoded.remember(key, stored, fragments[key])
        self._uncompacted.update(appended)
        self._uncompacted.difference_update(compacted)
        return len(views)

    def _merged(self, a: profile_model.Fragment, b: profile_model.Fragment) -> profile_model.Fragment:
        return profile_model.merge_fragments(a, b, policy_limits=self._settings.limits)

    def _identities_of(self, record: ValidRecord) -> Sequence[Identity]:
        """The record's normalised identities, as stitching found them, or extracted again when it did not say."""
        if record.identities is not None:
            return record.identities
        return extract_identities(record.entity, self._stitch.namespaces, self._stitch.rules).identities

    def _compact(self, keys: Sequence[str]) -> int:
        """Folds the deltas of these fragments into their bases; returns how many it compacted."""
        read = {key: stored for key, stored in self._profiles.fragments(keys).items() if stored.deltas}
        compacted = {
            key: profile_model.fragment_to_bytes(self._decoded.fragment(key, stored, self._settings.limits))
            for key, stored in read.items()
        }
        self._profiles.write(ProfileWrite(fragments=compacted, expected=read))
        self._uncompacted.difference_update(keys)
        return len(compacted)


def _identity(text: str) -> Identity:
    namespace, _, identity_id = text.partition(":")
    return Identity(namespace, identity_id)
