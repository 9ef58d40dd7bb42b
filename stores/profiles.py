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
import urllib.parse
from collections.abc import Iterable, Mapping
from types import TracebackType

from stores.identity import check_redis_url


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


_EXPECTED = "expected sqlite:///PATH, redis://HOST:PORT/DB or bigtable://PROJECT/INSTANCE/TABLE"


def open_profile_store(url: str, *, read_only: bool = False) -> ProfileStore:
    """The store a URL names (see the module docstring for the forms). ``read_only`` (the lookups) opens a SQLite
    file only if it exists and is a profile store, and creates no Bigtable table.

    A malformed URL raises :class:`ValueError`, and a store that cannot be reached or opened
    :class:`~stores.identity.StoreUnavailableError` (a ValueError too), each with a one-line message.
    """
    # The backends import this module for ProfileStore, so they are imported here, when asked for: that also keeps
    # the redis and bigtable packages optional for SQLite users.
    scheme = url.partition("://")[0]
    parts = urllib.parse.urlsplit(url)
    if scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"malformed profile store URL {url!r}: {_EXPECTED}")
        from stores.profiles_sqlite import SqliteProfileStore

        return SqliteProfileStore(path, read_only=read_only)
    if scheme == "redis":
        check_redis_url(url, "profile store")
        try:
            from stores.profiles_redis import RedisProfileStore
        except ModuleNotFoundError as error:
            raise _missing_package(error, "redis", url) from None
        return RedisProfileStore(url)
    if scheme == "bigtable":
        names = [parts.netloc, *parts.path.split("/")[1:]]
        if len(names) != 3 or not all(names) or parts.query or parts.fragment:
            raise ValueError(f"malformed profile store URL {url!r}: {_EXPECTED}")
        try:
            from stores.profiles_bigtable import BigtableProfileStore
        except ModuleNotFoundError as error:
            raise _missing_package(error, "bigtable", url) from None
        return BigtableProfileStore(*names, create=not read_only)
    raise ValueError(f"unknown profile store URL {url!r}: {_EXPECTED}")


_EXTRA_PACKAGES = {"redis": "redis", "bigtable": "google.cloud.bigtable"}


def _missing_package(error: ModuleNotFoundError, extra: str, url: str) -> Exception:
    """A one-line ValueError when the extra's package is what is missing; the error itself when it is anything else."""
    package = _EXTRA_PACKAGES[extra]
    if error.name is None or not (package == error.name or package.startswith(error.name + ".")):
        return error
    return ValueError(f"{url!r} needs the {package} package: pip install 'profilestream[{extra}]'")


def changes_nothing(change: ProfileWrite) -> bool:
    """Whether the change puts or drops nothing (whatever it expects): backends then skip the round trip."""
    return not any(getattr(change, field.name) for field in dataclasses.fields(change) if field.name != "expected")
