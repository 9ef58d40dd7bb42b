"""The profile store on Redis: one server that every worker of a cluster shares.

Opened by :func:`~stores.opening.open_profile_store` from ``redis://host:port/db``. Each call is one round trip:
fragments are read with one ``MGET``, and a write and each lookup run one Lua script (``EVALSHA``; ``EVAL`` when the
server has lost its script cache), so a write is atomic; it checks the SHA-1 of the fragments it expects before it
writes anything. Names and documents are stored as they are, under ``prefix`` (``ps:pf:``): ``f:<fragment key>``,
``v:<person>``, ``i:<identity key>`` (its person), ``r:<person>`` (the person that absorbed it) and ``a:<person>``
(the persons redirected to it). A write drops views and index entries first and then puts; redirects are one step
long, so a lookup follows at most one.

Why scripts: docs/decisions/0017-one-lua-script-per-redis-store-call.md; redirects:
docs/decisions/0020-redirects-are-one-step-long.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

import redis

from profiles.writer import ProfileWrite, ProfileWriteConflict
from stores.errors import StoreUnavailableError
from stores.identity_redis import CLIENT_TIMEOUTS, is_unreachable
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
# ARGV[2..]: seven sections, each its length and then its items: (fragment key, SHA-1 of the bytes expected or "" for
# none) pairs, checked before anything is written (a mismatch answers "conflict"); the views to drop, the identities
# to unindex; then (name, value) pairs of fragments, views, index entries and redirects.
_WRITE = r"""
local prefix = ARGV[1]
local position = 2
local function section(width)
  local items, count = {}, tonumber(ARGV[position])
  for i = position + 1, position + count * width do items[#items + 1] = ARGV[i] end
  position = position + 1 + count * width
  return items
end
local function key(kind, name) return prefix .. kind .. ':' .. name end
local function put(kind, items)
  for i = 1, #items, 2 do redis.call('SET', key(kind, items[i]), items[i + 1]) end
end
local function unredirect(person)
  local target = redis.call('GET', key('r', person))
  if target then
    redis.call('SREM', key('a', target), person)
    redis.call('DEL', key('r', person))
  end
end

local expected = section(2)
for i = 1, #expected, 2 do
  local held = redis.call('GET', key('f', expected[i]))
  if (held and redis.sha1hex(held) or '') ~= expected[i + 1] then return 'conflict' end
end
local drop_views, unindex = section(1), section(1)
local fragments, views, index, redirects = section(2), section(2), section(2), section(2)
for _, person in ipairs(drop_views) do redis.call('DEL', key('v', person)) end
for _, identity in ipairs(unindex) do redis.call('DEL', key('i', identity)) end
put('f', fragments)
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
_SCRIPTS = (_WRITE, _VIEW_BY_IDENTITY, _VIEW_BY_PERSON)


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

    def fragments(self, keys: Iterable[str]) -> dict[str, bytes]:
        wanted = list(dict.fromkeys(keys))
        if not wanted:
            return {}
        found = self._client.mget([self._prefix + "f:" + key for key in wanted])
        return {key: doc for key, doc in zip(wanted, found, strict=True) if doc is not None}

    def write(self, change: ProfileWrite) -> None:
        if changes_nothing(change):
            return
        expected = {key: "" if doc is None else hashlib.sha1(doc).hexdigest() for key, doc in change.expected.items()}
        args: list[str | bytes | int] = [*_pairs(expected), *_names(change.drop_views), *_names(change.unindex)]
        for pairs in (change.fragments, change.views, change.index, change.redirects):
            args += _pairs(pairs)
        if self._run(_WRITE, args) == b"conflict":
            raise ProfileWriteConflict(f"{len(expected)} fragments changed since they were read")

    def view_by_identity(self, identity_key: str) -> bytes | None:
        return self._run(_VIEW_BY_IDENTITY, [identity_key])

    def view_by_person(self, person_id: str) -> bytes | None:
        return self._run(_VIEW_BY_PERSON, [person_id])

    def close(self) -> None:
        self._client.close()

    def is_transient(self, error: BaseException) -> bool:
        return is_unreachable(error)

    def _run(self, source: str, args: Sequence[str | bytes | int]) -> bytes | None:
        # redis-py's Script sends EVALSHA, and loads the script again should the server answer NOSCRIPT.
        return self._scripts[source](args=[self._prefix, *args])


def _names(names: Sequence[str]) -> list[str | bytes | int]:
    return [len(names), *names]


def _pairs(pairs: Mapping[str, str] | Mapping[str, bytes]) -> list[str | bytes | int]:
    flat: list[str | bytes | int] = [len(pairs)]
    for name, value in pairs.items():
        flat += [name, value]
    return flat
