"""Profile stores: where merged profiles live, behind one small interface with a backend per technology.

A store keeps opaque documents (JSON written by :mod:`profiles.model`), keyed: **fragments**, one per (identity,
dataset), under ``"<NAMESPACE>:<id>|<dataset>"``, each a base and the deltas appended to it since, by name
(:class:`~profiles.writer.StoredFragment`; the fragment is their merge, which the writer does); **views**, one per
person id ``"p-..."``, the merged profile as ``profile get`` and the HTTP API show it; an **index** from every identity
key ``"<NAMESPACE>:<id>"`` of the person to the person id; and **redirects** from retired person ids (merged away) to
the survivor. A lookup by identity or by person id is one store read.

``write`` applies one :class:`~profiles.writer.ProfileWrite` atomically and idempotently (writing the same thing
twice leaves the same contents: a delta is stored under a digest of its bytes), so a retried bundle changes nothing.
It appends deltas, and puts bases, each of which replaces the deltas the write read of that fragment (a compaction). A
write names the fragments it was computed from as they were read (``expected``): their delta names, whether they had
a base, and the bytes of a base it replaces. When any of them has changed since (another worker's flush of the same
person), the write changes nothing and raises :class:`~profiles.writer.ProfileWriteConflict`, and the writer reads
again and recomputes, so a view never misses another flush's delta and two compactions never drop one. Backends:
:mod:`stores.profiles_sqlite`, :mod:`stores.profiles_redis`, :mod:`stores.profiles_bigtable`, opened by URL
(:mod:`stores.opening`). A store written before fragments had deltas is read as it is: its fragments are bases.

``erase`` removes a person for a privacy request: the views of its person ids, the redirects from or to them, the
index entries of its identities and those pointing to its person ids, and every fragment of its identities.
``retired_into`` finds the person ids merged into a person's, so that a request covers every id the person has had.

Why fragments and views: docs/decisions/0012-profile-fragments-belong-to-identities.md; why writes name what they
read: docs/decisions/0011-profile-writes-name-the-fragments-they-read.md; why deltas:
docs/decisions/0031-profile-deltas-appended-not-rewritten.md.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable, Mapping
from types import TracebackType

from profiles.writer import ProfileWrite, StoredFragment


class ProfileStore(abc.ABC):
    """The interface every backend implements; see the module docstring."""

    @abc.abstractmethod
    def fragments(self, keys: Iterable[str]) -> dict[str, StoredFragment]:
        """The stored fragments among ``keys``, base and deltas (absent keys are left out), in one round trip."""

    @abc.abstractmethod
    def write(self, change: ProfileWrite) -> None:
        """Applies ``change`` atomically, in one round trip, if its ``expected`` fragments are as it says; raises
        :class:`ProfileWriteConflict`, having changed nothing, if not."""

    @abc.abstractmethod
    def view_by_identity(self, identity_key: str) -> bytes | None:
        """The view of the person holding this identity, in one read."""

    @abc.abstractmethod
    def view_by_person(self, person_id: str) -> bytes | None:
        """The view of this person, following a redirect left by a merge, in one read."""

    @abc.abstractmethod
    def erase(self, person_ids: Iterable[str], identity_keys: Iterable[str]) -> dict[str, int]:
        """Deletes a person: the views of ``person_ids``; the redirects from or to any of them; the index entries of
        ``identity_keys`` (``"<NAMESPACE>:<id>"``) and those pointing to one of ``person_ids``; and every fragment,
        base and deltas, whose key starts with ``"<identity key>|"`` for one of ``identity_keys``. Returns the counts
        deleted, ``{"views": n, "fragments": n, "index": n, "redirects": n}`` (a fragment counts once, with its base
        and deltas), and what a backend adds about the erasure of the bytes. Erasing again deletes nothing and
        returns zeros."""

    @abc.abstractmethod
    def retired_into(self, person_ids: Iterable[str]) -> set[str]:
        """The person ids that redirect to any of these: those retired by merging them into one of these. Redirects
        are one step long (docs/decisions/0020-redirects-are-one-step-long.md), so these are all of them."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def is_transient(self, error: BaseException) -> bool:
        """Whether ``error`` says the store cannot be reached for now (calling again later may work)."""
        return False

    def __enter__(self) -> ProfileStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


def changes_nothing(change: ProfileWrite) -> bool:
    """Whether the change puts or drops nothing (whatever it expects): backends then skip the round trip."""
    return not any(getattr(change, field.name) for field in dataclasses.fields(change) if field.name != "expected")


def changed_since_read(change: ProfileWrite, held: Mapping[str, StoredFragment]) -> bool:
    """Whether a fragment the change expects holds other deltas (by name) or a base that is now there or not, or
    other bytes where the change replaces it, than the change read. ``held`` is what the store holds of the expected
    fragments; only the bases the change replaces need their bytes."""
    for key, read in change.expected.items():
        now, replaced = held.get(key), key in change.fragments
        if _as_read(read, replaced) != _as_read(now, replaced):
            return True
    return False


def _as_read(stored: StoredFragment | None, with_base: bool) -> tuple[object, frozenset[str]]:
    if stored is None:
        return (None if with_base else False, frozenset())
    return (stored.base if with_base else stored.base is not None, frozenset(stored.deltas))
