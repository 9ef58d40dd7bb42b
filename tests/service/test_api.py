"""The HTTP Profile Access API and ``profilestream serve``: routes, status codes, bearer token, OpenAPI document.

Most tests call the app in process (FastAPI's TestClient) on the sample people of ``test_profile_lookup``; one runs
the real uvicorn server on a loopback port, and the one marked ``needs_sqlite_store`` runs ``profilestream serve``
itself on the real SQLite backend.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

import service.api
import stores.opening as store_opening
from pipelines.cli import main
from pipelines.config import load_config
from service.api import API_TOKEN_ENV, MAX_EVENTS, ServerLimits, api_server, api_token, create_app, listen
from service.inlet import AuthFailureLimit
from service.profile_lookup import lookup_profile
from tests.service.test_profile_lookup import (
    ANN,
    ANN_VIEW,
    BOB,
    MINUTE_US,
    NOBODY,
    RETIRED,
    SAMPLE_WRITE,
    OpenedStores,
    clock_at,
    needs_sqlite_store,
    open_profile_store,
    sample_store,
    ttl_config,
)

TOKEN = "s3cret-Token_1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SERVER_TIMEOUT_S = 10.0
# A new interpreter imports Beam before it serves: seconds alone, far more beside a loaded test run's other workers.
SUBPROCESS_START_TIMEOUT_S = 60.0
DEFAULT_LIMITS = ServerLimits()
PROFILE_ROUTES = ["/profiles?identity=CRMID:ann", f"/profiles/{ANN}", f"/profiles/{ANN}/events"]


@pytest.fixture(scope="module")
def settings():
    return load_config(None).stitch_settings()


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(create_app(sample_store(), settings, TOKEN)) as test_client:
        yield test_client


def get(client: TestClient, url: str, **params) -> httpx2.Response:
    return client.get(url, params=params, headers=AUTH)


def test_a_profile_by_identity_is_the_profile_get_line(client, settings):
    response = get(client, "/profiles", identity="Email:Ann@Example.com")
    assert response.status_code == 200
    assert response.json() == lookup_profile("Email:Ann@Example.com", sample_store(), settings, by="identity")


def test_a_profile_by_person_id(client):
    response = get(client, f"/profiles/{ANN}")
    assert (response.status_code, response.json()) == (200, {"lookup": ANN, **ANN_VIEW})


def test_a_person_merged_away_answers_with_the_survivor(client):
    assert get(client, f"/profiles/{RETIRED}").json()["person_id"] == ANN


@pytest.mark.parametrize(
    ("url", "params"),
    [("/profiles", {"identity": "CRMID:nobody"}), (f"/profiles/{NOBODY}", {}), (f"/profiles/{NOBODY}/events", {})],
)
def test_an_unknown_identity_or_person_is_404(client, url, params):
    assert get(client, url, **params).status_code == 404


@pytest.mark.parametrize(
    ("url", "params", "where"),
    [
        ("/profiles", {"identity": "ann@example.com"}, ["query", "identity"]),
        ("/profiles", {"identity": "Email:ann.example.com"}, ["query", "identity"]),
        ("/profiles", {}, ["query", "identity"]),
        ("/profiles/p-XYZ", {}, ["path", "person_id"]),
        (f"/profiles/{ANN.upper()}/events", {}, ["path", "person_id"]),
        (f"/profiles/{ANN}/events", {"start": "yesterday"}, ["query", "start"]),
        (f"/profiles/{ANN}/events", {"end": "2026-11-01 09:00"}, ["query", "end"]),
        (f"/profiles/{ANN}/events", {"start": "2026-11-01T10:00:00Z", "end": "2026-11-01T09:00:00Z"}, ["query", "end"]),
        (f"/profiles/{ANN}/events", {"limit": 0}, ["query", "limit"]),
        (f"/profiles/{ANN}/events", {"limit": MAX_EVENTS + 1}, ["query", "limit"]),
    ],
)
def test_a_malformed_request_is_422_naming_the_parameter(client, url, params, where):
    response = get(client, url, **params)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [where]


SECRET_EMAIL = "ann.secret@example.com"


@pytest.mark.parametrize(
    ("url", "params", "status"),
    [
        ("/profiles", {"identity": f"Email:{SECRET_EMAIL}"}, 404),
        ("/profiles", {"identity": SECRET_EMAIL}, 422),
        ("/profiles", {"identity": f"Email:{SECRET_EMAIL.replace('@', ' at ')}"}, 422),
        (f"/profiles/p-{SECRET_EMAIL}", {}, 422),
        (f"/profiles/{ANN}/events", {"start": SECRET_EMAIL}, 422),
        (f"/profiles/{ANN}/events", {"limit": SECRET_EMAIL}, 422),
    ],
)
def test_error_bodies_never_echo_what_was_asked(client, url, params, status):
    response = get(client, url, **params)
    assert response.status_code == status
    assert "ann.secret" not in response.text
    if status == 404:
        assert response.json() == {"detail": "not found"}


def test_wrong_api_tokens_from_one_address_are_429_after_the_limit(settings):
    app = create_app(sample_store(), settings, TOKEN, auth_failures=AuthFailureLimit(2, 60.0))
    with TestClient(app) as client:
        statuses = [client.get(f"/profiles/{ANN}", headers={"Authorization": "Bearer nope"}).status_code for _ in "abc"]
        blocked = client.get(f"/profiles/{ANN}", headers=AUTH)
    assert statuses == [403, 403, 429]
    assert (blocked.status_code, int(blocked.headers["Retry-After"])) == (429, 30)


def event_ids(response: httpx2.Response) -> list[str]:
    assert response.status_code == 200
    return [event["_id"] for event in response.json()["events"]]


def test_events_are_the_recent_events_newest_first(client):
    response = get(client, f"/profiles/{RETIRED}/events")
    assert response.json()["person_id"] == ANN
    assert event_ids(response) == ["e3", "e2", "e1"]


def test_events_take_a_limit(client):
    assert event_ids(get(client, f"/profiles/{ANN}/events", limit=2)) == ["e3", "e2"]


def test_events_start_at_start_and_stop_before_end(client):
    window = {"start": "2026-11-01T09:10:00Z", "end": "2026-11-01T09:20:00Z"}
    assert event_ids(get(client, f"/profiles/{ANN}/events", **window)) == ["e2"]


def test_an_event_ttl_hides_older_events_from_every_profile_route_but_not_from_the_counts(settings):
    at_09_25 = clock_at("2026-11-01T09:25:00Z")
    app = create_app(sample_store(), settings, TOKEN, event_ttl_us=15 * MINUTE_US, clock=at_09_25)
    with TestClient(app) as client:
        for url, params in [("/profiles", {"identity": "CRMID:ann"}), (f"/profiles/{ANN}", {})]:
            events = get(client, url, **params).json()["events"]
            assert ([event["_id"] for event in events["recent"]], events["count"]) == (["e3", "e2"], 3)
        assert event_ids(get(client, f"/profiles/{ANN}/events")) == ["e3", "e2"]


def test_a_person_without_events_has_an_empty_list(client):
    assert event_ids(get(client, f"/profiles/{BOB}/events")) == []


@pytest.mark.parametrize("url", [*PROFILE_ROUTES, "/profiles?identity=bad", "/profiles/p-bad"])
def test_without_a_bearer_token_every_profile_route_is_401_even_when_malformed(client, url):
    response = client.get(url)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("authorization", [f"Basic {TOKEN}", TOKEN, "Bearer", "Bearer "])
def test_an_authorization_without_a_bearer_token_is_401(client, authorization):
    for url in PROFILE_ROUTES:
        assert client.get(url, headers={"Authorization": authorization}).status_code == 401, url


@pytest.mark.parametrize("token", [TOKEN[:-1], TOKEN + "x", TOKEN.upper(), "\xe9t\xe9"])
def test_a_wrong_token_is_403(client, token):
    # Latin-1 bytes: a client may send any of them, and the comparison must not choke on them.
    authorization = f"Bearer {token}".encode("latin-1")
    for url in PROFILE_ROUTES:
        assert client.get(url, headers={"Authorization": authorization}).status_code == 403, url


def test_health_needs_no_token(client):
    response = client.get("/health")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_routers_added_to_the_app_sit_behind_the_same_token(settings):
    inlet = APIRouter()

    @inlet.get("/collection")
    def collection() -> dict[str, str]:
        return {"accepted": "yes"}

    with TestClient(create_app(sample_store(), settings, TOKEN, routers=[inlet])) as client:
        assert client.get("/collection").status_code == 401
        assert client.get("/collection", headers=AUTH).json() == {"accepted": "yes"}


def test_the_docs_page_and_every_asset_it_loads_are_served_here_without_a_token(client):
    """/docs works on a host without internet: the page loads Swagger UI from this server, not from a CDN."""
    page = client.get("/docs")
    assert page.status_code == 200
    assets = re.findall(r"""(?:src|href)=["']([^"']+\.(?:js|css))["']""", page.text)

    assert assets
    assert not [asset for asset in assets if "://" in asset]
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 10_000, asset


def test_the_openapi_document_describes_the_routes_their_models_and_the_bearer_scheme(client):
    document = client.get("/openapi.json").json()
    paths = document["paths"]
    assert set(paths) == {"/health", "/profiles", "/profiles/{person_id}", "/profiles/{person_id}/events"}
    by_identity = paths["/profiles"]["get"]
    assert by_identity["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Profile"
    }
    assert {"401", "403", "404", "422"} <= set(by_identity["responses"])
    assert by_identity["security"] == [{"HTTPBearer": []}]
    assert "security" not in paths["/health"]["get"]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert set(document["components"]["schemas"]["Profile"]["properties"]) == set(ANN_VIEW) | {"lookup"}


def test_the_token_file_wins_over_the_environment_and_loses_its_newline(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    assert api_token(str(token_file), {API_TOKEN_ENV: "other"}) == TOKEN


def test_the_token_comes_from_the_environment_without_a_file():
    assert api_token(None, {API_TOKEN_ENV: TOKEN}) == TOKEN


@pytest.mark.parametrize(
    ("content", "environ", "fragment"),
    [
        (None, {}, API_TOKEN_ENV),
        (None, {API_TOKEN_ENV: "  "}, API_TOKEN_ENV),
        ("", {API_TOKEN_ENV: TOKEN}, "--token-file"),
        ("two words", {}, "one word"),
        ("\xe9t\xe9", {}, "one word"),
    ],
)
def test_there_is_no_token_without_one_usable_word(tmp_path, content, environ, fragment):
    token_file = None
    if content is not None:
        token_file = tmp_path / "token"
        token_file.write_text(content, encoding="latin-1")
    with pytest.raises(ValueError, match=fragment):
        api_token(None if token_file is None else str(token_file), environ)


def test_a_missing_token_file_is_an_error_naming_it(tmp_path):
    with pytest.raises(ValueError, match=f"--token-file {tmp_path}/none: No such file"):
        api_token(f"{tmp_path}/none", {})


def test_serve_refuses_to_start_without_a_token(monkeypatch, capsys):
    monkeypatch.delenv(API_TOKEN_ENV, raising=False)
    code = main(["serve", "--port", "0"])
    captured = capsys.readouterr()
    assert code == 2
    assert len(captured.err.splitlines()) == 1
    assert API_TOKEN_ENV in captured.err


class Served:
    """Stands for :func:`service.api.serve` in CLI tests: keeps what it was asked to serve instead."""

    def __init__(self) -> None:
        self.calls: list[tuple[object, tuple]] = []
        self.limits: list[ServerLimits] = []

    def __call__(self, app, listener: socket.socket, limits: ServerLimits) -> None:
        self.calls.append((app, listener.getsockname()))
        self.limits.append(limits)


def test_serve_listens_where_asked_and_serves_the_store_then_closes_it(monkeypatch, tmp_path):
    stores, served = OpenedStores(), Served()
    monkeypatch.setattr(store_opening, "open_profile_store", stores, raising=False)
    monkeypatch.setattr(service.api, "serve", served)
    (tmp_path / "token").write_text(TOKEN)
    args = ["serve", "--port", "0", "--profile-store", "sqlite:///x.sqlite", "--token-file", str(tmp_path / "token")]
    assert main(args) == 0
    [(app, (host, port))] = served.calls
    assert (host, port > 0, stores.urls) == ("127.0.0.1", True, ["sqlite:///x.sqlite"])
    assert stores.stores[0].closed
    with TestClient(app) as client:
        assert client.get(f"/profiles/{ANN}", headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("flags", "limits"),
    [
        ([], ServerLimits()),
        (
            ["--header-timeout", "2", "--body-timeout", "3.5", "--keep-alive-timeout", "1", "--max-connections", "9"],
            ServerLimits(header_timeout_s=2, body_timeout_s=3.5, keep_alive_timeout_s=1, max_connections=9),
        ),
    ],
)
def test_serve_takes_its_limits_from_its_flags(monkeypatch, flags, limits):
    served = Served()
    monkeypatch.setattr(store_opening, "open_profile_store", OpenedStores(), raising=False)
    monkeypatch.setattr(service.api, "serve", served)
    monkeypatch.setenv(API_TOKEN_ENV, TOKEN)
    assert main(["serve", "--port", "0", *flags]) == 0
    assert served.limits == [limits]


def test_serve_refuses_a_limit_that_is_not_positive(capsys):
    assert main(["serve", "--port", "0", "--max-connections", "0"]) == 2
    assert "--max-connections" in capsys.readouterr().err


def test_serve_hides_recent_events_older_than_the_configured_ttl(monkeypatch, tmp_path):
    served = Served()
    monkeypatch.setattr(store_opening, "open_profile_store", OpenedStores(), raising=False)
    monkeypatch.setattr(service.api, "serve", served)
    monkeypatch.setenv(API_TOKEN_ENV, TOKEN)
    assert main(["serve", "--port", "0", "--config", str(ttl_config(tmp_path, "2026-11-01T09:05:00Z"))]) == 0
    [(app, _)] = served.calls
    with TestClient(app) as client:
        assert event_ids(get(client, f"/profiles/{ANN}/events")) == ["e3", "e2"]


def test_serve_on_a_busy_port_exits_2_with_one_line(monkeypatch, capsys):
    monkeypatch.setenv(API_TOKEN_ENV, TOKEN)
    with listen("127.0.0.1", 0) as busy:
        code = main(["serve", "--port", str(busy.getsockname()[1])])
    captured = capsys.readouterr()
    assert code == 2
    [line] = captured.err.splitlines()
    assert "cannot listen on 127.0.0.1:" in line


def test_the_listener_says_tcp_so_responses_are_not_held_by_nagle():
    # asyncio sets TCP_NODELAY on accepted sockets only when the listener's protocol is IPPROTO_TCP; with 0, each
    # response on a kept-alive connection waited 40 ms for the client's delayed ACK (make bench showed it).
    with listen("127.0.0.1", 0) as listener:
        assert listener.proto == socket.IPPROTO_TCP


@contextlib.contextmanager
def running_server(app, limits: ServerLimits = DEFAULT_LIMITS) -> Iterator[str]:
    """The real uvicorn server on a free loopback port, in a thread; yields its base URL and stops it after."""
    listener = listen("127.0.0.1", 0)
    port = listener.getsockname()[1]
    server = api_server(app, limits)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + SERVER_TIMEOUT_S
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(SERVER_TIMEOUT_S)
    assert not thread.is_alive(), "uvicorn did not stop"


def test_the_real_server_answers_on_a_loopback_port(settings):
    with running_server(create_app(sample_store(), settings, TOKEN)) as url, httpx2.Client(timeout=5.0) as http:
        assert http.get(f"{url}/health").status_code == 200
        assert http.get(f"{url}/profiles", params={"identity": "CRMID:ann"}).status_code == 401
        response = http.get(f"{url}/profiles", params={"identity": "CRMID:ann"}, headers=AUTH)
        assert (response.status_code, response.json()["person_id"]) == (200, ANN)


SHORT_DEADLINES = ServerLimits(header_timeout_s=0.5, body_timeout_s=0.5, keep_alive_timeout_s=0.5)


def seconds_until_closed(url: str, start: bytes, trickle: bytes, limit_s: float = 5.0) -> float:
    """Sends ``start`` to the server at ``url``, then ``trickle`` every 50 ms until the server closes the
    connection; the seconds that took (at most ``limit_s``)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=limit_s) as connection:
        started = time.monotonic()
        connection.sendall(start)
        connection.settimeout(0.05)
        while time.monotonic() - started < limit_s:
            try:
                if connection.recv(4096) == b"":
                    break
            except TimeoutError:
                pass
            except ConnectionResetError:
                break
            try:
                connection.sendall(trickle)
            except (BrokenPipeError, ConnectionResetError):
                break
        return time.monotonic() - started


def test_a_client_trickling_its_headers_is_closed_at_the_header_timeout(settings):
    with running_server(create_app(sample_store(), settings, TOKEN), SHORT_DEADLINES) as url:
        held_s = seconds_until_closed(url, b"GET /health HTTP/1.1\r\nHost: x\r\n", b"X")
        # After a response, the next request's headers have the same deadline, however early its first byte.
        kept_s = seconds_until_closed(url, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\n", b"X")
    assert 0.4 < held_s < 2.0
    assert 0.4 < kept_s < 2.0


def test_serve_raises_the_open_file_limit_to_hold_its_connections():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4096 if hard == resource.RLIM_INFINITY else min(4096, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    try:
        service.api._allow_open_files(wanted)
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (wanted, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_server_takes_no_more_connections_than_its_limit(settings):
    limits = ServerLimits(max_connections=3)
    with running_server(create_app(sample_store(), settings, TOKEN), limits) as url, contextlib.ExitStack() as stack:
        host, port = url.removeprefix("http://").split(":")
        for _ in range(3):
            stack.enter_context(socket.create_connection((host, int(port)))).sendall(b"GET")
        time.sleep(0.2)
        assert httpx2.get(f"{url}/health", timeout=5.0).status_code == 503


SLOW_CLIENTS = 2000
SLOW_TIMEOUT_S = 3.0
ATTACK_S = 12.0
NORMAL_RATE = 50
# The server in a process of its own, so that the attack's clients do not share its interpreter.
SERVER_SCRIPT = """
import sys
from pipelines.config import load_config
from service.api import ServerLimits, create_app, listen, serve
from tests.service.test_profile_lookup import sample_store

timeout_s = float(sys.argv[2])
app = create_app(sample_store(), load_config(None).stitch_settings(), sys.argv[1])
serve(app, listen("127.0.0.1", 0), ServerLimits(header_timeout_s=timeout_s, body_timeout_s=timeout_s))
"""


class Slowloris:
    """``count`` connections each sending a request's headers a byte a second, each replaced when the server
    closes it, until :meth:`stop`; ``closed_after_s`` holds how long each closed one had been open."""

    def __init__(self, address: tuple[str, int], count: int) -> None:
        self._address = address
        self._count = count
        self._selector = selectors.DefaultSelector()
        self._stopped = threading.Event()
        self.closed_after_s: list[float] = []
        self.opened = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(SERVER_TIMEOUT_S)
        for key in list(self._selector.get_map().values()):
            key.fileobj.close()
        self._selector.close()

    def _open(self) -> None:
        connection = socket.create_connection(self._address, timeout=SERVER_TIMEOUT_S)
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        connection.setblocking(False)
        self._selector.register(connection, selectors.EVENT_READ, time.monotonic())
        self.opened += 1

    def _run(self) -> None:
        next_trickle = time.monotonic()
        while not self._stopped.is_set():
            while len(self._selector.get_map()) < self._count and not self._stopped.is_set():
                self._open()
            for key, _ in self._selector.select(timeout=0.05):
                with contextlib.suppress(OSError):
                    if key.fileobj.recv(4096):
                        continue  # an answer before the headers are done would be a failure of the test's own
                self.closed_after_s.append(time.monotonic() - key.data)
                self._selector.unregister(key.fileobj)
                key.fileobj.close()
            if time.monotonic() >= next_trickle:
                next_trickle += 1.0
                for key in list(self._selector.get_map().values()):
                    with contextlib.suppress(OSError):
                        key.fileobj.send(b"X")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))


@pytest.mark.slow
def test_a_slowloris_of_2000_connections_neither_holds_them_nor_slows_other_clients():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = SLOW_CLIENTS + 512
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    command = [sys.executable, "-c", SERVER_SCRIPT, TOKEN, str(SLOW_TIMEOUT_S)]
    cwd = Path(__file__).parents[2]
    with subprocess.Popen(command, cwd=cwd, stderr=subprocess.PIPE, text=True) as process:
        attack = None
        try:
            base = _announced_url(process)
            host, port = base.removeprefix("http://").split(":")
            with httpx2.Client(base_url=base, timeout=5.0) as warm:
                assert warm.get("/health").status_code == 200
            rss_before = rss_kib(process.pid)
            attack = Slowloris((host, int(port)), SLOW_CLIENTS)
            attack.start()
            deadline = time.monotonic() + SERVER_TIMEOUT_S
            while attack.opened < SLOW_CLIENTS and time.monotonic() < deadline:
                time.sleep(0.1)
            latencies_s, failures = [], 0
            started = time.monotonic()
            # A new connection a request, as clients arriving during the attack make them.
            with httpx2.Client(base_url=base, timeout=5.0, limits=httpx2.Limits(max_keepalive_connections=0)) as http:
                for index in range(int(ATTACK_S * NORMAL_RATE)):
                    time.sleep(max(0.0, started + index / NORMAL_RATE - time.monotonic()))
                    sent = time.monotonic()
                    try:
                        ok = http.get("/health").status_code == 200
                    except httpx2.HTTPError:
                        ok = False
                    latencies_s.append(time.monotonic() - sent)
                    failures += not ok
            rss_after, rss_peak = rss_kib(process.pid), rss_kib(process.pid, "VmHWM")
        finally:
            if attack is not None:
                attack.stop()
            process.send_signal(signal.SIGINT)
            process.wait(SERVER_TIMEOUT_S)
    latencies_s.sort()
    p99_ms = latencies_s[int(len(latencies_s) * 0.99) - 1] * 1000
    closed = sorted(attack.closed_after_s)
    success = 1 - failures / len(latencies_s)
    print(
        f"slowloris: {attack.opened} slow connections opened, {len(closed)} closed by the server after "
        f"{closed[0]:.2f} to {closed[-1]:.2f} s (median {closed[len(closed) // 2]:.2f}, timeout {SLOW_TIMEOUT_S} s); "
        f"normal traffic {len(latencies_s)} requests, {success:.2%} success, p99 {p99_ms:.0f} ms; "
        f"server RSS {rss_before // 1024} -> {rss_after // 1024} MiB (peak {rss_peak // 1024} MiB)"
    )
    assert success >= 0.99
    assert p99_ms < 250
    assert len(closed) >= SLOW_CLIENTS
    assert closed[0] > SLOW_TIMEOUT_S - 0.1 and closed[-1] < SLOW_TIMEOUT_S + 2.0


@pytest.mark.slow
@needs_sqlite_store
def test_profilestream_serve_on_the_real_sqlite_store(tmp_path):
    url = f"sqlite:///{tmp_path}/profiles.sqlite"
    with open_profile_store(url) as store:
        store.write(SAMPLE_WRITE)
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--port", "0", "--profile-store", url]
    environment = {**os.environ, API_TOKEN_ENV: TOKEN}
    cwd = Path(__file__).parents[2]
    with subprocess.Popen(command, env=environment, cwd=cwd, stderr=subprocess.PIPE, text=True) as process:
        try:
            base = _announced_url(process)
            with httpx2.Client(base_url=base, headers=AUTH, timeout=5.0) as http:
                assert http.get("/profiles", params={"identity": "Email:Ann@Example.com"}).json() == {
                    "lookup": "Email:Ann@Example.com",
                    **ANN_VIEW,
                }
                assert http.get(f"/profiles/{RETIRED}/events", params={"limit": 1}).json() == {
                    "person_id": ANN,
                    "events": ANN_VIEW["events"]["recent"][:1],
                }
                assert http.get("/profiles", params={"identity": "CRMID:nobody"}).status_code == 404
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(SERVER_TIMEOUT_S)
    assert process.returncode == 130


def _announced_url(process: subprocess.Popen) -> str:
    """The URL ``serve`` logs once it listens, read from its stderr within the timeout."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stderr], daemon=True).start()
    deadline = time.monotonic() + SUBPROCESS_START_TIMEOUT_S
    seen = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            seen.append(lines.get(timeout=left))
        except queue.Empty:
            break
        if match := re.search(r"Profile Access API on (http://\S+)", seen[-1]):
            return match.group(1)
    pytest.fail(f"serve did not announce its address: {json.dumps(seen)}")
