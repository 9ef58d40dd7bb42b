"""The identity store on Redis: one server that every worker of a cluster shares.

In: the facts of a batch of observations (from :meth:`IdentityStore.observe
<stores.identity.IdentityStore.observe>`) or identities to read. Out: the facts of their raw components.
Opened by :func:`~stores.opening.open_identity_store` from ``redis://host:port/db``.

Every call runs one Lua script (``EVALSHA``, or ``EVAL`` when the server has lost its script cache), so it is atomic
and one round trip, on a standalone server (a Redis Cluster would need every key of a call in one slot). Keys live
under ``prefix`` (``ps:id:``): ``component``, ``next``, ``facts:<component>``, ``log:<message id>`` (expiring after
the retention) and ``logseq``; their layout and byte encodings (stamps compare as bytes, never with Lua's
locale-dependent ``<``) are docs/decisions/0017-one-lua-script-per-redis-store-call.md's.

An erase (:meth:`RedisIdentityStore.erase`) reads the log with ``SCAN`` to find the entries to drop, then deletes them
and the facts in one script, and starts rewriting the server's files (:func:`rewrite_persisted_copies`).
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import redis

from identity.model import GraphFacts, Identity, LoggedBatch, Stamp
from stores.errors import StoreUnavailableError
from stores.identity import CHANGE_LOG_RETENTION_S, FactsBuilder, IdentityStore, logs_any

_TIME_OFFSET = 1 << 63
# A server that stops answering (stopped, swapping, overloaded) is an outage after this long rather than a hang.
CLIENT_TIMEOUTS = {"socket_timeout": 10.0, "socket_connect_timeout": 5.0}
# How long an erase waits for a rewrite of the append-only file that began before it (an identity store's erase, just
# before the profile store's on the same server), to start its own.
AOF_REWRITE_WAIT_S = 30.0
# Keys a SCAN step looks at, and log entries' keys read per request, when an erase looks for what to delete.
KEYS_PER_SCAN = 1000


def is_unreachable(error: BaseException) -> bool:
    """Whether a Redis error says the server cannot be reached for now: refused, timed out, loading its data."""
    return isinstance(error, (redis.ConnectionError, redis.TimeoutError))


def keys_starting(client: redis.Redis, prefix: str) -> Iterator[bytes]:
    """Every key that starts with ``prefix``, found with ``SCAN``, a page at a time: the server serves other clients
    in between, and a key added or deleted meanwhile may be found or not."""
    literal = re.sub(r"([*?\[\]\\])", r"\\\1", prefix)
    return client.scan_iter(match=literal.encode() + b"*", count=KEYS_PER_SCAN)


def rewrite_persisted_copies(client: redis.Redis) -> dict[str, int]:
    """Starts rewriting the server's files, which keep deleted keys until then: the append-only file
    (``BGREWRITEAOF``) when ``appendonly`` is on, the snapshot (``BGSAVE``) when ``save`` is configured. Returns
    ``{"aof_rewrite": 0|1, "snapshot": 0|1}``, 1 for each rewrite started.

    A rewrite of the append-only file that is running began before the keys were deleted, and the file it makes
    holds them (and their deletion after): a new one starts once it ends, waited for up to
    :data:`AOF_REWRITE_WAIT_S` (0 if it is still running then). Replicas and copies of the files elsewhere are beyond
    the store's reach; so is a server that refuses ``CONFIG`` (managed services often do), which counts as neither."""
    started = {"aof_rewrite": 0, "snapshot": 0}
    try:
        config = {**client.config_get("appendonly"), **client.config_get("save")}
        if config.get("appendonly") == "yes" and _no_aof_rewrite_running(client):
            client.bgrewriteaof()
            started["aof_rewrite"] = 1
        if config.get("save"):
            client.bgsave(schedule=True)
            started["snapshot"] = 1
    except redis.ResponseError:
        pass
    return started


def _no_aof_rewrite_running(client: redis.Redis) -> bool:
    """Waits up to :data:`AOF_REWRITE_WAIT_S` for a running rewrite of the append-only file to end; whether none
    runs."""
    deadline = time.monotonic() + AOF_REWRITE_WAIT_S
    while client.info("persistence")["aof_rewrite_in_progress"]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# Shared by all scripts. KEYS: the component hash, the component counter; ARGV[1]: the prefix.
_READ_COMPONENTS = r"""
local component_of, last_component = KEYS[1], KEYS[2]
local prefix = ARGV[1]

local function facts_key(component) return prefix .. 'facts:' .. component end

-- unpack() is bounded by Lua's C stack, so a command with many arguments goes in chunks of whole entries.
local function call_in_chunks(command, key, items, width)
  local replies, step = {}, 1000 * width
  for first = 1, #items, step do
    local reply = redis.call(command, key, unpack(items, first, math.min(first + step - 1, #items)))
    if type(reply) == 'table' then
      for _, item in ipairs(reply) do replies[#replies + 1] = item end
    end
  end
  return replies
end

-- The root of x's tree in a union-find forest (parent: node -> its parent), halving the path to it.
local function find_root(parent, x)
  local top = x
  while parent[top] do top = parent[top] end
  while parent[x] do
    local up = parent[x]
    parent[x] = top
    x = up
  end
  return top
end

local function link_stamps(value)
  local colon = string.find(value, ':', 1, true)
  local length = tonumber(string.sub(value, 1, colon - 1))
  return string.sub(value, colon + 1, colon + length), string.sub(value, colon + length + 1)
end

-- The component of each identity (false when unknown); each component's fields (flat) and members; the stored
-- value of every field; and the components' facts: the JSON list of all their fields and values, one after the
-- other. One string, because a reply of one value is read far faster than one of thousands.
local function read(identities)
  local component = call_in_chunks('HMGET', component_of, identities, 1)
  local fields, members, stored, facts = {}, {}, {}, {}
  for _, c in ipairs(component) do
    if c and not fields[c] then
      fields[c] = redis.call('HGETALL', facts_key(c))
      members[c] = {}
      for j = 1, #fields[c], 2 do
        local field, value = fields[c][j], fields[c][j + 1]
        stored[field] = value
        if not string.find(field, '\t', 1, true) then members[c][#members[c] + 1] = field end
        facts[#facts + 1] = field
        facts[#facts + 1] = value
      end
    end
  end
  -- cjson writes an empty table as an object.
  return component, fields, members, stored, #facts > 0 and cjson.encode(facts) or '[]'
end
"""

# ARGV[2..]: the identities to read.
_FACTS_OF = (
    _READ_COMPONENTS
    + r"""
local identities = {}
for i = 2, #ARGV do identities[#identities + 1] = ARGV[i] end
local _, _, _, _, facts = read(identities)
return facts
"""
)

# ARGV[2..6]: the cause's message id ('' to log nothing), its time (16 hex digits), the batch's facts as logged, the
# log's retention in seconds, and d, the entries to drop; then d pairs (message id, entry number). Then n, the
# batch's identities; n pairs (identity, its earliest stamp in the batch); then for each link the positions (1..n) of
# its a and b, and its first and last stamps in the batch. Returns the facts from before and the entry number
# logged (0: none).
_OBSERVE = (
    _READ_COMPONENTS
    + r"""
local function stamp_less(x, y)
  for i = 1, math.min(#x, #y) do
    local p, q = string.byte(x, i), string.byte(y, i)
    if p ~= q then return p < q end
  end
  return #x < #y
end

local cause, cause_time, logged_batch, retention = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local dropped = tonumber(ARGV[6])
for i = 7, 6 + 2 * dropped, 2 do redis.call('HDEL', prefix .. 'log:' .. ARGV[i], ARGV[i + 1]) end
local base = 7 + 2 * dropped
local n = tonumber(ARGV[base])
local identities, stamps = {}, {}
for i = 1, n do
  identities[i], stamps[i] = ARGV[base - 1 + 2 * i], ARGV[base + 2 * i]
end
local first_link = base + 1 + 2 * n
local component, fields, members, stored, before = read(identities)

-- Union-find over the batch's links. A node is a stored component, or an identity new to the store.
local parent = {}
local function node(i)
  if component[i] then return 'c' .. component[i] end
  return 'i' .. i
end
local function root(x) return find_root(parent, x) end
for position = first_link, #ARGV, 4 do
  local a, b = root(node(tonumber(ARGV[position]))), root(node(tonumber(ARGV[position + 1])))
  if a ~= b then parent[a] = b end
end

local groups, group_list = {}, {}
for i = 1, n do
  local r = root(node(i))
  local group = groups[r]
  if not group then
    group = {components = {}, listed = {}, new = {}}
    groups[r] = group
    group_list[#group_list + 1] = group
  end
  local c = component[i]
  if not c then
    group.new[#group.new + 1] = identities[i]
  elseif not group.listed[c] then
    group.listed[c] = true
    group.components[#group.components + 1] = c
  end
end

-- Each group ends in one component: its largest stored one (ties: the lowest id), so a fact moves at most log2(n)
-- times; or a new one.
for _, group in ipairs(group_list) do
  local target = group.components[1]
  for _, c in ipairs(group.components) do
    if #fields[c] > #fields[target] or (#fields[c] == #fields[target] and tonumber(c) < tonumber(target)) then
      target = c
    end
  end
  target = target or tostring(redis.call('INCR', last_component))
  local placed = {}
  for _, c in ipairs(group.components) do
    if c ~= target then
      for _, member in ipairs(members[c]) do
        placed[#placed + 1] = member
        placed[#placed + 1] = target
      end
      call_in_chunks('HSET', facts_key(target), fields[c], 2)
      redis.call('DEL', facts_key(c))
    end
  end
  for _, identity in ipairs(group.new) do
    placed[#placed + 1] = identity
    placed[#placed + 1] = target
  end
  call_in_chunks('HSET', component_of, placed, 2)
  group.target = target
end

-- The batch's facts that are new or move a stamp, by the key of the component they end in.
local writes = {}
local function write(i, field, value)
  local key = facts_key(groups[root(node(i))].target)
  writes[key] = writes[key] or {}
  table.insert(writes[key], field)
  table.insert(writes[key], value)
end
for i = 1, n do
  local known = stored[identities[i]]
  if not known or stamp_less(stamps[i], known) then write(i, identities[i], stamps[i]) end
end
for position = first_link, #ARGV, 4 do
  local a, b = tonumber(ARGV[position]), tonumber(ARGV[position + 1])
  local first, last = ARGV[position + 2], ARGV[position + 3]
  local field = identities[a] .. '\t' .. identities[b]
  local known = stored[field]
  if known then
    local known_first, known_last = link_stamps(known)
    if stamp_less(known_first, first) then first = known_first end
    if stamp_less(last, known_last) then last = known_last end
  end
  local value = #first .. ':' .. first .. last
  if value ~= known then write(a, field, value) end
end
local entry = 0
if cause ~= '' and next(writes) then
  entry = redis.call('INCR', prefix .. 'logseq')
  local log = prefix .. 'log:' .. cause
  redis.call('HSET', log, entry, cause_time .. #before .. ':' .. before .. logged_batch)
  redis.call('EXPIRE', log, retention)
end
for key, items in pairs(writes) do call_in_chunks('HSET', key, items, 2) end

return {before, entry}
"""
)


# ARGV[2]: n, the identities to erase; ARGV[3..2+n]: them; then (message id, entry number) pairs of the log entries
# to drop. Deletes the identities' sightings and links; each component they were in keeps its largest remaining
# raw component (ties: the first found) and each other one moves to a component of its own. Returns the counts of
# sightings, links and log entries deleted.
_ERASE = (
    _READ_COMPONENTS
    + r"""
local n = tonumber(ARGV[2])
local identities, erased = {}, {}
for i = 3, 2 + n do
  identities[#identities + 1] = ARGV[i]
  erased[ARGV[i]] = true
end
local entries = 0
for i = 3 + n, #ARGV, 2 do entries = entries + redis.call('HDEL', prefix .. 'log:' .. ARGV[i], ARGV[i + 1]) end

local sightings, links = 0, 0
local component, fields = read(identities)
for c, flat in pairs(fields) do
  local members, stamp, kept, gone, parent = {}, {}, {}, {}, {}
  for j = 1, #flat, 2 do
    local field = flat[j]
    local tab = string.find(field, '	', 1, true)
    if tab then
      local a, b = string.sub(field, 1, tab - 1), string.sub(field, tab + 1)
      if erased[a] or erased[b] then
        gone[#gone + 1] = field
        links = links + 1
      else
        kept[#kept + 1] = {a, field, flat[j + 1]}
        local root_a, root_b = find_root(parent, a), find_root(parent, b)
        if root_a ~= root_b then parent[root_a] = root_b end
      end
    elseif erased[field] then
      gone[#gone + 1] = field
      sightings = sightings + 1
    else
      members[#members + 1] = field
      stamp[field] = flat[j + 1]
    end
  end
  call_in_chunks('HDEL', facts_key(c), gone, 1)

  local parts, part_of = {}, {}
  for _, member in ipairs(members) do
    local r = find_root(parent, member)
    if not part_of[r] then
      part_of[r] = {}
      parts[#parts + 1] = part_of[r]
    end
    table.insert(part_of[r], member)
  end
  local largest = 1
  for p = 2, #parts do
    if #parts[p] > #parts[largest] then largest = p end
  end
  for p, part in ipairs(parts) do
    if p ~= largest then
      local target = tostring(redis.call('INCR', last_component))
      local moved, names, placed, in_part = {}, {}, {}, {}
      for _, member in ipairs(part) do
        in_part[member] = true
        moved[#moved + 1] = member
        moved[#moved + 1] = stamp[member]
        names[#names + 1] = member
        placed[#placed + 1] = member
        placed[#placed + 1] = target
      end
      for _, link in ipairs(kept) do
        if in_part[link[1]] then
          moved[#moved + 1] = link[2]
          moved[#moved + 1] = link[3]
          names[#names + 1] = link[2]
        end
      end
      call_in_chunks('HSET', facts_key(target), moved, 2)
      call_in_chunks('HDEL', facts_key(c), names, 1)
      call_in_chunks('HSET', component_of, placed, 2)
    end
  end
end
call_in_chunks('HDEL', component_of, identities, 1)
return {sightings, links, entries}
"""
)


class RedisIdentityStore(IdentityStore):
    """The identity graph's facts on a Redis server, under keys that start with ``prefix``."""

    def __init__(self, url: str, *, prefix: str = "ps:id:") -> None:
        super().__init__()
        self._client = redis.Redis.from_url(url, **CLIENT_TIMEOUTS)
        self._prefix = prefix
        self._keys = (prefix + "component", prefix + "next")
        # Loaded now so that every call is one EVALSHA, and so that an unreachable server is found at once.
        try:
            self._scripts = {source: self._client.script_load(source) for source in (_OBSERVE, _FACTS_OF, _ERASE)}
        except redis.RedisError as error:
            raise StoreUnavailableError(f"identity store {url} cannot be reached: {error}") from None

    def _add(self, batch: GraphFacts, cause: Stamp | None, discarded: Sequence[str]) -> tuple[GraphFacts, str | None]:
        args: list[Any] = [b"", b"", b""] if cause is None else [cause.message_id, _time_hex(cause), batch.to_bytes()]
        args += [CHANGE_LOG_RETENTION_S, len(discarded)]
        for entry in discarded:
            number, _, message_id = entry.partition(":")
            args += [message_id, number]
        position = {identity: place for place, identity in enumerate(batch.sightings, start=1)}
        args.append(len(position))
        for identity, stamp in batch.sightings.items():
            args += [_identity_bytes(identity), _stamp_bytes(stamp)]
        for (a, b), link in batch.links.items():
            args += [position[a], position[b], _stamp_bytes(link.first), _stamp_bytes(link.last)]
        before, entry = self._run(_OBSERVE, args)
        return _facts(before), f"{entry}:{cause.message_id}" if entry else None

    def logged(self, message_ids: Iterable[str]) -> list[LoggedBatch]:
        wanted = list(dict.fromkeys(message_ids))
        pipeline = self._client.pipeline(transaction=False)
        for message_id in wanted:
            pipeline.hgetall(f"{self._prefix}log:{message_id}".encode())
        found = []
        for message_id, entries in zip(wanted, pipeline.execute(), strict=True):
            for number, value in sorted(entries.items(), key=lambda item: int(item[0])):
                length, _, rest = value[16:].partition(b":")
                before, batch = rest[: int(length)], rest[int(length) :]
                cause = Stamp(int(value[:16], 16) - _TIME_OFFSET, message_id)
                entry = f"{int(number)}:{message_id}"
                found.append(LoggedBatch(entry, cause, _facts(before), GraphFacts.from_bytes(batch)))
        return found

    def facts_of(self, identities: Iterable[Identity]) -> GraphFacts:
        args = [_identity_bytes(identity) for identity in set(identities)]
        return _facts(self._run(_FACTS_OF, args)) if args else GraphFacts.empty()

    def erase(self, identities: Iterable[Identity]) -> dict[str, int]:
        """See :meth:`IdentityStore.erase`. The log entries to drop are found first, with ``SCAN`` (the server is not
        held up by reading the whole log) and read in pages, and dropped in the one script that deletes the facts; an
        entry logged between the two, of a batch that saw one of the identities again, stays, with the identity that
        batch put back. The keys are gone from memory at once; the server's files may keep them until rewritten
        (:func:`rewrite_persisted_copies`, whose counts are added)."""
        erased = set(identities)
        args: list[Any] = [len(erased), *map(_identity_bytes, erased)]
        for batch in self._logged_mentioning(erased):
            number, _, message_id = batch.entry.partition(":")
            args += [message_id, number]
        sightings, links, entries = self._run(_ERASE, args)
        counts = {"identities": sightings, "links": links, "log_entries": entries}
        return {**counts, **rewrite_persisted_copies(self._client)}

    def close(self) -> None:
        self._client.close()

    def is_transient(self, error: BaseException) -> bool:
        return is_unreachable(error)

    def _logged_mentioning(self, identities: set[Identity]) -> list[LoggedBatch]:
        """The logged batches whose facts hold any of these identities."""
        log = self._prefix + "log:"
        keys = keys_starting(self._client, log)
        found = []
        while page := list(itertools.islice(keys, KEYS_PER_SCAN)):
            message_ids = [key[len(log.encode()) :].decode() for key in page]
            found += [batch for batch in self.logged(message_ids) if logs_any(batch, identities)]
        return found

    def _run(self, source: str, args: Sequence[Any]) -> Any:
        try:
            return self._client.evalsha(self._scripts[source], len(self._keys), *self._keys, self._prefix, *args)
        except redis.exceptions.NoScriptError:
            # The server has lost its script cache (a restart, a failover, SCRIPT FLUSH); EVAL caches it again.
            return self._client.eval(source, len(self._keys), *self._keys, self._prefix, *args)


def _identity_bytes(identity: Identity) -> bytes:
    return json.dumps([identity.namespace, identity.id], separators=(",", ":")).encode()


def _stamp_bytes(stamp: Stamp) -> bytes:
    return _time_hex(stamp) + stamp.message_id.encode()


def _time_hex(stamp: Stamp) -> bytes:
    shifted = stamp.time_us + _TIME_OFFSET
    if not 0 <= shifted < 1 << 64:
        raise ValueError(f"time_us {stamp.time_us} is outside the 64-bit range a store keeps")
    return b"%016x" % shifted


def _facts(reply: bytes) -> GraphFacts:
    """Facts from a script's reply: the JSON list of the components' hash fields and values, one after the other."""
    flat = json.loads(reply)
    sightings: list[tuple[str, str]] = []
    links: list[tuple[str, str]] = []
    for field, value in zip(flat[0::2], flat[1::2], strict=True):
        (links if "\t" in field else sightings).append((field, value))
    # Identities are JSON arrays already: one parse reads them all.
    names = json.loads("[" + ",".join(field for field, _ in sightings) + "]")
    name_of = {field: name for (field, _), name in zip(sightings, names, strict=True)}
    builder = FactsBuilder()
    builder.add_sightings(
        (namespace, id_, *_stamp(stamp)) for (_, stamp), (namespace, id_) in zip(sightings, names, strict=True)
    )
    builder.add_links(_link_row(name_of, field, value) for field, value in links)
    return builder.facts()


def _link_row(name_of: dict[str, list[str]], field: str, value: str) -> tuple:
    """A link's row for :meth:`FactsBuilder.add_links` from its hash field and value."""
    a, b = field.split("\t")
    length, stamps = value.split(":", 1)
    # The length is in bytes, as the script counts.
    encoded = stamps.encode()
    first, last = encoded[: int(length)].decode(), encoded[int(length) :].decode()
    return (*name_of[a], *name_of[b], *_stamp(first), *_stamp(last))


def _stamp(text: str) -> tuple[int, str]:
    return int(text[:16], 16) - _TIME_OFFSET, text[16:]
