"""The profile store on Redis: one server that every worker of a cluster shares.

Opened by :func:`~stores.opening.open_profile_store` from ``redis://host:port/db``. Each call but an erase is one
round trip: a
read of fragments, a write and each lookup run one Lua script (``EVALSHA``; ``EVAL`` when the server has lost its
script cache), so a write is atomic; it checks the delta names and bases of the fragments it expects (the SHA-1 of a
base it replaces) before it writes anything. Names and documents are stored as they are, under ``prefix``
(``ps:pf:``): ``f:<fragment key>`` (the base), ``d:<fragment key>`` (a hash of the deltas by name),
``v:<person>``, ``i:<identity key>`` (its person), ``r:<person>`` (the person that absorbed it) and ``a:<person>``
(the persons redirected to it). A write drops views and index entries first and then puts; redirects are one step
long, so a lookup follows at most one. A store of the layout before deltas (bases only) is read as it is. An erase
(:meth:`RedisProfileStore.erase`) finds with ``SCAN`` what no key of the request names, then deletes in one script.

Why scripts: docs/decisions/0017-one-lua-script-per-redis-store-call.md; redirects:
docs/decisions/0020-redirects-are-one-step-long.md.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import redis

from profiles.writer import ProfileWrite, ProfileWriteConflict, StoredFragment, delta_id
from stores.errors import StoreUnavailableError
from stores.identity_redis import (
    CLIENT_TIMEOUTS,
    KEYS_PER_SCAN,
    is_unreachable,
    keys_starting,
    rewrite_persisted_copies,
)
from stores.profiles import ProfileStore, changes_nothing

# ARGV[1]: the prefix. The lookups resolve a person through its redirect, if any, to the view.
_RESOLVE = r"""
local prefix = ARGV[1]
local function view_of(person)
  local target = redis.call('GET', prefix .. 'r:' .. person) or person
  return redis.call('GET', prefix .. 'v:' .. target)
end
"""
# ARGV[2]: the person.
_VIEW_BY_PERSON = _RESOLVE + "return view_of(ARGV[2])\n"
# ARGV[2]: the identity key.
_VIEW_BY_IDENTITY = (
    _RESOLVE
    + r"""
local person = redis.call('GET', prefix .. 'i:' .. ARGV[2])
if not person then return false end
return view_of(person)
"""
)
# ARGV[2..]: fragment keys; for each, whether it has a base, the base, and its deltas as (name, doc) pairs.
_FRAGMENTS = r"""
local prefix, found = ARGV[1], {}
for i = 2, #ARGV do
  local base = redis.call('GET', prefix .. 'f:' .. ARGV[i])
  local stored = {base and 1 or 0, base or ''}
  for _, item in ipairs(redis.call('HGETALL', prefix .. 'd:' .. ARGV[i])) do stored[#stored + 1] = item end
  found[#found + 1] = stored
end
return found
"""
# Shared by the scripts whose ARGV[2..] are sections, each its length and then its items.
_SECTIONS = r"""
local prefix = ARGV[1]
local position = 2
local function section(width)
  local items, count = {}, tonumber(ARGV[position])
  for i = position + 1, position + count * width do items[#items + 1] = ARGV[i] end
  position = position + 1 + count * width
  return items
end
local function key(kind, name) return prefix .. kind .. ':' .. name end
-- Drops the person's redirect, if it has one; whether it had.
local function unredirect(person)
  local target = redis.call('GET', key('r', person))
  if not target then return false end
  redis.call('SREM', key('a', target), person)
  redis.call('DEL', key('r', person))
  return true
end
"""
# ARGV[2..]: nine sections: (fragment key, base, delta names) triples, checked
# before anything is written (a mismatch answers "conflict"): the base is "" for none, "+" for any, or the SHA-1 of
# the bytes, the names sorted and joined by ","; the views to drop, the identities to unindex; (fragment key, name)
# pairs of deltas to drop; (name, value) pairs of fragment bases; (fragment key, name, doc) triples of deltas to
# append; (name, value) pairs of views, index entries and redirects.
_WRITE = (
    _SECTIONS
    + r"""
local function put(kind, items)
  for i = 1, #items, 2 do redis.call('SET', key(kind, items[i]), items[i + 1]) end
end

local expected = section(3)
for i = 1, #expected, 3 do
  local held = redis.call('GET', key('f', expected[i]))
  local base = ''
  if held then base = expected[i + 1] == '+' and '+' or redis.sha1hex(held) end
  local names = redis.call('HKEYS', key('d', expected[i]))
  table.sort(names)
  if base ~= expected[i + 1] or table.concat(names, ',') ~= expected[i + 2] then return 'conflict' end
end
local drop_views, unindex, drop_deltas, fragments = section(1), section(1), section(2), section(2)
local deltas, views, index, redirects = section(3), section(2), section(2), section(2)
for _, person in ipairs(drop_views) do redis.call('DEL', key('v', person)) end
for _, identity in ipairs(unindex) do redis.call('DEL', key('i', identity)) end
for i = 1, #drop_deltas, 2 do redis.call('HDEL', key('d', drop_deltas[i]), drop_deltas[i + 1]) end
put('f', fragments)
for i = 1, #deltas, 3 do redis.call('HSET', key('d', deltas[i]), deltas[i + 1], deltas[i + 2]) end
put('v', views)
put('i', index)
for i = 1, #views, 2 do unredirect(views[i]) end

-- In order: each redirect resolves against the ones before it.
for i = 1, #redirects, 2 do
  local retired, survivor = redirects[i], redirects[i + 1]
  if retired ~= survivor then
    local target = redis.call('GET', key('r', survivor)) or survivor
    if target == retired then
      -- The retired person had absorbed the survivor earlier (merged one way, split, merged the other way now):
      -- the newer redirect wins.
      unredirect(survivor)
      target = survivor
    end
    unredirect(retired)
    local moving = redis.call('SMEMBERS', key('a', retired))
    moving[#moving + 1] = retired
    for _, person in ipairs(moving) do
      redis.call('SET', key('r', person), target)
      redis.call('SADD', key('a', target), person)
    end
    redis.call('DEL', key('a', retired))
  end
end
"""
)
# ARGV[2..]: four sections: the persons; the identity keys; identity keys found indexed to one of the persons (each
# deleted if it still is); fragment keys. Returns the counts of views, fragments, index entries and redirects deleted.
_ERASE = (
    _SECTIONS
    + r"""
local persons, identities, indexed, fragments = section(1), section(1), section(1), section(1)
local erased = {}
for _, person in ipairs(persons) do erased[person] = true end
local views, index, redirects, deleted = 0, 0, 0, 0
for _, person in ipairs(persons) do
  views = views + redis.call('DEL', key('v', person))
  if unredirect(person) then redirects = redirects + 1 end
  for _, retired in ipairs(redis.call('SMEMBERS', key('a', person))) do
    redirects = redirects + redis.call('DEL', key('r', retired))
  end
  redis.call('DEL', key('a', person))
end
for _, identity in ipairs(identities) do index = index + redis.call('DEL', key('i', identity)) end
for _, identity in ipairs(indexed) do
  local person = redis.call('GET', key('i', identity))
  if person and erased[person] then index = index + redis.call('DEL', key('i', identity)) end
end
for _, fragment in ipairs(fragments) do
  if redis.call('DEL', key('f', fragment), key('d', fragment)) > 0 then deleted = deleted + 1 end
end
return {views, deleted, index, redirects}
"""
)
_SCRIPTS = (_FRAGMENTS, _WRITE, _VIEW_BY_IDENTITY, _VIEW_BY_PERSON, _ERASE)


class RedisProfileStore(ProfileStore):
    """Fragments, views, the identity index and redirects on a Redis server, under keys that start with ``prefix``."""

    def __init__(self, url: str, *, prefix: str = "ps:pf:") -> None:
        self._client = redis.Redis.from_url(url, **CLIENT_TIMEOUTS)
        self._prefix = prefix
        self._scripts = {source: self._client.register_script(source) for source in _SCRIPTS}
        # Loaded now so that every call is one EVALSHA, and so that an unreachable server is found at once.
        try:
            for source in _SCRIPTS:
                self._client.script_load(source)
        except redis.RedisError as error:
            raise StoreUnavailableError(f"profile store {url} cannot be reached: {error}") from None

    def fragments(self, keys: Iterable[str]) -> dict[str, StoredFragment]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        found: dict[str, StoredFragment] = {}
        for key, (has_base, base, *deltas) in zip(wanted, self._run(_FRAGMENTS, wanted), strict=True):
            if has_base or deltas:
                names = [name.decode() for name in deltas[::2]]
                found[key] = StoredFragment(base if has_base else None, dict(zip(names, deltas[1::2], strict=True)))
        return found

    def write(self, change: ProfileWrite) -> None:
        if changes_nothing(change):
            return
        expected = [
            (
                key,
                _base_check(stored, replaces=key in change.fragments),
                ",".join(sorted(stored.deltas if stored else ())),
            )
            for key, stored in change.expected.items()
        ]
        drop_deltas = [(key, name) for key in change.fragments for name in (change.expected.get(key) or _ABSENT).deltas]
        deltas = [(key, delta_id(doc), doc) for key, doc in change.deltas.items()]
        args: list[Any] = [*_rows(expected), *_names(change.drop_views), *_names(change.unindex), *_rows(drop_deltas)]
        args += _rows(change.fragments.items())
        args += _rows(deltas)
        for pairs in (change.views, change.index, change.redirects):
            args += _rows(pairs.items())
        if self._run(_WRITE, args) == b"conflict":
            raise ProfileWriteConflict(f"{len(expected)} fragments changed since they were read")

    def view_by_identity(self, identity_key: str) -> bytes | None:
        return self._run(_VIEW_BY_IDENTITY, [identity_key])

    def view_by_person(self, person_id: str) -> bytes | None:
        return self._run(_VIEW_BY_PERSON, [person_id])

    def erase(self, person_ids: Iterable[str], identity_keys: Iterable[str]) -> dict[str, int]:
        """See :meth:`ProfileStore.erase`. What to delete that no key names is found first, with ``SCAN``: the
        fragments of the identities, and the index entries pointing to the persons (the index is kept by identity
        only: every entry is read, a page at a time); then one script deletes it all, an index entry only if it still
        points to one of the persons. A fragment or index entry written between the two stays. The keys are gone from
        memory at once; the server's files may keep them until rewritten
        (:func:`~stores.identity_redis.rewrite_persisted_copies`, whose counts are added)."""
        persons, keys = list(dict.fromkeys(person_ids)), list(dict.fromkeys(identity_keys))
        fragments: dict[str, None] = {}
        for kind in ("f:", "d:"):
            named = f"{self._prefix}{kind}".encode()
            for key in keys:
                found = keys_starting(self._client, f"{self._prefix}{kind}{key}|")
                fragments.update(dict.fromkeys(name[len(named) :].decode() for name in found))
        args = [*_names(persons), *_names(keys), *_names(self._indexed_to(set(persons))), *_names(list(fragments))]
        views, deleted, index, redirects = self._run(_ERASE, args)
        counts = {"views": views, "fragments": deleted, "index": index, "redirects": redirects}
        return {**counts, **rewrite_persisted_copies(self._client)}

    def retired_into(self, person_ids: Iterable[str]) -> set[str]:
        pipeline = self._client.pipeline(transaction=False)
        for person in person_ids:
            pipeline.smembers(f"{self._prefix}a:{person}")
        return {retired.decode() for members in pipeline.execute() for retired in members}

    def close(self) -> None:
        self._client.close()

    def is_transient(self, error: BaseException) -> bool:
        return is_unreachable(error)

    def _indexed_to(self, persons: set[str]) -> list[str]:
        """The identity keys indexed to any of these persons, read from every index entry, a page at a time."""
        index = f"{self._prefix}i:"
        entries = keys_starting(self._client, index)
        found = []
        while page := list(itertools.islice(entries, KEYS_PER_SCAN)):
            for entry, person in zip(page, self._client.mget(page), strict=True):
                if person is not None and person.decode() in persons:
                    found.append(entry[len(index.encode()) :].decode())
        return found

    def _run(self, source: str, args: Sequence[str | bytes | int]) -> Any:
        # redis-py's Script sends EVALSHA, and loads the script again should the server answer NOSCRIPT.
        return self._scripts[source](args=[self._prefix, *args])


def _names(names: Sequence[str]) -> list[str | bytes | int]:
    return [len(names), *names]


def _rows(rows: Iterable[tuple[str | bytes, ...]]) -> list[Any]:
    """A section of rows of one width: their count, then their items."""
    listed = list(rows)
    return [len(listed), *(item for row in listed for item in row)]


_ABSENT = StoredFragment(None, {})


def _base_check(stored: StoredFragment | None, *, replaces: bool) -> str:
    """What the write script checks of an expected fragment's base: "" none, "+" any, or the SHA-1 of its bytes."""
    if stored is None or stored.base is None:
        return ""
    return hashlib.sha1(stored.base).hexdigest() if replaces else "+"
