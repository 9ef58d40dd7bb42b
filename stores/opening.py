"""Opening a store from its URL: the one parser of store URLs, the openers, and the handlers the stages take.

Store URLs (README, "Store URLs"): ``sqlite:///PATH`` (relative; ``sqlite:////abs/path.db``, ``sqlite:///:memory:``)
and ``redis://HOST:PORT/DB`` (the ``redis`` extra) for both kinds of store, ``bigtable://PROJECT/INSTANCE/TABLE``
(the ``bigtable`` extra) for profile stores. A malformed URL, or one whose backend's package is missing, raises a
one-line :class:`ValueError`; a store that cannot be reached or opened, :class:`~stores.errors.StoreUnavailableError`.

A :class:`StoreHandler` is a store as a DoFn holds it (the shape of RunInference's ``ModelHandler``): the URL, pickled
to the workers, and :meth:`~StoreHandler.open`, called on the worker, which opens the store there, waiting out an
outage (:func:`stores.outages.patient`).
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Callable
from typing import Generic, TypeVar

from stores.identity import IdentityStore
from stores.identity_sqlite import SqliteIdentityStore
from stores.outages import patient
from stores.profiles import ProfileStore
from stores.profiles_sqlite import SqliteProfileStore

IDENTITY_STORE = "identity store"
PROFILE_STORE = "profile store"

_FORMS = {"sqlite": "sqlite:///PATH", "redis": "redis://HOST:PORT/DB", "bigtable": "bigtable://PROJECT/INSTANCE/TABLE"}
_SCHEMES = {IDENTITY_STORE: ("sqlite", "redis"), PROFILE_STORE: ("sqlite", "redis", "bigtable")}
# The package each optional backend needs, by scheme, and the extra that installs it.
_EXTRA_PACKAGES = {"redis": "redis", "bigtable": "google.cloud.bigtable"}


@dataclasses.dataclass(frozen=True)
class StoreUrl:
    """A checked store URL: its scheme, and what its backend is opened with (``names``): the SQLite file's path,
    the Redis URL itself, or the Bigtable project, instance and table."""

    url: str
    scheme: str
    names: tuple[str, ...]


def parse_store_url(url: str, kind: str) -> StoreUrl:
    """``url`` checked as the URL of a store of ``kind`` (:data:`IDENTITY_STORE` or :data:`PROFILE_STORE`); raises a
    one-line ValueError naming the kind when it is unknown or malformed."""
    schemes = _SCHEMES[kind]
    forms = [_FORMS[scheme] for scheme in schemes]
    expected = f"expected {', '.join(forms[:-1])} or {forms[-1]}"
    scheme = url.partition("://")[0]
    if scheme not in schemes:
        raise ValueError(f"unknown {kind} URL {url!r}: {expected}")
    if scheme == "sqlite":
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else ""
        if not path:
            raise ValueError(f"malformed {kind} URL {url!r}: {expected}")
        return StoreUrl(url, scheme, (path,))
    try:
        parts = urllib.parse.urlsplit(url)
        if scheme == "redis":
            parts.port  # noqa: B018 (urlsplit checks the port only when it is read)
    except ValueError as error:
        raise ValueError(f"malformed {kind} URL {url!r}: {error}") from None
    if scheme == "redis":
        db = parts.path.strip("/")
        if db and not (db.isascii() and db.isdigit()):
            raise ValueError(f"malformed {kind} URL {url!r}: the database must be a number, not {db!r}")
        return StoreUrl(url, scheme, (url,))
    names = (parts.netloc, *parts.path.split("/")[1:])
    if len(names) != 3 or not all(names) or parts.query or parts.fragment:
        raise ValueError(f"malformed {kind} URL {url!r}: {expected}")
    return StoreUrl(url, scheme, names)


def open_identity_store(url: str, *, read_only: bool = False) -> IdentityStore:
    """The identity store ``url`` names. ``read_only`` (the lookups) opens a SQLite file only if it exists and is an
    identity store, and changes nothing in it."""
    parsed = parse_store_url(url, IDENTITY_STORE)
    if parsed.scheme == "sqlite":
        return SqliteIdentityStore(*parsed.names, read_only=read_only)
    # The optional backends are imported when asked for, so that SQLite users need not install their packages.
    try:
        from stores.identity_redis import RedisIdentityStore
    except ModuleNotFoundError as error:
        raise _missing_package(error, parsed) from None
    return RedisIdentityStore(*parsed.names)


def open_profile_store(url: str, *, read_only: bool = False) -> ProfileStore:
    """The profile store ``url`` names. ``read_only`` (the lookups) opens a SQLite file only if it exists and is a
    profile store, and creates no Bigtable table."""
    parsed = parse_store_url(url, PROFILE_STORE)
    if parsed.scheme == "sqlite":
        return SqliteProfileStore(*parsed.names, read_only=read_only)
    try:
        if parsed.scheme == "redis":
            from stores.profiles_redis import RedisProfileStore

            return RedisProfileStore(*parsed.names)
        from stores.profiles_bigtable import BigtableProfileStore
    except ModuleNotFoundError as error:
        raise _missing_package(error, parsed) from None
    return BigtableProfileStore(*parsed.names, create=not read_only)


def _missing_package(error: ModuleNotFoundError, parsed: StoreUrl) -> Exception:
    """A one-line ValueError when the backend's package is what is missing; the error itself when it is anything
    else."""
    package = _EXTRA_PACKAGES[parsed.scheme]
    if error.name is None or not (package == error.name or package.startswith(error.name + ".")):
        return error
    return ValueError(f"{parsed.url!r} needs the {package} package: pip install 'profilestream[{parsed.scheme}]'")


StoreT = TypeVar("StoreT")


@dataclasses.dataclass(frozen=True)
class StoreHandler(Generic[StoreT]):
    """A store as a stage holds it: picklable (the opener by reference, the URL), opened by :meth:`open` on the
    worker. ``kind`` names the store in the outage warnings."""

    opener: Callable[[str], StoreT]
    url: str
    kind: str

    def open(self) -> StoreT:
        """The store, opened with patience: its calls, and opening it, wait out an outage (:mod:`stores.outages`)."""
        return patient(self.opener, self.url, self.kind)


def identity_store_handler(url: str) -> StoreHandler[IdentityStore]:
    """The handler of the identity store ``url`` names."""
    return StoreHandler(open_identity_store, url, IDENTITY_STORE)


def profile_store_handler(url: str) -> StoreHandler[ProfileStore]:
    """The handler of the profile store ``url`` names."""
    return StoreHandler(open_profile_store, url, PROFILE_STORE)
