"""``profilestream serve``: the HTTP Profile Access API, a FastAPI app served by uvicorn.

Routes, answers, authentication and limits are README's ("HTTP Profile Access API: `profilestream serve`"):
``GET /profiles?identity=NS:ID``, ``GET /profiles/{person_id}``, ``GET /profiles/{person_id}/events`` (``limit``
1 to 1,000, default 50; ``start <= timestamp < end``, RFC 3339), ``GET /health`` and ``GET /openapi.json``, ``/docs``;
with the HTTP inlet (:mod:`service.inlet`), ``POST /collection/...`` and ``GET /metrics`` (Prometheus text, counts
only, no token). A profile is the ``profile get`` line of :mod:`service.profile_lookup`, each lookup one read of the
profile store from the server's worker threads; an unknown identity or person id is a 404 ``{"detail": "not found"}``,
a malformed one a 422 shaped as FastAPI's validation errors without their ``input``, so no error body repeats the
identity, person id or token asked with.

Every profile route needs ``Authorization: Bearer TOKEN`` (401 without, 403 another, compared in constant time; 429
with ``Retry-After`` past :class:`~service.inlet.AuthFailureLimit`'s failures from one address, counted with the
inlet's). The token comes from ``--token-file`` or ``PROFILESTREAM_API_TOKEN``; the server refuses to start without
one, and logs no requests (query strings carry identities). :class:`ServerLimits` (``serve``'s flags) bound what one
client holds: header and body timeouts, keep-alive timeout, ``--max-connections`` (503 beyond), 16 KiB of headers.
:func:`create_app` builds the app; other routers passed to it sit behind the API token (the inlet's routes are not:
each of its connections has its own), and each :class:`Role`'s behind a token of its own (the privacy job routes of
:mod:`service.privacy_api`), which the API token does not open.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import importlib.metadata
import logging
import math
import re
import resource
import socket
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path as FilePath
from typing import Annotated, Any

import h11
import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel
from uvicorn.protocols.http.h11_impl import H11Protocol

from core.clock import micros, parse_rfc3339, wall_clock_us
from identity.stitching import StitchSettings
from service.inlet import AuthFailureLimit, Inlet, InletMetrics, client_address
from service.profile_lookup import PERSON_ID_PATTERN, LookupBy, MalformedLookupError, events_between, lookup_profile
from stores.profiles import ProfileStore

API_TOKEN_ENV = "PROFILESTREAM_API_TOKEN"
DEFAULT_EVENTS = 50
# uvicorn's own backlog: a flood of connections (a slowloris opening thousands) does not make others' wait for a SYN
# retry, as Python's default of 128 would.
LISTEN_BACKLOG = 2048
MAX_EVENTS = 1000

# RFC 6750's b64token: the characters a client can put after "Bearer " as they are.
_BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_BEARER = HTTPBearer(auto_error=False, description=f"The API token (--token-file or {API_TOKEN_ENV})")
_AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "No bearer token"},
    403: {"description": "Another bearer token than these routes'"},
}
# Logged where uvicorn logs its own start-up, in its format.
_log = logging.getLogger("uvicorn.error")

PersonId = Annotated[
    str, Path(pattern=PERSON_ID_PATTERN, description="p- and 24 hex digits", examples=["p-20a6567a1e102cf3df15f3af"])
]


class Identity(BaseModel):
    namespace: str
    id: str


class EventSummary(BaseModel):
    count: int
    first_seen: str | None
    last_seen: str | None
    by_type: dict[str, int]
    recent: list[dict[str, Any]]


class Profile(BaseModel):
    """One person's merged profile, as ``profilestream profile get`` prints it."""

    lookup: str
    person_id: str
    identities: list[Identity]
    attributes: dict[str, Any]
    events: EventSummary


class ProfileEvents(BaseModel):
    """Recent events of one person, newest first, each the event's XDM body (``_id``, ``eventType``, ...)."""

    person_id: str
    events: list[dict[str, Any]]


class Health(BaseModel):
    status: str


@dataclasses.dataclass(frozen=True)
class Role:
    """Routes behind a bearer token of their own: ``token`` opens ``routers`` and no other route. ``scheme`` is how
    the OpenAPI document names and describes the token; a 403 answers that the token is not ``whose``."""

    token: str
    routers: tuple[APIRouter, ...]
    scheme: HTTPBearer
    whose: str


def create_app(
    store: ProfileStore,
    settings: StitchSettings,
    token: str,
    *,
    routers: Iterable[APIRouter] = (),
    roles: Iterable[Role] = (),
    open_routers: Iterable[APIRouter] = (),
    inlet: Inlet | None = None,
    event_ttl_us: int | None = None,
    clock: Callable[[], int] = wall_clock_us,
    auth_failures: AuthFailureLimit | None = None,
) -> FastAPI:
    """The API on ``store``, with identities normalised by ``settings`` and the profile routes and those of
    ``routers`` behind ``token``, each of ``roles``' routers behind its role's token (a ValueError when two share
    one); ``open_routers`` without a token (the console's page and assets, :mod:`service.console`, which hold no
    data); with ``inlet``, its routes (under its connections' own tokens) and ``/metrics``.
    With ``event_ttl_us``, profiles leave out recent events older than that by ``clock`` (:func:`lookup_profile`).
    ``auth_failures`` (default :class:`AuthFailureLimit`'s) limits failed authentications per client address, on
    every role's token and the inlet's alike."""
    # Swagger UI's scripts and styles from the fastapi-offline package rather than a CDN: /docs works offline.
    app = FastAPIOffline(
        redoc_url=None,
        title="profilestream Profile Access API",
        version=importlib.metadata.version("profilestream"),
        description="Merged customer profiles, looked up by identity or by person id.",
    )
    app.add_exception_handler(RequestValidationError, _validation_error_without_input)
    app.include_router(_health_router())
    for router in open_routers:
        app.include_router(router)
    auth_failures = auth_failures if auth_failures is not None else AuthFailureLimit()
    lookup = functools.partial(lookup_profile, store=store, settings=settings, event_ttl_us=event_ttl_us, clock=clock)
    api_role = Role(token, (_profiles_router(lookup), *routers), _BEARER, whose="this API's")
    all_roles = [api_role, *roles]
    if len({role.token for role in all_roles}) < len(all_roles):
        raise ValueError("two sets of routes cannot share a bearer token: the privacy token must not be the API token")
    for role in all_roles:
        authenticated = [Depends(_bearer_auth(role, auth_failures))]
        for router in role.routers:
            app.include_router(router, dependencies=authenticated, responses=_AUTH_RESPONSES)
    if inlet is not None:
        app.include_router(inlet.router(auth_failures))
        app.include_router(_metrics_router(inlet.metrics))
    return app


def api_token(token_file: str | None, environ: Mapping[str, str]) -> str:
    """The API token from ``token_file`` (which wins) or :data:`API_TOKEN_ENV`; raises a one-line ValueError."""
    token = bearer_token(token_file, environ, flag="--token-file", env=API_TOKEN_ENV)
    if token is None:
        raise ValueError(f"the API serves personal data and needs a token: --token-file FILE or {API_TOKEN_ENV}")
    return token


def bearer_token(token_file: str | None, environ: Mapping[str, str], *, flag: str, env: str) -> str | None:
    """A bearer token from ``token_file`` (given as ``flag``, which wins) or the environment variable ``env``, or
    None when neither gives one; raises a one-line ValueError for a file that cannot be read or a token that is not
    one word."""
    if token_file is not None:
        source = f"{flag} {token_file}"
        try:
            token = FilePath(token_file).read_text(encoding="utf-8", errors="replace").strip()
        except OSError as error:
            raise ValueError(f"{source}: {error.strerror}") from None
    else:
        source = env
        token = environ.get(env, "").strip()
        if not token:
            return None
    if not _BEARER_TOKEN.fullmatch(token):
        raise ValueError(f"{source}: a token is one word of letters, digits and -._~+/ (then = padding)")
    return token


def listen(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (port 0: any free one); raises a one-line ValueError when it cannot."""
    # Bound here rather than by uvicorn, which reports a busy port by exiting the process. Made with IPPROTO_TCP
    # rather than socket.create_server's 0: asyncio turns Nagle's algorithm off only on sockets that say TCP, and
    # with it on, a response's body waits for the client's delayed ACK, 40 ms a request on a kept-alive connection.
    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(LISTEN_BACKLOG)
        return listener
    except (OSError, OverflowError) as error:
        listener.close()
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise ValueError(f"cannot listen on {host}:{port}: {reason}") from None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServerLimits:
    """What one client may hold of the server: the seconds it may take to send a request's headers (from when it
    connects, or from the end of its previous response) and its body (from the end of its headers), how long an
    idle kept-alive connection stays open, how many connections are served at once (beyond it, requests are
    answered 503) and how large a request's headers may be (beyond it, 400). A connection past a timeout is
    closed; a body cut off this way is one line in the inlet's log."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_timeout_s: float = 5.0
    max_connections: int = 4096
    max_header_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        if min(self.header_timeout_s, self.body_timeout_s, self.keep_alive_timeout_s) <= 0:
            raise ValueError("the server's timeouts must be positive")
        if self.max_connections <= 0 or self.max_header_bytes <= 0:
            raise ValueError("the server's connection and header limits must be positive")


def api_server(app: FastAPI, limits: ServerLimits = ServerLimits()) -> uvicorn.Server:
    """The uvicorn server ``serve`` runs; ``server.run(sockets=[listener])`` serves until ``should_exit`` is set."""
    # No access log: request lines carry identities (e-mail addresses, phone numbers) in their query strings.
    config = uvicorn.Config(
        app,
        access_log=False,
        http=_protocol_with_deadlines(limits),
        timeout_keep_alive=limits.keep_alive_timeout_s,  # type: ignore[arg-type]  # call_later takes any seconds
        limit_concurrency=limits.max_connections,
        h11_max_incomplete_event_size=limits.max_header_bytes,
    )
    return uvicorn.Server(config)


def _protocol_with_deadlines(limits: ServerLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a deadline on each request's headers and on its body, which uvicorn has not:
    its keep-alive timer stops at a connection's first byte, so a client trickling a byte at a time (slowloris)
    would hold its connection for ever."""
    deadlines = {h11.IDLE: limits.header_timeout_s, h11.SEND_BODY: limits.body_timeout_s}

    class DeadlineProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _awaiting: object = None  # the client state (h11.IDLE: headers, h11.SEND_BODY: body) the deadline is for

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._follow_client_state()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            self._follow_client_state()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._follow_client_state()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_deadline()
            super().connection_lost(exc)

        def _follow_client_state(self) -> None:
            """Arms the deadline of what the client is sending now (headers, body), or none while it waits."""
            awaiting = self.conn.their_state if self.conn.their_state in deadlines else None
            if awaiting is self._awaiting or self.transport.is_closing():
                return
            self._cancel_deadline()
            self._awaiting = awaiting
            if awaiting is not None:
                self._deadline = self.loop.call_later(deadlines[awaiting], self._past_deadline, awaiting)

        def _cancel_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None
            self._awaiting = None

        def _past_deadline(self, awaiting: object) -> None:
            what = "headers" if awaiting is h11.IDLE else "body"
            _log.debug("closed a connection whose request %s took over %g s", what, deadlines[awaiting])
            self._deadline = None
            self.transport.close()

    return DeadlineProtocol


def _allow_open_files(count: int) -> None:
    """Raises this process's soft limit on open files to ``count`` (within the hard limit), so that the
    connection cap, not the file limit, decides how many clients are served."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count if hard == resource.RLIM_INFINITY else min(count, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def serve(app: FastAPI, listener: socket.socket, limits: ServerLimits = ServerLimits()) -> None:
    """Serves ``app`` on ``listener`` within ``limits`` until interrupted (SIGINT or SIGTERM, which end it
    gracefully)."""
    # Room for every connection allowed, plus the store's, the publisher's and the listener's own files.
    _allow_open_files(limits.max_connections + 256)
    server = api_server(app, limits)
    host, port = listener.getsockname()[:2]
    address = f"[{host}]" if ":" in host else host
    _log.info("Profile Access API on http://%s:%d (press Ctrl+C to stop)", address, port)
    server.run(sockets=[listener])


def _health_router() -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/health", response_model=Health)
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return router


def _metrics_router(metrics: InletMetrics) -> APIRouter:
    router = APIRouter(tags=["health"])

    @router.get("/metrics", response_class=PlainTextResponse)
    async def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.prometheus_text(), media_type="text/plain; version=0.0.4")

    return router


def _profiles_router(lookup: Callable[..., dict[str, Any]]) -> APIRouter:
    """The profile routes, answering with ``lookup(asked, by=...)``: :func:`lookup_profile` on the app's store."""
    router = APIRouter(tags=["profiles"], responses={404: {"description": "No profile for this identity or person"}})

    # Plain `def` routes: a store read blocks, so FastAPI runs them on its worker threads.
    @router.get("/profiles", response_model=Profile)
    def profile_by_identity(
        identity: Annotated[str, Query(description="NAMESPACE:ID", examples=["Email:ann@example.com"])],
    ) -> dict[str, Any]:
        return _found(identity, lookup, by="identity", where=("query", "identity"))

    @router.get("/profiles/{person_id}", response_model=Profile)
    def profile_by_person(person_id: PersonId) -> dict[str, Any]:
        return _found(person_id, lookup, by="person", where=("path", "person_id"))

    @router.get("/profiles/{person_id}/events", response_model=ProfileEvents)
    def profile_events(
        person_id: PersonId,
        limit: Annotated[int, Query(ge=1, le=MAX_EVENTS, description="at most this many events")] = DEFAULT_EVENTS,
        start: Annotated[str | None, Query(description="RFC 3339: events at or after this time")] = None,
        end: Annotated[str | None, Query(description="RFC 3339: events before this time")] = None,
    ) -> dict[str, Any]:
        start_us, end_us = _time_param(start, "start"), _time_param(end, "end")
        if start_us is not None and end_us is not None and start_us > end_us:
            raise unprocessable(("query", "end"), "end is before start")
        profile = _found(person_id, lookup, by="person", where=("path", "person_id"))
        recent = profile["events"]["recent"]
        events = events_between(recent, limit=limit, start_us=start_us, end_us=end_us)
        return {"person_id": profile["person_id"], "events": events}

    return router


def _found(
    asked: str, lookup: Callable[..., dict[str, Any]], *, by: LookupBy, where: tuple[str, str]
) -> dict[str, Any]:
    try:
        profile = lookup(asked, by=by)
    except MalformedLookupError as error:
        raise unprocessable(where, error.reason) from None
    if profile["person_id"] is None:
        raise HTTPException(status_code=404, detail="not found")
    return profile


def _time_param(text: str | None, name: str) -> int | None:
    if text is None:
        return None
    moment = parse_rfc3339(text)
    if moment is None:
        raise unprocessable(("query", name), "not an RFC 3339 date-time")
    return micros(moment)


def unprocessable(where: tuple[str, ...], message: str) -> RequestValidationError:
    """A 422 shaped like the ones FastAPI gives for its own checks, which the OpenAPI document describes."""
    return RequestValidationError([{"type": "value_error", "loc": where, "msg": message}])


def _bearer_auth(role: Role, auth_failures: AuthFailureLimit) -> Callable[..., Coroutine[Any, Any, None]]:
    """The dependency that lets through requests bearing ``role``'s token, counting failures in ``auth_failures``."""
    expected = role.token.encode()
    # The parameter's default rather than in Annotated: annotations are strings here, resolved in the module's names.
    credentials_of_scheme = Depends(role.scheme)

    async def require_token(
        request: Request, credentials: HTTPAuthorizationCredentials | None = credentials_of_scheme
    ) -> None:
        client = client_address(request)
        if blocked_s := auth_failures.wait_s(client):
            raise HTTPException(
                status_code=429,
                detail="too many failed authentications from this address",
                headers={"Retry-After": str(max(1, math.ceil(blocked_s)))},
            )
        if credentials is None:
            auth_failures.failed(client)
            raise HTTPException(
                status_code=401, detail="a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )
        # Constant time, so that response timing does not tell how much of a guessed token was right.
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            auth_failures.failed(client)
            raise HTTPException(status_code=403, detail=f"the bearer token is not {role.whose}")

    return require_token


async def _validation_error_without_input(_request: Request, error: Exception) -> JSONResponse:
    """FastAPI's 422 body without each error's ``input`` (and ``ctx``), which would echo what was asked: an
    identity, an e-mail address."""
    assert isinstance(error, RequestValidationError)
    details = [_error_without_input(item) for item in error.errors()]
    return JSONResponse({"detail": jsonable_encoder(details)}, status_code=422)


def _error_without_input(error: Mapping[str, Any]) -> dict[str, Any]:
    shown = {key: value for key, value in error.items() if key in ("type", "loc", "msg")}
    # An unknown field's name is whatever the client wrote (as likely an identity as a typo): its loc stops above it.
    if shown["type"] == "extra_forbidden":
        shown["loc"] = tuple(shown["loc"])[:-1]
    return shown
