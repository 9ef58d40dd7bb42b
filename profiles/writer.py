"""Merging into the profile store without Beam: the settings, the write a flush makes, and the writer that makes it.

:class:`ProfileWriter` applies a batch of stitched records and identity changes (one flush of
:class:`transforms.merge_profiles.MergeProfiles`) to the profile store: it reads the persons' identities from the
identity store and their fragments from the profile store, applies the records (:mod:`profiles.model`), and writes
one :class:`ProfileWrite`, computed again when another writer changed a fragment it read
(:class:`ProfileWriteConflict`). It needs of the stores only what :class:`IdentityFacts` and
:class:`FragmentStore` say, which :mod:`stores.identity` and :mod:`stores.profiles` provide.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from core.records import ValidRecord
from identity.graph import resolve
from identity.model import GraphFacts, Identity, IdentityChange
from identity.namespaces import extract_identities, record_time_us
from identity.stitching import StitchSettings
from profiles import model as profile_model
from schemas.registry import SchemaRegistry

FRAGMENT_CACHE_SIZE = 20_000
CONFLICT_ATTEMPTS = 50
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


@dataclasses.dataclass(frozen=True)
class ProfileWrite:
    """One batch of changes: fragments and views to put, identity index entries to set or drop, redirects to set.

    ``expected`` maps fragment keys to the bytes the write was computed from (``None``: absent); the write applies
    only while every one of them still holds exactly that. ``index`` maps identity keys to person ids; ``unindex``
    lists identity keys that belong to no profile any more;
    ``redirects`` maps retired person ids to the person that absorbed them; ``drop_views`` lists person ids whose
    view is gone (merged away or split up).
    """

    fragments: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    views: Mapping[str, bytes] = dataclasses.field(default_factory=dict)
    index: Mapping[str, str] = dataclasses.field(default_factory=dict)
    unindex: tuple[str, ...] = ()
    redirects: Mapping[str, str] = dataclasses.field(default_factory=dict)
    drop_views: tuple[str, ...] = ()
    expected: Mapping[str, bytes | None] = dataclasses.field(default_factory=dict)


class ProfileWriteConflict(Exception):
    """A fragment a write was computed from is no longer as it was read; the write changed nothing."""


class IdentityFacts(Protocol):
    """What the writer asks of the identity store (:class:`stores.identity.IdentityStore` is one)."""

    def facts_of(self, identities: Iterable[Identity]) -> GraphFacts: ...

    def close(self) -> None: ...


class FragmentStore(Protocol):
    """What the writer asks of the profile store (:class:`stores.profiles.ProfileStore` is one)."""

    def fragments(self, keys: Iterable[str]) -> dict[str, bytes]: ...

    def write(self, change: ProfileWrite) -> None: ...

    def close(self) -> None: ...


class DecodedFragments:
    """The fragments this process last read or wrote, decoded, by key and bytes: a person's next flush reads back the
    bytes its last one wrote, and decoding them again was a sixth of the pipeline's time. A fragment is reused only
    when the store returns the very bytes it was decoded from, so a write from elsewhere is never missed. Safe to share
    between threads (the stage shares one per process among its DoFn instances)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: collections.OrderedDict[str, tuple[bytes, profile_model.Fragment]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def fragment(self, key: str, data: bytes) -> profile_model.Fragment:
        with self._lock:
            held = self._entries.get(key)
            if held is not None and held[0] == data:
                self._entries.move_to_end(key)
                return held[1]
        fragment = profile_model.fragment_from_bytes(data)
        self.remember(key, data, fragment)
        return fragment

    def remember(self, key: str, data: bytes, fragment: profile_model.Fragment) -> None:
        with self._lock:
            self._entries[key] = (data, fragment)
            self._entries.move_to_end(key)
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)


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

    def close(self) -> None:
        self._identities.close()
        self._profiles.close()

    def write(self, records: Sequence[ValidRecord], changes: Sequence[IdentityChange]) -> int:
        """Applies the records and rebuilds the view of every person they, or the merges and splits, now concern.

        A record carries the person it had when stitched; if that person has since been merged away, its records go
        to the survivor, the person its identities belong to now. Returns how many views it wrote.

        Another worker may write a fragment this write read: the store then refuses it, and it is computed again
        from what the store holds now (after a short random pause, up to ``CONFLICT_ATTEMPTS`` times).
        """
        attempt = 0
        while True:
            try:
                return self._write_once(records, changes)
            except ProfileWriteConflict:
                attempt += 1
                self._count_conflict()
                if attempt == CONFLICT_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0, min(0.2, 0.002 * 2**attempt)))

    def _write_once(self, records: Sequence[ValidRecord], changes: Sequence[IdentityChange]) -> int:
        rules = self._stitch.graph
        extracted = [
            (record, extract_identities(record.entity, self._stitch.namespaces, self._stitch.rules).identities)
            for record in records
        ]
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
        fragments = {key: self._decoded.fragment(key, data) for key, data in read.items()}
        touched = set()
        for record, identities in extracted:
            owner = profile_model.fragment_identity(identities, rules)
            if owner is None:
                continue
            key = f"{owner}|{record.dataset}"
            fragment = fragments.get(key) or profile_model.Fragment(identity=owner, dataset=record.dataset)
            schema = self._registry.get(record.schema_id)
            fragments[key] = profile_model.apply(
                fragment,
                record.entity,
                is_event=schema.time_series,
                record_time_us=record_time_us(record.entity, schema.class_id, record.publish_time_us),
                ingest_time_us=record.publish_time_us,
                message_id=record.message_id,
                policy_limits=self._settings.limits,
            )
            touched.add(key)
        keys_of = collections.defaultdict(list)
        for key, fragment in fragments.items():
            keys_of[fragment.identity].append(key)
        views = {}
        for owner, owned in members.items():
            held = [fragments[key] for key in sorted(key for identity in owned for key in keys_of[identity])]
            view = profile_model.build_view(owner, owned, held, self._settings.policy)
            views[owner] = profile_model.view_to_bytes(view)
        # Only a merge or a rename retires a person id; a record stitched to a person that is now another's goes to
        # the person its identities belong to, and the merge's own flush leaves the redirect.
        redirects = {
            old: change.persons_after[0]
            for change in changes
            if change.kind in RETIRING_CHANGES
            for old in change.persons_before
            if old not in members and change.persons_after
        }
        written = {key: profile_model.fragment_to_bytes(fragments[key]) for key in sorted(touched)}
        self._profiles.write(
            ProfileWrite(
                fragments=written,
                views=views,
                index={str(identity): owner for owner, owned in members.items() for identity in owned},
                redirects=redirects,
                drop_views=tuple(sorted(redirects)),
                expected={key: read.get(key) for key in keys},
            )
        )
        for key, data in written.items():
            self._decoded.remember(key, data, fragments[key])
        return len(views)


def _identity(text: str) -> Identity:
    namespace, _, identity_id = text.partition(":")
    return Identity(namespace, identity_id)
