"""Profile stores: where merged profiles live, behind one small interface with a backend per technology.

A profile is kept twice over, so that both writes and reads are cheap:

- **fragments**, one per (identity, dataset): what the records of one dataset said about one identity (see
  :mod:`profiles.model`). They are the truth a merge or a split is recomputed from: when persons merge,
  the survivor's profile is built from the fragments of all its identities; when a person splits, each side keeps
  the fragments of its own identities.
- **views**, one per person: the merged profile as ``profile get`` and the HTTP API show it (a JSON document), plus
  an **index** from every identity of the person to the person id, and **redirects** from retired person ids (merged
  away) to the survivor. A lookup by identity or by person id is one store read.

Documents are opaque bytes here (JSON written by :mod:`profiles.model`); stores only keep them, keyed:

- fragment key ``"<NAMESPACE>:<id>|<dataset>"``;
- identity key ``"<NAMESPACE>:<id>"``;
- person id ``"p-..."``.

``write`` applies one :class:`ProfileWrite` atomically and idempotently (writing the same thing twice leaves the
same contents), so a retried bundle changes nothing. A write names the fragments it was computed from as they were
read (``expected``); when any of them has changed since (another worker's flush of the same person), the write
changes nothing and raises :class:`ProfileWriteConflict`, and the writer reads again and recomputes. Two flushes that
touch the same fragment therefore never lose either's update. URLs: ``sqlite:///PATH``, ``redis://HOST:PORT/DB``,
``bigtable://PROJECT/INSTANCE/TABLE`` (the emulator through ``BIGTABLE_EMULATOR_HOST``).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Iterable
from types import TracebackType

from profiles.writer import ProfileWrite


class ProfileStore(abc.ABC):
    """The interface every backend implements; see the module docstring."""

    @abc.abstractmethod
    def fragments(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The stored fragments among ``keys`` (absent keys are left out), in one round trip."""

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
