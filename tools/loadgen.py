"""``profilestream loadgen``: send seeded XDM traffic at a steady rate to Pub/Sub or the HTTP inlet, logging send times.

    profilestream loadgen --target TARGET [--rate 500] (--duration S | --count N) [--people 1000]
                          [--devices-per-person 3] [--login-share 0.5] [--invalid-fraction 0] [--duplicate-fraction 0]
                          [--seed N] [--send-log FILE] [--batch-size 50] [--concurrency 32] [--token TOKEN]
                          [--browser ORIGIN]

In: a target (``pubsub:projects/P/topics/T``, ``http://HOST:PORT/collection/CONNECTION_ID`` or
``http://HOST:PORT/collection/batch/CONNECTION_ID``) and the traffic's shape. Out: the messages, sent to the target;
with ``--send-log``, one JSON line per message as it goes out, which joined on ``id`` (or an identity) with the
profile store and the lake gives each message's latency; and, last, a report as one JSON line on stdout. Exit 0 when
every message was delivered, 1 when any was not, 2 on a usage error (one line on stderr). Flags, traffic, the send
log and the report are README's ("`profilestream loadgen`").

:class:`Traffic` is pure and seeded (the same seed and send times give the same bytes), drawn with the sample
stream's building blocks (:mod:`tools.sample_stream`); its invalid messages are :data:`INVALID_KINDS`, each with the
error code ingestion gives it. :class:`Pacer` keeps the open-loop schedule (message ``k`` is due ``k / rate`` seconds
after the start). A :class:`Target` takes what is due: Google's ``PublisherClient`` with the attributes the inlet sets
(the send time standing in for ``receivedTimeMs``; the emulator when ``PUBSUB_EMULATOR_HOST`` is set), or HTTP POSTs,
``--concurrency`` at a time (a batch's message that is not JSON goes in as a JSON string, which the inlet rejects in
its 207 answer); with ``--browser ORIGIN``, shaped as a page of ``ORIGIN`` sends them (gzip bodies as ``text/plain``,
with ``Origin: ORIGIN``).
"""

from __future__ import annotations

import abc
import argparse
import collections
import contextlib
import dataclasses
import gzip
import json
import math
import re
import secrets
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from random import Random
from typing import Any, TextIO

from core.clock import EPOCH, wall_clock_us
from messages.decoding import NO_SCHEMA_REF, NOT_JSON, NOT_UTF8
from pipelines.one_line_parser import USAGE_ERROR, OneLineParser
from schemas.validation import REQUIRED, TYPE
from tools.sample_stream import (
    EXPERIENCE_EVENT_SCHEMA,
    PROFILE_SCHEMA,
    add_event_details,
    draw_event_type,
    draw_person,
    envelope,
    identity_item,
    json_bytes,
    move_house,
    not_json_payload,
    profile_entity,
    random_uuid,
    rfc3339,
)

VALID = "valid"
INVALID = "invalid"
DUPLICATE = "duplicate"
INVALID_KINDS = {
    "not_json": (NOT_JSON, NOT_UTF8),  # gzip bytes sent without saying so are not even UTF-8
    "missing_schema_ref": (NO_SCHEMA_REF,),
    "wrong_type": (TYPE,),
    "missing_timestamp": (REQUIRED,),
}
"""How a message can be invalid, and the error codes ingestion may give it."""
SOURCE_NAME = "profilestream-loadgen"
CONNECTION_ID = "loadgen"
DEFAULT_BATCH_SIZE = 50
# The inlet answers once Pub/Sub has confirmed the publish, tens of milliseconds later, so 500 messages/s one at a
# time need a few dozen requests in flight.
DEFAULT_CONCURRENCY = 32
_PROFILE_SHARE = 0.05
_SIGNED_IN_SHARE = 0.6  # of a member's visits; the rest are anonymous, as before a login
_MOVE_SHARE = 0.2  # of Profile records: a changed address, so the newest record has something to win
_RETRY_WINDOW = 100  # a retry resends one of the last valid messages, not one from long ago
_CATCH_UP_BURST_S = 0.01  # a late pacer releases at most this much of the schedule at once
_IN_FLIGHT_PER_CONNECTION = 4
_PUBSUB_IN_FLIGHT = 10_000
_DRAIN_TIMEOUT_S = 120.0
_HTTP_TIMEOUT_S = 30.0
_PUBSUB_TOPIC = re.compile(r"projects/[^/]+/topics/[^/]+")
_COLLECTION_PATH = re.compile(r"(?:/.*)?/collection/(batch/)?[^/]+")


@dataclasses.dataclass(frozen=True)
class TrafficShape:
    """Who sends and how much of it is broken; :class:`ValueError` when the shares make no sense."""

    people: int = 1000
    devices_per_person: int = 3
    login_share: float = 0.5
    invalid_fraction: float = 0.0
    duplicate_fraction: float = 0.0

    def __post_init__(self) -> None:
        if self.people < 1 or self.devices_per_person < 1:
            raise ValueError("people and devices per person are at least 1")
        for name in ("login_share", "invalid_fraction", "duplicate_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name.replace('_', ' ')} is between 0 and 1")
        if self.invalid_fraction + self.duplicate_fraction > 1.0:
            raise ValueError("the invalid and duplicate fractions add up to more than 1")


@dataclasses.dataclass(frozen=True)
class LoadMessage:
    """One message to send: its bytes, what it is (``kind``, and ``problem`` from :data:`INVALID_KINDS` for an
    invalid one) and what the send log says of it; ``schema_id`` and ``dataset_id`` as the inlet would read them."""

    data: bytes
    kind: str
    entity_id: str | None
    identities: tuple[str, ...]
    person: int | None
    schema_id: str | None
    dataset_id: str | None
    problem: str | None = None


class Traffic:
    """Seeded traffic of :class:`TrafficShape`; every call draws from one random source, so order matters."""

    def __init__(self, shape: TrafficShape, seed: int):
        self._shape = shape
        self._rng = Random(seed)
        devices = range(1, shape.devices_per_person + 1)
        self._people = [
            draw_person(self._rng, number, email_share=1.0, crm_share=shape.login_share, device_counts=devices)
            for number in range(shape.people)
        ]
        self._members = [number for number, person in enumerate(self._people) if person.crm_id is not None]
        self._recent: collections.deque[LoadMessage] = collections.deque(maxlen=_RETRY_WINDOW)

    def message(self, now_us: int) -> LoadMessage:
        """The next message, sent at ``now_us`` (µs since the epoch)."""
        rng, shape = self._rng, self._shape
        draw = rng.random()
        if draw < shape.invalid_fraction:
            return self._invalid(rng.choice(list(INVALID_KINDS)), now_us)
        if draw < shape.invalid_fraction + shape.duplicate_fraction and self._recent:
            return dataclasses.replace(rng.choice(self._recent), kind=DUPLICATE)
        if self._members and rng.random() < _PROFILE_SHARE:
            message = self._profile(now_us)
        else:
            number, entity = self._event(now_us)
            message = _message(VALID, number, EXPERIENCE_EVENT_SCHEMA, entity)
        self._recent.append(message)
        return message

    def _event(self, now_us: int) -> tuple[int, dict[str, Any]]:
        rng = self._rng
        number = rng.randrange(len(self._people))
        person = self._people[number]
        device = rng.choice(person.devices)
        if person.crm_id is not None and rng.random() < _SIGNED_IN_SHARE:
            identity_map = {
                "ECID": identity_item(device.ecid, "ambiguous", False),
                "Email": identity_item(person.email, "authenticated", False),
                "CRMID": identity_item(person.crm_id, "authenticated", True),
            }
        else:
            identity_map = {"ECID": identity_item(device.ecid, "ambiguous", True)}
        entity: dict[str, Any] = {
            "_id": random_uuid(rng),
            "timestamp": rfc3339(now_us, digits=3, base=EPOCH),
            "eventType": draw_event_type(rng),
            "identityMap": identity_map,
        }
        add_event_details(rng, entity, device, person.currency)
        return number, entity

    def _profile(self, now_us: int) -> LoadMessage:
        rng = self._rng
        number = rng.choice(self._members)
        person = self._people[number]
        if rng.random() < _MOVE_SHARE:
            move_house(rng, person)
        entity = profile_entity(random_uuid(rng), person, rfc3339(now_us, digits=3, base=EPOCH))
        return _message(VALID, number, PROFILE_SCHEMA, entity)

    def _invalid(self, problem: str, now_us: int) -> LoadMessage:
        if problem == "not_json":
            data = not_json_payload(self._rng)
            return LoadMessage(data, INVALID, None, (), None, None, None, problem)
        number, entity = self._event(now_us)
        body = envelope(EXPERIENCE_EVENT_SCHEMA, entity, SOURCE_NAME)
        schema_id: str | None = EXPERIENCE_EVENT_SCHEMA
        if problem == "missing_schema_ref":
            del body["header"]["schemaRef"], body["body"]["xdmMeta"]
            schema_id = None
        elif problem == "wrong_type":
            entity["eventType"] = self._rng.randrange(1, 100)
        else:
            del entity["timestamp"]
        return dataclasses.replace(_message(INVALID, number, schema_id, entity, body), problem=problem)


def _message(
    kind: str, person: int, schema_id: str | None, entity: dict[str, Any], body: dict | None = None
) -> LoadMessage:
    """The message carrying ``entity`` in ``body``, by default the streaming envelope of ``schema_id``."""
    body = body or envelope(schema_id, entity, SOURCE_NAME)
    identities = tuple(
        f"{namespace}:{item['id']}" for namespace, items in entity["identityMap"].items() for item in items
    )
    dataset_id = body["header"]["datasetId"]
    return LoadMessage(json_bytes(body), kind, entity["_id"], identities, person, schema_id, dataset_id)


def pubsub_attributes(message: LoadMessage, sent_us: int) -> dict[str, str]:
    """The attributes the inlet would publish ``message`` with, had it received it at ``sent_us``."""
    attributes = {"connectionId": CONNECTION_ID, "receivedTimeMs": str(sent_us // 1000)}
    if message.dataset_id is not None:
        attributes["datasetId"] = message.dataset_id
    if message.schema_id is not None:
        attributes["schemaRef"] = message.schema_id
    return attributes


class Pacer:
    """An open-loop schedule of ``rate`` messages/s: message ``k`` is due ``k / rate`` s after the first release.

    ``clock`` (seconds, monotonic) and ``sleep`` are injectable, so tests run the schedule on a fake clock.
    """

    def __init__(
        self, rate: float, *, clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep
    ):
        self._rate = rate
        self._clock = clock
        self._sleep = sleep
        self._burst = max(1, math.ceil(rate * _CATCH_UP_BURST_S))
        self._start: float | None = None
        self._last = 0.0
        self.released = 0
        self.behind_max_s = 0.0

    def release(self, wanted: int, remaining: int) -> int:
        """Waits until ``wanted`` more messages are due; returns how many to send now: at least ``wanted``, more
        when behind (at most a small burst, and at most ``remaining``)."""
        now = self._clock()
        if self._start is None:
            self._start = now
        ready_at = self._start + (self.released + wanted - 1) / self._rate
        while now < ready_at:
            self._sleep(ready_at - now)
            now = self._clock()
        self.behind_max_s = max(self.behind_max_s, now - ready_at)
        due = math.floor((now - self._start) * self._rate) + 1 - self.released
        count = max(wanted, min(due, self._burst, remaining))
        self.released += count
        self._last = now
        return count

    @property
    def achieved_rate(self) -> float:
        """Messages per second over the slots they took: exactly ``rate`` for a run that kept its schedule."""
        if self._start is None:
            return 0.0
        return self.released / (self._last - self._start + 1 / self._rate)


@dataclasses.dataclass(frozen=True)
class Delivery:
    """What a target heard back: answers by status (an HTTP status, ``ok``, or an error's class name) and how many
    messages were not delivered."""

    statuses: dict[str, int]
    failed: int


class Target(abc.ABC):
    """Where messages go. ``send`` may return before they arrive; ``close`` waits for every answer."""

    chunk = 1
    """How many messages the pacer releases together: a batch target's batch size."""

    @abc.abstractmethod
    def send(self, messages: Sequence[LoadMessage], sent_us: int) -> None: ...

    @abc.abstractmethod
    def close(self) -> Delivery: ...


class _InFlight:
    """Counts sends that have no answer yet, blocking new ones at ``limit`` (so a stalled target shows up as the
    pacer falling behind rather than as memory), and tallies the answers."""

    def __init__(self, limit: int):
        self._limit = limit
        self._pending = 0
        self._statuses: collections.Counter[str] = collections.Counter()
        self._failed = 0
        self._changed = threading.Condition()

    def begin(self) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self._pending < self._limit)
            self._pending += 1

    def end(self, status: str, failed_messages: int) -> None:
        with self._changed:
            self._pending -= 1
            self._statuses[status] += 1
            self._failed += failed_messages
            self._changed.notify_all()

    def drain(self, timeout_s: float = _DRAIN_TIMEOUT_S) -> Delivery:
        with self._changed:
            self._changed.wait_for(lambda: self._pending == 0, timeout=timeout_s)
            statuses = dict(self._statuses)
            if self._pending:
                statuses["unanswered"] = self._pending
            return Delivery(statuses, self._failed + self._pending)


class TargetUnavailableError(RuntimeError):
    """A target that cannot even be set up, such as Pub/Sub without credentials or an emulator."""


class PubSubTarget(Target):
    """Publishes to a Pub/Sub topic (``projects/P/topics/T``) with the inlet's attributes."""

    def __init__(self, topic: str):
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import pubsub_v1

        # A publish request closes at 100 messages or after 10 ms: at 1,000 messages/s about 10 messages each, so a
        # message waits at most 10 ms in the client (time the measured latency includes) and requests stay far
        # below Pub/Sub's 10 MB limit.
        batching = pubsub_v1.types.BatchSettings(max_messages=100, max_bytes=1_000_000, max_latency=0.01)
        try:
            self._publisher = pubsub_v1.PublisherClient(batch_settings=batching)
        except DefaultCredentialsError as error:
            raise TargetUnavailableError(f"{error} (or set PUBSUB_EMULATOR_HOST for the emulator)") from None
        self._topic = topic
        self._in_flight = _InFlight(_PUBSUB_IN_FLIGHT)

    def send(self, messages: Sequence[LoadMessage], sent_us: int) -> None:
        for message in messages:
            self._in_flight.begin()
            future = self._publisher.publish(self._topic, message.data, **pubsub_attributes(message, sent_us))
            future.add_done_callback(self._published)

    def _published(self, future: Any) -> None:
        error = future.exception()
        self._in_flight.end("ok" if error is None else type(error).__name__, 0 if error is None else 1)

    def close(self) -> Delivery:
        self._publisher.stop()  # publishes what is batched now instead of after max_latency
        delivery = self._in_flight.drain()
        self._publisher.transport.close()
        return delivery


class HttpTarget(Target):
    """POSTs to the inlet: each message to ``/collection/ID``, or batches to ``/collection/batch/ID``.

    With ``browser_origin``, requests are shaped as the browser SDK's from a page of that origin: gzip bodies sent
    as ``text/plain`` (the type ``navigator.sendBeacon`` sends), with its ``Origin``.
    """

    def __init__(
        self,
        url: str,
        *,
        batch_size: int,
        concurrency: int,
        token: str | None = None,
        browser_origin: str | None = None,
    ):
        import httpx2

        self._url = url
        self._batched = "/collection/batch/" in url
        self._gzipped = browser_origin is not None
        self.chunk = batch_size if self._batched else 1
        headers = {"Content-Type": "application/json"}
        if browser_origin is not None:
            headers = {"Content-Type": "text/plain;charset=UTF-8", "Content-Encoding": "gzip", "Origin": browser_origin}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = httpx2.Client(headers=headers, limits=limits, timeout=_HTTP_TIMEOUT_S)
        self._transport_error = httpx2.HTTPError
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="loadgen-http")
        self._in_flight = _InFlight(concurrency * _IN_FLIGHT_PER_CONNECTION)

    def send(self, messages: Sequence[LoadMessage], sent_us: int) -> None:
        if not self._batched:
            for message in messages:
                self._post(message.data, [message])
            return
        for start in range(0, len(messages), self.chunk):
            batch = messages[start : start + self.chunk]
            self._post(_batch_body(batch), batch)

    def _post(self, body: bytes, messages: Sequence[LoadMessage]) -> None:
        self._in_flight.begin()
        self._pool.submit(self._request, gzip.compress(body, mtime=0) if self._gzipped else body, messages)

    def _request(self, body: bytes, messages: Sequence[LoadMessage]) -> None:
        status, failed = "unanswered", len(messages)
        try:
            response = self._client.post(self._url, content=body)
            status = str(response.status_code)
            failed = _turned_away(response, messages)
        except self._transport_error as error:
            status = type(error).__name__
        finally:
            self._in_flight.end(status, failed)

    def close(self) -> Delivery:
        delivery = self._in_flight.drain()
        self._pool.shutdown(wait=False)
        self._client.close()
        return delivery


def _turned_away(response: Any, messages: Sequence[LoadMessage]) -> int:
    """How many valid messages (or duplicates) of a request the inlet's answer did not take. An invalid message may
    be refused, with a 4xx or in its entry of a 207 answer (``{"statusCode": 400, ...}``, one entry per message)."""
    if response.status_code == 207:
        try:
            entries = response.json()["responses"]
        except (ValueError, KeyError, TypeError):
            entries = []  # a 207 without a readable list: nothing says any message was refused
        refusals = [type(entry) is dict and "statusCode" in entry for entry in entries]
        return sum(refused and message.kind != INVALID for message, refused in zip(messages, refusals, strict=False))
    if response.is_success or (response.status_code < 500 and all(message.kind == INVALID for message in messages)):
        return 0
    return len(messages)


def _batch_body(messages: Sequence[LoadMessage]) -> bytes:
    # Valid JSON goes in as it is, without a parse and a dump; anything else as the string it would read as.
    parts = [
        message.data if message.problem != "not_json" else json_bytes(message.data.decode("utf-8", "replace"))
        for message in messages
    ]
    return b'{"messages":[' + b",".join(parts) + b"]}"


@dataclasses.dataclass(frozen=True)
class TargetSpec:
    """A parsed ``--target``: ``pubsub`` with a topic name, or ``http`` with a collection URL."""

    text: str
    kind: str
    address: str


def parse_target(text: str) -> TargetSpec:
    """``pubsub:projects/P/topics/T`` or ``http(s)://HOST[:PORT]/collection/[batch/]CONNECTION_ID``."""
    if text.startswith("pubsub:"):
        topic = text.removeprefix("pubsub:")
        if not _PUBSUB_TOPIC.fullmatch(topic):
            raise argparse.ArgumentTypeError(f"{text!r}: a Pub/Sub target is pubsub:projects/P/topics/T")
        return TargetSpec(text, "pubsub", topic)
    url = urllib.parse.urlsplit(text)
    try:
        port_ok = url.port is None or url.port > 0
    except ValueError:
        port_ok = False
    collection = _COLLECTION_PATH.fullmatch(url.path) and not url.query and not url.fragment
    if url.scheme not in ("http", "https") or not url.hostname or not port_ok or not collection:
        raise argparse.ArgumentTypeError(
            f"{text!r}: an HTTP target is http://HOST:PORT/collection/CONNECTION_ID or .../collection/batch/ID"
        )
    return TargetSpec(text, "http", text)


def open_target(
    spec: TargetSpec,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    concurrency: int = DEFAULT_CONCURRENCY,
    token: str | None = None,
    browser_origin: str | None = None,
) -> Target:
    if spec.kind == "pubsub":
        return PubSubTarget(spec.address)
    return HttpTarget(
        spec.address, batch_size=batch_size, concurrency=concurrency, token=token, browser_origin=browser_origin
    )


def send_load(
    traffic: Traffic,
    target: Target,
    pacer: Pacer,
    count: int,
    *,
    send_log: TextIO | None = None,
    clock_us: Callable[[], int] = wall_clock_us,
) -> collections.Counter[str]:
    """Sends ``count`` messages of ``traffic`` to ``target`` on ``pacer``'s schedule; returns how many of each kind.

    ``clock_us`` stamps the send times (event timestamps, ``receivedTimeMs``, the send log); the target is not closed.
    """
    kinds: collections.Counter[str] = collections.Counter()
    while pacer.released < count:
        remaining = count - pacer.released
        released = pacer.release(min(target.chunk, remaining), remaining)
        sent_us = clock_us()
        messages = [traffic.message(sent_us) for _ in range(released)]
        target.send(messages, sent_us)
        kinds.update(message.kind for message in messages)
        if send_log is not None:
            send_log.writelines(_log_line(message, sent_us) for message in messages)
    return kinds


def _log_line(message: LoadMessage, sent_us: int) -> str:
    entry = {
        "id": message.entity_id,
        "sent_us": sent_us,
        "kind": message.kind,
        "identities": list(message.identities),
        "person": message.person,
        "schema": message.schema_id,
    }
    return json.dumps(entry, ensure_ascii=False) + "\n"


def _checked(convert: Callable[[str], float], accept: Callable[[float], bool], what: str) -> Callable[[str], float]:
    """An argparse ``type`` that converts a flag's value and refuses one that ``accept`` does not, saying ``what``
    it should be."""

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            value = math.nan  # accepted by no check, so it is refused below with the same message
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


_positive_int = _checked(int, lambda value: value >= 1, "a whole number of at least 1")
_positive_float = _checked(float, lambda value: 0 < value < math.inf, "a number above 0")
_fraction = _checked(float, lambda value: 0 <= value <= 1, "a fraction between 0 and 1")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``loadgen`` flags; their values are checked as they are parsed (a bad one is a parser error)."""
    shape = TrafficShape()
    parser.add_argument(
        "--target",
        required=True,
        type=parse_target,
        help="pubsub:projects/P/topics/T, http://HOST:PORT/collection/ID or http://HOST:PORT/collection/batch/ID",
    )
    parser.add_argument("--rate", type=_positive_float, default=500.0, help="messages per second (default 500)")
    parser.add_argument("--duration", type=_positive_float, help="seconds to send for: rate × duration messages")
    parser.add_argument(
        "--count", type=_positive_int, help="messages to send (with --duration, the smaller count wins)"
    )
    parser.add_argument(
        "--people", type=_positive_int, default=shape.people, help=f"how many people send (default {shape.people})"
    )
    parser.add_argument(
        "--devices-per-person",
        type=_positive_int,
        default=shape.devices_per_person,
        help=f"each person has 1 to this many ECIDs (default {shape.devices_per_person})",
    )
    parser.add_argument(
        "--login-share",
        type=_fraction,
        default=shape.login_share,
        help=f"share of people with a CRMID who sign in (default {shape.login_share})",
    )
    parser.add_argument("--invalid-fraction", type=_fraction, default=0.0, help="share of invalid messages")
    parser.add_argument("--duplicate-fraction", type=_fraction, default=0.0, help="share of resent messages")
    parser.add_argument("--seed", type=int, help="random seed (default: a new one, printed in the report)")
    parser.add_argument("--send-log", help="write a JSON line per message sent to this file")
    parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=DEFAULT_BATCH_SIZE,
        help=f"batch target: messages per request (default {DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        help=f"HTTP: requests in flight (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument("--token", help="HTTP: sent as Authorization: Bearer TOKEN")
    parser.add_argument(
        "--browser",
        metavar="ORIGIN",
        help="HTTP: send as a page of ORIGIN would (gzip bodies, Content-Type: text/plain, Origin: ORIGIN)",
    )


def run(args: argparse.Namespace) -> int:
    """Runs ``loadgen`` with parsed :func:`add_arguments` flags; prints the report; returns the exit code."""
    try:
        if args.duration is None and args.count is None:
            raise ValueError("give --duration or --count")
        if args.browser is not None and args.target.kind != "http":
            raise ValueError("--browser applies to an HTTP target")
        shape = TrafficShape(
            people=args.people,
            devices_per_person=args.devices_per_person,
            login_share=args.login_share,
            invalid_fraction=args.invalid_fraction,
            duplicate_fraction=args.duplicate_fraction,
        )
    except ValueError as error:
        print(f"profilestream loadgen: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    count = min(args.count or math.inf, math.ceil(args.rate * args.duration) if args.duration else math.inf)
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    started = time.monotonic()
    try:
        with contextlib.ExitStack() as files:
            send_log = files.enter_context(open(args.send_log, "w", encoding="utf-8")) if args.send_log else None
            target = open_target(
                args.target,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                token=args.token,
                browser_origin=args.browser,
            )
            pacer = Pacer(args.rate)
            try:
                kinds = send_load(Traffic(shape, seed), target, pacer, count, send_log=send_log)
            finally:
                delivery = target.close()
    except (OSError, TargetUnavailableError) as error:
        print(f"profilestream loadgen: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    report = {
        "target": args.target.text,
        "sent": sum(kinds.values()),
        "valid": kinds[VALID],
        "invalid": kinds[INVALID],
        "duplicates": kinds[DUPLICATE],
        "seconds": round(time.monotonic() - started, 3),
        "rate": round(pacer.achieved_rate, 1),
        "behind_max_s": round(pacer.behind_max_s, 3),
        "statuses": delivery.statuses,
        "failed": delivery.failed,
        "seed": seed,
    }
    print(json.dumps(report))
    return 1 if delivery.failed else 0


def add_command(commands: argparse._SubParsersAction) -> None:
    """Registers ``profilestream loadgen`` (the ``profilestream.commands`` entry point of ``tools/pyproject.toml``)."""
    loadgen = commands.add_parser("loadgen", help="send seeded XDM traffic to Pub/Sub or the HTTP inlet at a rate")
    add_arguments(loadgen)
    loadgen.set_defaults(handler="tools.loadgen:command")


def command(args: argparse.Namespace, _beam_args: list[str]) -> int:
    """``profilestream loadgen``, with the flags the CLI parsed."""
    return run(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineParser(prog="python -m tools.loadgen", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
