"""Field names: XDM compatibility names, runtime names and storage names.

XDM's JSON Schemas name fields in *compatibility* form (``@id``, ``xdm:timestamp``, ``repo:createDate``); records,
JSON pointers and lake columns use *runtime* names, the form the reference platform ingests:

=====================  =====================  ==============================================
compatibility name     runtime name           rule
=====================  =====================  ==============================================
``@id``                ``_id``                the JSON-LD id
``xdm:timestamp``      ``timestamp``          the ``xdm:`` prefix is dropped
``repo:createDate``    ``repo:createDate``    other prefixes are kept
=====================  =====================  ==============================================

Avro names must match ``[A-Za-z_][A-Za-z0-9_]*`` and Parquet readers (Hive, Spark) want the same, so a runtime name
outside that alphabet, or one holding ``__``, is stored under a *storage* name: every character that is not an ASCII
letter or digit (``_`` included) becomes ``__`` followed by its code point as two lower-case hex digits (six, after
``__u``, above U+00FF), and a leading digit is escaped the same way. ``internal-site-search`` is stored as
``internal__2dsite__2dsearch``, ``@type`` as ``__40type``, ``repo:createDate`` as ``repo__3acreateDate``. The rule is
reversible: a name that contains ``__`` is an escaped name, and every ``_`` in it starts an escape; any other name is
stored as it is. The empty name, which no escape can spell, is stored as ``__`` alone.
"""

from __future__ import annotations

import functools
import re

_PLAIN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPE = re.compile(r"__(u[0-9a-f]{6}|[0-9a-f]{2})")
_EMPTY_NAME = "__"


@functools.lru_cache(maxsize=65536)
def runtime_name(name: str) -> str:
    """The runtime name of a compatibility (or already runtime) name."""
    if name == "@id":
        return "_id"
    if name.startswith("xdm:"):
        return name[4:]
    return name


@functools.lru_cache(maxsize=65536)
def storage_name(name: str) -> str:
    """The Avro- and Parquet-safe name a runtime name is stored under."""
    if _PLAIN.fullmatch(name) and "__" not in name:
        return name
    if not name:
        return _EMPTY_NAME
    return "".join(_escape(char) if _needs_escape(char, position) else char for position, char in enumerate(name))


@functools.lru_cache(maxsize=65536)
def name_from_storage(stored: str) -> str:
    """The runtime name a storage name stands for (the inverse of :func:`storage_name`)."""
    if "__" not in stored:
        return stored
    if stored == _EMPTY_NAME:
        return ""
    return _ESCAPE.sub(lambda match: chr(int(match.group(1).lstrip("u"), 16)), stored)


def _needs_escape(char: str, position: int) -> bool:
    if char.isascii() and char.isalpha():
        return False
    if char.isascii() and char.isdigit():
        return position == 0
    return True


def _escape(char: str) -> str:
    code = ord(char)
    return f"__{code:02x}" if code <= 0xFF else f"__u{code:06x}"


def pointer_token(name: str) -> str:
    """``name`` escaped as one JSON pointer reference token (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")
