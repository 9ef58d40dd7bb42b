"""The HTTP inlet of ``profilestream serve``: streaming messages in over HTTP, out to Pub/Sub, one message each.

Routes (:meth:`Inlet.router`; no API token, each connection has its own), statuses and bodies are README's
("`profilestream serve`: the HTTP inlet"):

- ``POST /collection/{connection_id}[?syncValidation=true]``: one message in any JSON payload form but the batch
  envelope (a streaming envelope, or a bare entity when the connection names a ``schema``), published as sent
  (decompressed); 200 ``{"inletId", "xactionId", "receivedTimeMs"}`` (plus ``"syncValidation": {"status":
  "pass"}`` when asked).
- ``POST /collection/batch/{connection_id}[?syncValidation=true]``: ``{"messages": [message, ...]}``, each judged and
  published on its own, re-serialised compactly (``json.dumps(entry, separators=(",", ":"), ensure_ascii=False)``);
  207 ``{"inletId", "batchId", "receivedTimeMs", "responses": [...]}``, in request order ``{"xactionId"}`` or
  ``{"statusCode": 400, "message"}`` (cut at :data:`MAX_ENTRY_MESSAGE_CHARS` characters).
- ``OPTIONS`` on both: the CORS preflight. From an origin in the connection's ``allowed_origins``, 204 allowing
  ``POST`` with :data:`CORS_ALLOWED_HEADERS` for :data:`CORS_MAX_AGE_S` seconds; from any other (or to an unknown
  connection), 403 without CORS headers. Every answer to a POST from an allowed origin carries
  ``Access-Control-Allow-Origin: <that origin>`` and ``Vary: Origin`` (and exposes ``Retry-After``), errors
  included; no other answer carries CORS headers. A POST whose ``Origin`` the connection does not allow is 403.

Bodies are JSON whatever their ``Content-Type`` says (``text/plain`` is what ``navigator.sendBeacon`` sends without
a preflight). ``Content-Encoding: gzip`` bodies are decompressed as they are read, never past the body limit.

Statuses, in the order they are decided: 429 past the address's failed-authentication limit (:class:`AuthFailureLimit`,
shared with the profile API); 401 / 403 a missing / wrong token (constant-time; an unknown connection answers as a wrong
token); 403 an ``Origin`` the connection does not allow; 429 over the connection's rate, counted in messages; 415 a
``Content-Encoding`` other than gzip; 413 a body over ``inlet.max_request_bytes`` as sent or decompressed (read and
decompressed no further) or a batch over ``max_batch_entries`` (``DECODE.BATCH_TOO_LARGE``); 400 a gzip body that is not
one whole gzip stream (:data:`BAD_GZIP`), not strict JSON, a message that fails decoding (or validation with
``syncValidation=true``), or a batch body that is not ``{"messages": [...]}``; 503 when Pub/Sub has not confirmed every
message within ``inlet.publish_timeout_seconds``. A client that goes away before its body is read is one log line
(status 499). Error bodies have the problem shape ``{"type", "status", "title", "report": {"message", "cause"?}}``;
``report.cause._streamingValidation`` lists each violation as ``{"schemaLocation": "#", "pointerToViolation": "#" + JSON
pointer, "causingExceptions": [], "keyword": code, "message"}`` (``"#"``: our violations point into the entity, not into
a JSON Schema document).

Guarantees: a response is sent only once every publish of its request has resolved, so nothing answered 200 or 207
is lost; each message is judged by the pipeline's own :func:`~messages.decoding.decode_message` (and
:func:`~schemas.validation.validate_decoded`) on exactly the bytes published. Published messages (a contract the
pipeline reads) carry ``data`` as above and the attributes :data:`CONNECTION_ID_ATTRIBUTE`,
:data:`RECEIVED_TIME_ATTRIBUTE` (milliseconds, as a string), :data:`XACTION_ID_ATTRIBUTE` (the message's own) and,
when known, :data:`SCHEMA_REF_ATTRIBUTE` and :data:`DATASET_ID_ATTRIBUTE`: what the message names (header, else
``body.xdmMeta``), else the connection's ``schema`` and ``dataset``. Request bodies and query strings are never logged.
Why it waits for Pub/Sub: docs/decisions/0029-the-inlet-answers-once-pubsub-confirms.md.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import hmac
import itertools
import json
import logging
import math
import re
import secrets
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from core.records import FailedRecord, Message, RecordError
from messages.decoding import (
    BATCH_TOO_LARGE,
    EMPTY_BATCH,
    MAX_BATCH_ENTRIES,
    MAX_MESSAGE_BYTES,
    UNKNOWN_ENVELOPE,
    JsonRejected,
    decode_message,
    parse_json,
)
from schemas.registry import SchemaRegistry
from schemas.validation import DEFAULT_POLICY, ValidationPolicy, validate_decoded
from service.settings import InletConnection, InletSettings

CONNECTION_ID_ATTRIBUTE = "connectionId"
DATASET_ID_ATTRIBUTE = "datasetId"
SCHEMA_REF_ATTRIBUTE = "schemaRef"
RECEIVED_TIME_ATTRIBUTE = "receivedTimeMs"
XACTION_ID_ATTRIBUTE = "xactionId"

PROBLEM_TYPE = "urn:profilestream:problem:inlet"
INVALID_MESSAGE = "Invalid XDM Message Format"
SYNC_VALIDATION = "syncValidation"
SINGLE_ROUTE, BATCH_ROUTE = "single", "batch"
# nginx's status for a client that closed its connection before it was answered: counted, never sent.
CLIENT_CLOSED_REQUEST = 499
# A rejected batch message's text is cut here, so that the answer to a batch stays within a small multiple of it.
MAX_ENTRY_MESSAGE_CHARS = 200
# The 400 code of a Content-Encoding: gzip body that is not one whole gzip stream.
BAD_GZIP = "DECODE.BAD_GZIP"
GZIP_ENCODING, NO_ENCODING = "gzip", "identity"
# zlib's window bits for a gzip wrapper (16 + the largest window), as Content-Encoding: gzip means.
_GZIP_WBITS = 16 + zlib.MAX_WBITS
# How long a browser may keep a preflight's answer: Chromium's cap (Firefox keeps up to a day).
CORS_MAX_AGE_S = 7200
# A page needs no more than this: JSON or text/plain bodies, maybe gzipped, and a token on a connection asking one.
CORS_ALLOWED_HEADERS = "content-type, content-encoding, authorization"
CORS_ALLOWED_METHODS = "POST, OPTIONS"

_log = logging.getLogger(__name__)


class Publisher(Protocol):
    """Where accepted messages go. ``publish`` returns a future of the message id; ``close`` publishes what is
    batched, then releases the connection."""

    def publish(self, data: bytes, attributes: Mapping[str, str]) -> concurrent.futures.Future: ...

    def close(self) -> None: ...


class PubSubPublisher:
    """:class:`Publisher` on a Pub/Sub topic (``projects/P/topics/T``) through Google's client and its batching.

    The emulator is used when ``PUBSUB_EMULATOR_HOST`` is set, as Google's client does. Each publish is retried
    for at most ``timeout_s``, the time the inlet waits for it, so a publish it gave up on is not left retrying.
    """

    def __init__(self, topic: str, *, timeout_s: float) -> None:
        from google.api_core.retry import Retry
        from google.cloud import pubsub_v1

        # The client's default batching (100 messages, 1 MB, 10 ms) keeps a single request's latency low; the
        # server takes a lone message above 1 MB in a batch of its own.
        options = pubsub_v1.types.PublisherOptions(retry=Retry(timeout=timeout_s), timeout=timeout_s)
        self._client = pubsub_v1.PublisherClient(pubsub_v1.types.BatchSettings(), publisher_options=options)
        self._topic = topic

    def publish(self, data: bytes, attributes: Mapping[str, str]) -> concurrent.futures.Future:
        return self._client.publish(self._topic, data, **attributes)

    def close(self) -> None:
        self._client.stop()


@dataclasses.dataclass(frozen=True)
class Accepted:
    """A message to publish: its bytes, its attributes and the transaction id answered for it."""

    data: bytes
    attributes: Mapping[str, str]
    xaction_id: str


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A message answered 400, with every reason."""

    errors: tuple[RecordError, ...]


Verdict = Accepted | Rejected


class BadRequest(Exception):
    """The whole request is rejected (400) before any message in it is judged."""

    def __init__(self, error: RecordError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclasses.dataclass(frozen=True)
class Receipt:
    """What the inlet stamps on a request when it arrives: the connection, the time and its transaction id
    (a batch's ``batchId``, whose messages are ``batchId:index``)."""

    connection_id: str
    received_ms: int
    xaction_id: str


@dataclasses.dataclass(frozen=True)
class Judge:
    """Request bodies into per-message verdicts, with the pipeline's decoding and validation."""

    registry: SchemaRegistry
    policy: ValidationPolicy = DEFAULT_POLICY
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_batch_entries: int = MAX_BATCH_ENTRIES

    def single(self, body: bytes, receipt: Receipt, connection: InletConnection, *, sync_validation: bool) -> Verdict:
        """The verdict on a ``/collection`` body, published as it is; raises :class:`BadRequest` for bad JSON."""
        return self._verdict(body, _parsed(body), receipt.xaction_id, receipt, connection, sync_validation)

    def batch(
        self, body: bytes, receipt: Receipt, connection: InletConnection, *, sync_validation: bool
    ) -> list[Verdict]:
        """One verdict per message of a ``/collection/batch`` body; raises :class:`BadRequest` when it is not
        ``{"messages": [...]}`` in strict JSON."""
        payload = _parsed(body)
        if type(payload) is not dict or payload.keys() != {"messages"}:
            raise BadRequest(RecordError(UNKNOWN_ENVELOPE, "", 'a batch is {"messages": [message, ...]}'))
        entries = payload["messages"]
        if type(entries) is not list or not entries:
            raise BadRequest(RecordError(EMPTY_BATCH, "/messages", "a batch holds a non-empty list of messages"))
        return [
            self._verdict(
                json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode(),
                entry,
                f"{receipt.xaction_id}:{index}",
                receipt,
                connection,
                sync_validation,
            )
            for index, entry in enumerate(entries)
        ]

    def _verdict(
        self,
        data: bytes,
        payload: Any,
        xaction_id: str,
        receipt: Receipt,
        connection: InletConnection,
        sync_validation: bool,
    ) -> Verdict:
        if type(payload) is dict and payload.keys() == {"messages"}:
            text = "a batch envelope is many messages: send it to POST /collection/batch/{connection_id}"
            return Rejected((RecordError(UNKNOWN_ENVELOPE, "", text),))
        attributes = {
            CONNECTION_ID_ATTRIBUTE: receipt.connection_id,
            RECEIVED_TIME_ATTRIBUTE: str(receipt.received_ms),
            XACTION_ID_ATTRIBUTE: xaction_id,
        }
        defaults = {SCHEMA_REF_ATTRIBUTE: connection.schema, DATASET_ID_ATTRIBUTE: connection.dataset}
        attributes.update((name, value) for name, value in defaults.items() if value is not None)
        received_us = receipt.received_ms * 1000
        message = Message(data, attributes, xaction_id, received_us, received_us)
        [decoded] = decode_message(message, self.registry.avro_schema_for, max_message_bytes=self.max_message_bytes)
        if isinstance(decoded, FailedRecord):
            return Rejected(decoded.errors)
        if sync_validation:
            validated = validate_decoded(decoded, self.registry, self.policy)
            if isinstance(validated, FailedRecord):
                return Rejected(validated.errors)
        named = {SCHEMA_REF_ATTRIBUTE: decoded.schema_id, DATASET_ID_ATTRIBUTE: decoded.dataset_id}
        attributes.update((name, value) for name, value in named.items() if value is not None)
        return Accepted(data, attributes, xaction_id)


_PLAIN_JSON = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_MESSAGES_KEY = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"messages"[ \t\n\r]*:[ \t\n\r]*\[')


def batch_entry_count(body: bytes, limit: int) -> int | None:
    """How many entries ``body``, a ``{"messages": [...]}`` batch, holds, counting no further than ``limit + 1``.

    The entries are stepped over without being judged, so an oversized batch costs as little as its first
    ``limit`` entries. None for a body this scan does not follow (not UTF-8, not that shape, not JSON): the strict
    parser says what is wrong with it."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return None
    opening = _MESSAGES_KEY.match(text)
    if opening is None:
        return None
    position, count = opening.end(), 0
    try:
        while True:
            position = _WHITESPACE.match(text, position).end()
            if count == 0 and text.startswith("]", position):
                return 0
            _, position = _PLAIN_JSON.raw_decode(text, position)
            count += 1
            position = _WHITESPACE.match(text, position).end()
            if count > limit or text.startswith("]", position):
                return count
            if not text.startswith(",", position):
                return None
            position += 1
    except (json.JSONDecodeError, RecursionError):
        return None


def _parsed(body: bytes) -> Any:
    try:
        return parse_json(body)
    except JsonRejected as error:
        raise BadRequest(RecordError(error.code, "", str(error))) from None


def single_response(receipt: Receipt, *, sync_validation: bool) -> dict[str, Any]:
    """The 200 body of a published message."""
    body: dict[str, Any] = {
        "inletId": receipt.connection_id,
        "xactionId": receipt.xaction_id,
        "receivedTimeMs": receipt.received_ms,
    }
    if sync_validation:
        body[SYNC_VALIDATION] = {"status": "pass"}
    return body


def batch_response(receipt: Receipt, verdicts: Sequence[Verdict]) -> dict[str, Any]:
    """The 207 body: one entry per message, in request order."""
    return {
        "inletId": receipt.connection_id,
        "batchId": receipt.xaction_id,
        "receivedTimeMs": receipt.received_ms,
        "responses": [
            {"xactionId": verdict.xaction_id}
            if isinstance(verdict, Accepted)
            else {"statusCode": 400, "message": _cut(_inlet_message(receipt.connection_id, _summary(verdict.errors)))}
            for verdict in verdicts
        ],
    }


def problem(
    status: int, title: str, connection_id: str, detail: str, errors: Sequence[RecordError] = ()
) -> dict[str, Any]:
    """An error body in the documented problem shape, with ``errors`` as ``report.cause._streamingValidation``."""
    report: dict[str, Any] = {"message": _inlet_message(connection_id, detail)}
    if errors:
        count = f"{len(errors)} violation{'' if len(errors) == 1 else 's'} found"
        causes = [
            {
                "schemaLocation": "#",
                "pointerToViolation": "#" + error.path,
                "causingExceptions": [],
                "keyword": error.code,
                "message": error.message,
            }
            for error in errors
        ]
        violations = {"schemaLocation": "#", "pointerToViolation": "#", "causingExceptions": causes, "message": count}
        report["cause"] = {"_streamingValidation": [violations]}
    return {"type": PROBLEM_TYPE, "status": status, "title": title, "report": report}


def invalid_message(connection_id: str, errors: Sequence[RecordError]) -> dict[str, Any]:
    """The 400 body of a rejected request, listing every violation."""
    return problem(400, INVALID_MESSAGE, connection_id, _summary(errors), errors)


def _inlet_message(connection_id: str, detail: str) -> str:
    return f"inletId: [{connection_id}] {detail}"


def _cut(text: str) -> str:
    return text if len(text) <= MAX_ENTRY_MESSAGE_CHARS else text[: MAX_ENTRY_MESSAGE_CHARS - 1] + "\u2026"


def _summary(errors: Iterable[RecordError]) -> str:
    return "; ".join(f"{error.code} at {error.path or '/'}: {error.message}" for error in errors)


def token_status(expected: str | None, authorization: str | None) -> int | None:
    """None when a request with this ``Authorization`` header may go on, else 401 (no bearer token) or 403."""
    if expected is None:
        return None
    scheme, _, credentials = (authorization or "").strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        return 401
    # Constant time, so that response timing does not tell how much of a guessed token was right.
    return None if hmac.compare_digest(credentials.encode(), expected.encode()) else 403


class TokenBucket:
    """A token bucket: ``burst`` tokens at once, refilled at ``rate`` per second of ``clock``."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self._lock = threading.Lock()

    def take(self, count: int = 1) -> float:
        """0.0 when ``count`` tokens were taken, else the seconds until they will be there.

        A count above ``burst`` needs a full bucket and leaves it in debt, so that a batch larger than the burst
        is still possible and its messages are paid for at the rate all the same."""
        with self._lock:
            self._refill()
            needed = min(count, self._burst)
            if self._tokens >= needed:
                self._tokens -= count
                return 0.0
            return (needed - self._tokens) / self._rate

    def wait_s(self) -> float:
        """The seconds until one token will be there (0.0: it is), taking none."""
        with self._lock:
            self._refill()
            return max(0.0, (1 - self._tokens) / self._rate)

    def _refill(self) -> None:
        now = self._clock()
        # A clock that steps back refills nothing rather than draining the bucket.
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._last) * self._rate)
        self._last = now


class AuthFailureLimit:
    """Failed authentications (no token or a wrong one) per client address: ``failures`` at once, then
    ``failures`` per ``window_s``. A client past it is answered 429 until its bucket refills, whatever it sends,
    so that tokens cannot be guessed at the server's speed. The profile API and the inlet share one.

    At most ``max_clients`` addresses are remembered (the least recently failed are forgotten first), so a flood
    of addresses costs bounded memory."""

    def __init__(
        self,
        failures: int = 10,
        window_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        if failures <= 0 or window_s <= 0:
            raise ValueError("the failed-authentication limit and its window must be positive")
        self._failures = failures
        self._rate = failures / window_s
        self._clock = clock
        self._max_clients = max_clients
        self._buckets: collections.OrderedDict[str, TokenBucket] = collections.OrderedDict()
        self._lock = threading.Lock()

    def wait_s(self, client: str) -> float:
        """0.0 when ``client`` may try to authenticate, else the seconds until it may."""
        with self._lock:
            bucket = self._buckets.get(client)
        return 0.0 if bucket is None else bucket.wait_s()

    def failed(self, client: str) -> None:
        """Counts one failed authentication of ``client``."""
        with self._lock:
            bucket = self._buckets.pop(client, None)
            if bucket is None:
                bucket = TokenBucket(self._rate, self._failures, self._clock)
            self._buckets[client] = bucket
            while len(self._buckets) > self._max_clients:
                self._buckets.popitem(last=False)
        bucket.take()


def client_address(request: Request) -> str:
    """The address a request came from, which the failed-authentication limit counts by."""
    return request.client.host if request.client is not None else ""


class TransactionIds:
    """Transaction ids in the reference's form ``receivedTimeMs:instance:sequence``, unique per inlet process."""

    def __init__(self, instance: str | None = None) -> None:
        self._instance = instance if instance is not None else secrets.token_hex(3)
        self._sequence = itertools.count()

    def next(self, received_ms: int) -> str:
        return f"{received_ms}:{self._instance}:{next(self._sequence)}"


class InletMetrics:
    """The inlet's counters, rendered in Prometheus' text format."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._responses: collections.Counter[tuple[str, int]] = collections.Counter()
        self._rate_limited: collections.Counter[str] = collections.Counter()
        self._published = 0
        self._publish_failures = 0

    def count_response(self, route: str, status: int) -> None:
        with self._lock:
            self._responses[route, status] += 1

    def count_rate_limited(self, connection_id: str) -> None:
        with self._lock:
            self._rate_limited[connection_id] += 1

    def count_publishes(self, published: int, failed: int) -> None:
        with self._lock:
            self._published += published
            self._publish_failures += failed

    def prometheus_text(self) -> str:
        """Every counter, in the text exposition format (version 0.0.4)."""
        with self._lock:
            responses = sorted(self._responses.items())
            rate_limited = sorted(self._rate_limited.items())
            published, failures = self._published, self._publish_failures
        return "".join(
            [
                *_counter(
                    "profilestream_inlet_requests_total",
                    "Inlet requests answered, by route and status code.",
                    [(f'route="{route}",status="{status}"', count) for (route, status), count in responses],
                ),
                *_counter(
                    "profilestream_inlet_rate_limited_total",
                    "Requests answered 429, by connection.",
                    [(f'connection="{connection}"', count) for connection, count in rate_limited],
                ),
                *_counter(
                    "profilestream_inlet_messages_published_total", "Messages Pub/Sub confirmed.", [("", published)]
                ),
                *_counter(
                    "profilestream_inlet_publish_failures_total",
                    "Messages Pub/Sub did not confirm in time (their requests answered 503).",
                    [("", failures)],
                ),
            ]
        )


def _counter(name: str, help_text: str, samples: list[tuple[str, int]]) -> list[str]:
    lines = [f"# HELP {name} {help_text}\n", f"# TYPE {name} counter\n"]
    lines += [f"{name}{{{labels}}} {value}\n" if labels else f"{name} {value}\n" for labels, value in samples]
    return lines


class Inlet:
    """The inlet's state behind its routes: connections with their tokens and buckets, the judge, the publisher.

    ``environ`` resolves connections' ``token_env`` (a missing variable raises
    :class:`~core.errors.ConfigError`); ``clock`` (seconds since the epoch) stamps requests and drives the rate
    limits. :meth:`close` closes the publisher.
    """

    def __init__(
        self,
        settings: InletSettings,
        judge: Judge,
        publisher: Publisher,
        *,
        environ: Mapping[str, str],
        clock: Callable[[], float] = time.time,
        ids: TransactionIds | None = None,
    ) -> None:
        self.metrics = InletMetrics()
        self._settings = settings
        self._judge = judge
        self._publisher = publisher
        self._clock = clock
        self._ids = ids if ids is not None else TransactionIds()
        self._tokens = {name: connection.resolved_token(environ) for name, connection in settings.connections.items()}
        self._unknown_connection_token = secrets.token_urlsafe(32)
        self._buckets = {
            name: TokenBucket(connection.rate_per_second, connection.burst, clock)
            for name, connection in settings.connections.items()
        }
        self._origins = {
            name: frozenset(connection.allowed_origins) for name, connection in settings.connections.items()
        }

    def close(self) -> None:
        self._publisher.close()

    def router(self, auth_failures: AuthFailureLimit) -> APIRouter:
        """The inlet's two routes and their CORS preflights, counting failed authentications in ``auth_failures``."""
        router = APIRouter(tags=["inlet"])

        @router.post("/collection/{connection_id}", summary="Send one message")
        async def collect(connection_id: str, request: Request) -> JSONResponse:
            return await self._answer(SINGLE_ROUTE, connection_id, request, auth_failures)

        @router.post("/collection/batch/{connection_id}", summary="Send a batch of messages", status_code=207)
        async def collect_batch(connection_id: str, request: Request) -> JSONResponse:
            return await self._answer(BATCH_ROUTE, connection_id, request, auth_failures)

        @router.options("/collection/{connection_id}", summary="CORS preflight of POST /collection")
        async def preflight(connection_id: str, request: Request) -> Response:
            return self._preflight(SINGLE_ROUTE, connection_id, request)

        @router.options("/collection/batch/{connection_id}", summary="CORS preflight of POST /collection/batch")
        async def preflight_batch(connection_id: str, request: Request) -> Response:
            return self._preflight(BATCH_ROUTE, connection_id, request)

        return router

    async def _answer(
        self, route: str, connection_id: str, request: Request, auth_failures: AuthFailureLimit
    ) -> JSONResponse:
        status, body, headers = await self._handle(route, connection_id, request, auth_failures)
        self.metrics.count_response(route, status)
        headers = dict(headers or {})
        if cors := self._cors_headers(connection_id, request):
            # Every answer, errors included, so that the page can read why it was refused and when to retry.
            headers.update(cors)
            if "Retry-After" in headers:
                headers["Access-Control-Expose-Headers"] = "Retry-After"
        return JSONResponse(body, status_code=status, headers=headers)

    def _preflight(self, route: str, connection_id: str, request: Request) -> Response:
        """204 with what a browser needs to send the POST, for an origin the connection allows; else 403 without
        CORS headers, so that the browser does not send it."""
        cors = self._cors_headers(connection_id, request)
        status = 204 if cors else 403
        self.metrics.count_response(route, status)
        if cors:
            cors["Access-Control-Allow-Methods"] = CORS_ALLOWED_METHODS
            cors["Access-Control-Allow-Headers"] = CORS_ALLOWED_HEADERS
            cors["Access-Control-Max-Age"] = str(CORS_MAX_AGE_S)
        return Response(status_code=status, headers=cors)

    def _cors_headers(self, connection_id: str, request: Request) -> dict[str, str]:
        """The CORS headers of any answer to ``request``: none unless its ``Origin`` is one the connection allows
        (an unknown connection allows none), in which case that exact origin is allowed."""
        origin = request.headers.get("origin")
        if origin is None or origin not in self._origins.get(connection_id, ()):
            return {}
        return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}

    async def _handle(
        self, route: str, connection_id: str, request: Request, auth_failures: AuthFailureLimit
    ) -> tuple[int, dict[str, Any], dict[str, str] | None]:
        received_ms = int(self._clock() * 1000)
        client = client_address(request)
        if blocked_s := auth_failures.wait_s(client):
            detail = "too many failed authentications from this address"
            return 429, problem(429, "Too Many Requests", connection_id, detail), _retry_after(blocked_s)
        # An unknown connection is asked for a token nobody has, so that it answers as a wrong token would and
        # the answer never tells which connection ids exist.
        expected = self._tokens.get(connection_id, self._unknown_connection_token)
        denied = token_status(expected, request.headers.get("authorization"))
        connection = self._settings.connections.get(connection_id)
        if denied is not None or connection is None:
            auth_failures.failed(client)
            status = denied or 403
            detail = "a bearer token is required" if status == 401 else "the bearer token is not this connection's"
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            return status, problem(status, "Authorization", connection_id, detail), headers
        # Browsers send a simple POST (text/plain, no token) without a preflight, and only hide the answer from a
        # page whose origin is not allowed: refused here, before it is published or spends the connection's rate.
        origin = request.headers.get("origin")
        if origin is not None and origin not in self._origins[connection_id]:
            detail = "this connection takes no requests from pages of this origin"
            return 403, problem(403, "Forbidden", connection_id, detail), None
        bucket = self._buckets[connection_id]
        # A batch is paid for by its messages once they are counted; until then it needs one token to be read.
        if wait_s := bucket.take() if route == SINGLE_ROUTE else bucket.wait_s():
            return self._rate_limited(connection_id, connection, wait_s)
        encoding = request.headers.get("content-encoding", "").strip().lower() or NO_ENCODING
        if encoding not in (NO_ENCODING, GZIP_ENCODING):
            detail = f"Content-Encoding is {GZIP_ENCODING} or none"
            return 415, problem(415, "Unsupported Media Type", connection_id, detail), None
        limit = self._settings.max_request_bytes
        try:
            body = await _body_within(request, limit, gzipped=encoding == GZIP_ENCODING)
        except ClientDisconnect:
            _log.info("inlet: the client went away before its %s request's body was read", route)
            return CLIENT_CLOSED_REQUEST, {}, None
        except BadRequest as bad:
            return 400, invalid_message(connection_id, [bad.error]), None
        if body is None:
            detail = f"the body is over {limit} bytes (as sent, or once decompressed)"
            return 413, problem(413, "Payload Too Large", connection_id, detail), None
        sync_text = request.query_params.get(SYNC_VALIDATION, "false").lower()
        if sync_text not in ("true", "false"):
            return 400, problem(400, "Bad Request", connection_id, "syncValidation is true or false"), None
        sync_validation = sync_text == "true"
        if route == BATCH_ROUTE:
            most = self._judge.max_batch_entries
            entries = batch_entry_count(body, most)
            if entries is not None and entries > most:
                too_large = RecordError(BATCH_TOO_LARGE, "/messages", f"at most {most} messages per batch")
                return 413, problem(413, "Payload Too Large", connection_id, _summary([too_large]), [too_large]), None
            if wait_s := bucket.take(max(1, entries or 0)):
                return self._rate_limited(connection_id, connection, wait_s)
        receipt = Receipt(connection_id, received_ms, self._ids.next(received_ms))
        judge = self._judge.single if route == SINGLE_ROUTE else self._judge.batch
        try:
            # Decoding a body of up to a mebibyte takes milliseconds: off the event loop, so others are not held up.
            verdicts = await run_in_threadpool(judge, body, receipt, connection, sync_validation=sync_validation)
        except BadRequest as bad:
            return 400, invalid_message(connection_id, [bad.error]), None
        if isinstance(verdicts, Rejected):
            return 400, invalid_message(connection_id, verdicts.errors), None
        accepted = [verdicts] if isinstance(verdicts, Accepted) else [v for v in verdicts if isinstance(v, Accepted)]
        if not await self._published(accepted):
            detail = "the messages could not be handed to Pub/Sub; none is taken, send the request again"
            return 503, problem(503, "Service Unavailable", connection_id, detail), _retry_after(1.0)
        if isinstance(verdicts, Accepted):
            return 200, single_response(receipt, sync_validation=sync_validation), None
        return 207, batch_response(receipt, verdicts), None

    def _rate_limited(
        self, connection_id: str, connection: InletConnection, wait_s: float
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        self.metrics.count_rate_limited(connection_id)
        detail = f"over {connection.rate_per_second:g} messages per second"
        return 429, problem(429, "Too Many Requests", connection_id, detail), _retry_after(wait_s)

    async def _published(self, accepted: list[Accepted]) -> bool:
        """Whether Pub/Sub confirmed every message within the publish timeout."""
        if not accepted:
            return True
        try:
            futures = [asyncio.wrap_future(self._publisher.publish(m.data, m.attributes)) for m in accepted]
        except Exception as error:  # the client refuses synchronously when stopped or given a message too large
            _log.warning("inlet: publish refused: %s", type(error).__name__)
            self.metrics.count_publishes(0, len(accepted))
            return False
        done, pending = await asyncio.wait(futures, timeout=self._settings.publish_timeout_seconds)
        for late in pending:
            late.cancel()  # the answer is 503 either way; the publisher's own retry ends at the same timeout
        failed = len(pending) + sum(1 for future in done if future.exception() is not None)
        self.metrics.count_publishes(len(accepted) - failed, failed)
        if failed:
            reasons = {type(future.exception()).__name__ for future in done if future.exception() is not None}
            _log.warning(
                "inlet: %d of %d publishes failed or timed out (%s)", failed, len(accepted), reasons or "timeout"
            )
        return not failed


def _retry_after(seconds: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds)))}


async def _body_within(request: Request, limit: int, *, gzipped: bool) -> bytes | None:
    """The request body, decompressed when ``gzipped``, or None as soon as it is known to be over ``limit`` bytes as
    sent or once decompressed: nothing more is read, and at most ``limit + 1`` bytes are ever decompressed, so a
    small body that would inflate to gigabytes costs no more memory than a body at the limit. Raises
    :class:`BadRequest` (:data:`BAD_GZIP`) for a gzipped body that is not one whole gzip stream."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    inflater = zlib.decompressobj(wbits=_GZIP_WBITS) if gzipped else None
    chunks, sent, size = [], 0, 0
    try:
        async for chunk in request.stream():
            sent += len(chunk)
            if sent > limit:
                return None
            pieces = [chunk] if inflater is None else _inflated(inflater, chunk, limit - size)
            if pieces is None:
                return None
            size += sum(len(piece) for piece in pieces)
            chunks += pieces
    except zlib.error:
        raise _not_gzip() from None
    if inflater is not None and (not inflater.eof or inflater.unused_data):
        raise _not_gzip()  # cut short, or followed by more than one gzip stream holds
    return b"".join(chunks)


def _inflated(inflater: Any, data: bytes, room: int) -> list[bytes] | None:
    """``data`` fed to ``inflater`` (a ``zlib.decompressobj``), decompressed in pieces; None once they come to more
    than ``room`` bytes, having decompressed at most one byte more."""
    pieces = []
    while data:
        piece = inflater.decompress(data, room + 1)
        room -= len(piece)
        if room < 0:
            return None
        pieces.append(piece)
        data = inflater.unconsumed_tail
    return pieces


def _not_gzip() -> BadRequest:
    return BadRequest(
        RecordError(BAD_GZIP, "", f"Content-Encoding: {GZIP_ENCODING}, but the body is not one whole gzip stream")
    )
