"""Identity namespaces, and the identities one validated record carries: extracted, normalised or rejected.

In: a valid entity in runtime names (``ValidRecord.entity``), a :class:`NamespaceRegistry` and :class:`IdentityRules`
(both built from the configuration, :mod:`pipelines.config`). Out: an :class:`Extraction`, the record's normalised
:class:`~identity.model.Identity` values (deduplicated, sorted) and a :class:`Rejection` for every identity
left out of the graph. Nothing raises: bad data is a rejection, and the record itself goes on to the lake.

Sources: every item of ``identityMap``, keyed by a namespace code in any case or by the URL form the XDM examples use,
``https://data.adobe.io/entities/namespace/<numeric id>``; and every *identity field* (:attr:`IdentityRules.fields`, as
the reference platform's identity descriptors), a dot-separated runtime path such as ``personalEmail.address`` mapped
to a namespace code, read when present. An :class:`~identity.model.Identity` names its namespace by the configured
code (``Email``), whatever case or form the message used.

Normalisation (README, "Namespaces and normalisation"): every id is trimmed; then ``Email`` is lower-cased and holds
one ``@`` between non-empty parts; ``Phone`` is parsed with ``phonenumbers`` (numbers without a country code in the
default region) and written in E.164; ``ECID`` is exactly 38 digits; a *hashed* namespace holds a SHA-256 as 64 hex
digits, lower-cased. Rejection codes (also in README); an identity gets the first that applies, in this order:

==============================  ====================================================================================
``IDENTITY.MALFORMED``          an item without a string ``id`` (validation stops these; extraction never trusts it)
``IDENTITY.UNKNOWN_NAMESPACE``  the ``identityMap`` key or identity field names no configured namespace
``IDENTITY.TOO_LONG``           an id over ``max_id_length`` (1,024) characters, after trimming
``IDENTITY.BLOCKED``            ``null``, ``anonymous``, ``invalid`` or blank (any case, trimmed), or a configured
                                blocked value or pattern
``IDENTITY.INVALID_EMAIL``      an ``Email`` id without exactly one ``@`` between non-empty parts
``IDENTITY.INVALID_PHONE``      a ``Phone`` id that ``phonenumbers`` cannot parse, or parses to no valid number
``IDENTITY.ECID_LENGTH``        an ``ECID`` id that is not exactly 38 digits
``IDENTITY.HASH_NOT_SHA256``    an id of a hashed namespace that is not 64 hexadecimal characters
``IDENTITY.QUARANTINED``        from the graph, not from here: an identity that gained too many links too fast
==============================  ====================================================================================

The standard namespaces (:data:`STANDARD_NAMESPACES`, when the configuration lists none), their numeric ids and
priorities: docs/decisions/0025-standard-namespace-numeric-ids.md.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import phonenumbers

from core.clock import rfc3339_us
from identity.model import Identity

UNKNOWN_NAMESPACE = "IDENTITY.UNKNOWN_NAMESPACE"
MALFORMED = "IDENTITY.MALFORMED"
TOO_LONG = "IDENTITY.TOO_LONG"
BLOCKED = "IDENTITY.BLOCKED"
INVALID_EMAIL = "IDENTITY.INVALID_EMAIL"
INVALID_PHONE = "IDENTITY.INVALID_PHONE"
ECID_LENGTH = "IDENTITY.ECID_LENGTH"
HASH_NOT_SHA256 = "IDENTITY.HASH_NOT_SHA256"
QUARANTINED = "IDENTITY.QUARANTINED"
"""Set by the identity graph; defined here so that every ``IDENTITY.*`` code has one home."""

NAMESPACE_TYPES = ("cookie", "device", "cross-device", "person", "hashed")
NAMESPACE_URL_PREFIX = "https://data.adobe.io/entities/namespace/"
EXPERIENCE_EVENT_CLASS = "https://ns.adobe.com/xdm/context/experienceevent"
IDENTITY_MAP = "identityMap"
ALWAYS_BLOCKED = frozenset({"", "null", "anonymous", "invalid"})
# Raw phone values whose normal form is remembered: bounded, so hostile input cannot grow it without end.
PHONE_CACHE_SIZE = 65_536
# Identities remembered by the rules, as given (namespace key and id) with the namespaces that read them; bounded too.
IDENTITY_CACHE_SIZE = 65_536

# A code is what `identity get --identity NAMESPACE:ID` splits on the first ":", so it holds none.
_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_NUMERIC_ID = re.compile(r"[0-9]+")
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclasses.dataclass(frozen=True)
class Namespace:
    """An identity namespace: its code, Adobe's numeric id when it has one, its type and how it ranks.

    ``unique``: a graph holds at most one identity of it. ``priority``: higher is more important (kept longest).
    ``hash_of``: for a hashed namespace, the namespace normalised before hashing (informational).
    """

    code: str
    numeric_id: int | None
    type: str
    unique: bool = False
    priority: int = 0
    hash_of: str | None = None

    def __post_init__(self) -> None:
        if not _CODE.fullmatch(self.code):
            raise ValueError(f"code {self.code!r} must be letters, digits, '_', '.' or '-'")
        if self.type not in NAMESPACE_TYPES:
            raise ValueError(f"type must be one of {', '.join(NAMESPACE_TYPES)}, not {self.type!r}")


STANDARD_NAMESPACES = (
    Namespace("CRMID", None, "person", unique=True, priority=100),
    Namespace("Email", 6, "person", priority=80),
    Namespace("Phone", 7, "person", priority=70),
    Namespace("Email_LC_SHA256", 11, "hashed", priority=60, hash_of="Email"),
    Namespace("Phone_SHA256", None, "hashed", priority=50, hash_of="Phone"),
    Namespace("IDFA", 20915, "device", priority=40),
    Namespace("GAID", 20914, "device", priority=40),
    Namespace("AAID", 10, "cookie", priority=20),
    Namespace("ECID", 4, "cookie", priority=20),
)


class NamespaceRegistry:
    """The configured namespaces, found by code (any case) or by the URL form of their numeric id."""

    def __init__(self, namespaces: Iterable[Namespace] = STANDARD_NAMESPACES) -> None:
        self.namespaces = tuple(namespaces)
        self._by_code: dict[str, Namespace] = {}
        self._by_numeric_id: dict[int, Namespace] = {}
        for namespace in self.namespaces:
            if self._by_code.setdefault(namespace.code.casefold(), namespace) is not namespace:
                raise ValueError(f"namespace code {namespace.code!r} is given twice (codes ignore case)")
            numeric_id = namespace.numeric_id
            if numeric_id is not None and self._by_numeric_id.setdefault(numeric_id, namespace) is not namespace:
                raise ValueError(f"namespace numeric id {numeric_id} is given twice")
        for namespace in self.namespaces:
            if namespace.hash_of is not None and self.resolve(namespace.hash_of) is None:
                raise ValueError(f"namespace {namespace.code} hash_of names no configured namespace")

    def resolve(self, key: str) -> Namespace | None:
        """The namespace an ``identityMap`` key names: a code in any case, or ``<URL prefix><numeric id>``."""
        namespace = self._by_code.get(key.casefold())
        if namespace is None and key.startswith(NAMESPACE_URL_PREFIX):
            number = key[len(NAMESPACE_URL_PREFIX) :]
            if _NUMERIC_ID.fullmatch(number):
                namespace = self._by_numeric_id.get(int(number))
        return namespace


DEFAULT_IDENTITY_FIELDS: Mapping[str, str] = types.MappingProxyType(
    # The identity fields of the built-in Profile schema's Personal Contact Details field group.
    {"personalEmail.address": "Email", "mobilePhone.number": "Phone", "homePhone.number": "Phone"}
)


@dataclasses.dataclass(frozen=True, kw_only=True)
class IdentityRules:
    """How ids are found and judged: identity fields, blocked values and patterns, phone region, length limits.

    ``blocked_values`` add to :data:`ALWAYS_BLOCKED` and, like them, match the trimmed id ignoring case;
    ``blocked_patterns`` are regular expressions that block an id they match in full (trimmed, ignoring case).
    """

    # A plain dict: rules travel pickled inside DoFns, and the read-only view does not pickle.
    fields: Mapping[str, str] = dataclasses.field(default_factory=lambda: dict(DEFAULT_IDENTITY_FIELDS))
    blocked_values: tuple[str, ...] = ()
    blocked_patterns: tuple[str, ...] = ()
    phone_region: str = "US"
    max_id_length: int = 1024
    ecid_length: int = 38
    _blocked: frozenset[str] = dataclasses.field(init=False, repr=False, compare=False)
    _patterns: tuple[re.Pattern[str], ...] = dataclasses.field(init=False, repr=False, compare=False)
    _field_paths: tuple[tuple[str, tuple[str, ...], str], ...] = dataclasses.field(
        init=False, repr=False, compare=False
    )
    _identities: dict[tuple[NamespaceRegistry, str, str], Identity] = dataclasses.field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        if self.phone_region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"phone_region {self.phone_region!r} is not a region code phonenumbers knows (e.g. US)")
        patterns = []
        for pattern in self.blocked_patterns:
            try:
                patterns.append(re.compile(pattern, re.IGNORECASE))
            except re.error as error:
                raise ValueError(f"blocked pattern {pattern!r} is not a regular expression: {error}") from None
        # Frozen, yet the derived lookups are built once here rather than on every id.
        object.__setattr__(self, "_patterns", tuple(patterns))
        blocked = ALWAYS_BLOCKED | {value.strip().lower() for value in self.blocked_values}
        object.__setattr__(self, "_blocked", frozenset(blocked))
        field_paths = tuple((path, tuple(path.split(".")), code) for path, code in self.fields.items())
        object.__setattr__(self, "_field_paths", field_paths)
        object.__setattr__(self, "_identities", {})

    def __getstate__(self) -> dict[str, Any]:
        # Rules travel pickled into workers: without the identities remembered (and the namespaces they hold).
        return {**self.__dict__, "_identities": {}}

    def is_blocked(self, trimmed_id: str) -> bool:
        # Most configurations have no pattern: looking first spares making a generator for every id.
        return trimmed_id.lower() in self._blocked or (
            bool(self._patterns) and any(pattern.fullmatch(trimmed_id) for pattern in self._patterns)
        )


@dataclasses.dataclass(frozen=True)
class Rejection:
    """An identity left out of the graph: the namespace key as the record gave it, the id as given, and why."""

    namespace_key: str
    raw_id: str
    code: str
    message: str


class Extraction(NamedTuple):
    """A record's identities, normalised, deduplicated and sorted, and one rejection per item left out (a NamedTuple:
    one is made for every record, in C)."""

    identities: tuple[Identity, ...]
    rejections: tuple[Rejection, ...]


def extract_identities(entity: Mapping[str, Any], namespaces: NamespaceRegistry, rules: IdentityRules) -> Extraction:
    """Every identity of ``identityMap`` and of the identity fields, each normalised or rejected."""
    identities: set[Identity] = set()
    rejections: list[Rejection] = []
    # A person's ids come back with every record they send: each is normalised once, then remembered.
    remembered = rules._identities
    for key, raw_id, field in _candidates(entity, rules):
        identity = remembered.get((namespaces, key, raw_id)) if isinstance(raw_id, str) else None
        if identity is not None:
            identities.add(identity)
            continue
        try:
            identity = _identity(key, raw_id, namespaces, rules)
        except _Rejected as rejected:
            code, reason = rejected.args
            source = field or f"{IDENTITY_MAP}.{key}"
            rejections.append(
                Rejection(key, raw_id if isinstance(raw_id, str) else repr(raw_id), code, f"{source}: {reason}")
            )
            continue
        identities.add(identity)
        if len(remembered) == IDENTITY_CACHE_SIZE:
            remembered.clear()
        remembered[(namespaces, key, raw_id)] = identity
    return Extraction(tuple(sorted(identities)), tuple(rejections))


# A dict first: entities are decoded JSON, and a check against the Mapping ABC alone costs several times more.
_MAPPINGS = (dict, Mapping)


class _Rejected(Exception):
    """Raised with (code, reason) by the checks below and turned into a :class:`Rejection` at once, its message the
    reason after where the id was found (made only then: most ids pass)."""


class _NotAnItem:
    """Stands for an ``identityMap`` entry or item of the wrong shape, so that it is rejected rather than read."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _candidates(entity: Mapping[str, Any], rules: IdentityRules) -> Iterator[tuple[str, Any, str]]:
    """(namespace key, id as found, where it was found) for every identity the record offers; where is ``""`` for an
    item of ``identityMap`` (``identityMap.<key>``)."""
    identity_map = entity.get(IDENTITY_MAP)
    if isinstance(identity_map, _MAPPINGS):
        for key, items in identity_map.items():
            # Validation lets through only lists of {id, ...} objects; extraction still never trusts the shape.
            if not isinstance(items, list):
                yield str(key), _NotAnItem(items), ""
                continue
            for item in items:
                yield str(key), item.get("id") if isinstance(item, _MAPPINGS) else _NotAnItem(item), ""
    elif identity_map is not None:
        yield "", _NotAnItem(identity_map), IDENTITY_MAP
    for path, names, code in rules._field_paths:
        value: Any = entity
        for name in names:
            value = value.get(name) if isinstance(value, _MAPPINGS) else None
            if value is None:
                break
        if value is not None:
            yield code, value, path


def _identity(key: str, raw_id: Any, namespaces: NamespaceRegistry, rules: IdentityRules) -> Identity:
    if not isinstance(raw_id, str):
        raise _Rejected(MALFORMED, "an identity id is a string, in an item {id, authenticatedState, primary}")
    namespace = namespaces.resolve(key)
    if namespace is None:
        raise _Rejected(UNKNOWN_NAMESPACE, f"{key!r} is not a configured namespace")
    trimmed = raw_id.strip()
    # Length first: it bounds the work the patterns and the phone parser do on hostile input.
    if len(trimmed) > rules.max_id_length:
        raise _Rejected(TOO_LONG, f"{len(trimmed)} characters; at most {rules.max_id_length}")
    if rules.is_blocked(trimmed):
        raise _Rejected(BLOCKED, f"{trimmed!r} is a blocked value")
    return Identity(namespace.code, _normalised(namespace, trimmed, rules))


def _normalised(namespace: Namespace, trimmed: str, rules: IdentityRules) -> str:
    if namespace.type == "hashed":
        if not _SHA256_HEX.fullmatch(trimmed):
            raise _Rejected(HASH_NOT_SHA256, f"{namespace.code} holds a SHA-256 as 64 hexadecimal characters")
        return trimmed.lower()
    kind = namespace.code.casefold()
    if kind == "email":
        local, at, domain = trimmed.lower().partition("@")
        if not (local and at and domain) or "@" in domain:
            raise _Rejected(INVALID_EMAIL, "an e-mail address has one '@' between a local part and a domain")
        return f"{local}@{domain}"
    if kind == "phone":
        e164, problem = phone_normal_form(trimmed, rules.phone_region)
        if problem:
            raise _Rejected(INVALID_PHONE, problem)
        return e164
    if kind == "ecid" and not (len(trimmed) == rules.ecid_length and _NUMERIC_ID.fullmatch(trimmed)):
        raise _Rejected(ECID_LENGTH, f"an ECID is exactly {rules.ecid_length} digits")
    return trimmed


@functools.lru_cache(maxsize=PHONE_CACHE_SIZE)
def phone_normal_form(trimmed: str, region: str) -> tuple[str, str]:
    """A phone number's E.164 form and ``""``, or ``""`` and why it is no phone number; remembered per raw value,
    because a parse costs tens of microseconds and a person's number comes back with every event they send."""
    try:
        number = phonenumbers.parse(trimmed, region)
    except phonenumbers.NumberParseException as error:
        return "", f"not a phone number: {error}"
    # Possible (right length for its country), not "valid": validity follows the library's allocation metadata,
    # which changes between releases, and an identity's normal form must not.
    if not phonenumbers.is_possible_number(number):
        return "", f"not a possible phone number (default region {region})"
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), ""


def record_time_us(record_entity: Mapping[str, Any], schema_class_id: str, ingest_time_us: int) -> int:
    """The time rules order a record by (README, "Linking rules, in order"): an event's ``timestamp``, a record's
    ``extSourceSystemAudit.lastUpdatedDate``, else the ingestion time."""
    if schema_class_id == EXPERIENCE_EVENT_CLASS:
        stated = record_entity.get("timestamp")
    else:
        audit = record_entity.get("extSourceSystemAudit")
        stated = audit.get("lastUpdatedDate") if isinstance(audit, Mapping) else None
    stated_us = rfc3339_us(stated) if isinstance(stated, str) else None
    return ingest_time_us if stated_us is None else stated_us
