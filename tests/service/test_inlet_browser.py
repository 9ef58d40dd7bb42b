"""The inlet as a browser reaches it (:mod:`service.inlet`): CORS per connection, public connections, ``text/plain``
and gzip bodies, and a gzip bomb against a real ``profilestream serve``.

The routes run in process through FastAPI's TestClient on test_inlet's :class:`FakePublisher`; the bomb and the
browser-shaped load go over loopback to a real server.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import zlib
from collections.abc import Iterator

import httpx2
import pytest
from fastapi.testclient import TestClient

from core.errors import ConfigError
from messages.decoding import NOT_JSON
from pipelines.config import load_config
from schemas.registry import SchemaRegistry
from service.inlet import BAD_GZIP, CORS_ALLOWED_HEADERS, CORS_MAX_AGE_S, Inlet, Judge, TransactionIds
from service.settings import InletConnection, InletSettings
from tests.service.test_api import running_server
from tests.service.test_inlet import EVENT, EVENT_BYTES, WEB_TOKEN, Clock, FakePublisher, app_with
from tools import loadgen
from tools.bench_e2e import inlet as running_inlet

SHOP = "https://shop.example.com"
BLOG = "https://blog.example.com"
ELSEWHERE = "https://evil.example.net"
SETTINGS = InletSettings(
    max_request_bytes=4096,
    connections={
        "shop": InletConnection(public=True, allowed_origins=(SHOP,), rate_per_second=1, burst=2),
        "blog": InletConnection(public=True, allowed_origins=(BLOG,)),
        "admin": InletConnection(token=WEB_TOKEN, allowed_origins=(SHOP,)),
        "server": InletConnection(),
    },
)
BATCH_BYTES = json.dumps({"messages": [EVENT, EVENT]}).encode()
TEXT_PLAIN = {"Content-Type": "text/plain;charset=UTF-8"}
GZIP = {"Content-Encoding": "gzip"}
CORS_HEADERS = (
    "access-control-allow-origin",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
    "access-control-expose-headers",
)
MIB = 1 << 20
BOMB_BLOCKS, BOMB_BLOCK_MIB = 64, 16  # 1 GiB of zeros, about 1 MB compressed
RSS_GROWTH_LIMIT_KB = 20 * 1024


@pytest.fixture(scope="module")
def judge() -> Judge:
    return Judge(SchemaRegistry.load())


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
def client(judge, publisher) -> Iterator[TestClient]:
    inlet = Inlet(SETTINGS, judge, publisher, environ={}, clock=Clock(), ids=TransactionIds("abc"))
    with TestClient(app_with(inlet)) as test_client:
        yield test_client


def cors_headers(response) -> dict[str, str]:
    return {name: value for name, value in response.headers.items() if name.startswith("access-control-")}


def event_of(size: int) -> bytes:
    """An event of exactly ``size`` bytes of JSON, padded with spaces in a field."""
    unpadded = len(json.dumps({**EVENT, "pad": ""}).encode())
    return json.dumps({**EVENT, "pad": " " * (size - unpadded)}).encode()


def zeros_gzip(blocks: int, block_mib: int) -> bytes:
    """``blocks`` blocks of ``block_mib`` MiB of zeros as one gzip stream. A block is compressed once and repeated,
    which a full flush after it (the compressor forgets what came before) makes exact; larger blocks, fewer
    flushes, a better ratio."""
    block = bytes(block_mib * MIB)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    compressed_block = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(blocks):
        crc = zlib.crc32(block, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # gzip, deflate, no flags, no time, unknown OS
    trailer = struct.pack("<II", crc, (blocks * len(block)) & 0xFFFFFFFF)
    return header + compressed_block * blocks + compressor.flush() + trailer


# --- configuration ----------------------------------------------------------------------------------------------


def test_a_public_connection_with_its_origins_and_rate_is_read_from_the_configuration(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "inlet:\n  connections:\n    shop:\n      public: true\n      rate_per_second: 50\n      burst: 100\n"
        f"      allowed_origins: [{SHOP}, 'http://localhost:3000']\n"
    )
    assert load_config(path).inlet.connections["shop"] == InletConnection(
        public=True, rate_per_second=50, burst=100, allowed_origins=(SHOP, "http://localhost:3000")
    )


@pytest.mark.parametrize(
    ("connection", "message"),
    [
        (f"{{public: true, allowed_origins: [{SHOP}]}}", "a public connection must set its rate limit"),
        (f"{{public: true, burst: 5, allowed_origins: [{SHOP}]}}", "a public connection must set its rate limit"),
        ("{public: true, rate_per_second: 5, burst: 5}", "a public connection must name its allowed_origins"),
        (
            f"{{public: true, token: t, rate_per_second: 5, burst: 5, allowed_origins: [{SHOP}]}}",
            "a public connection asks no token",
        ),
        (f"{{allowed_origins: [{SHOP}]}}", "allowed_origins without a token make the connection public"),
        ("{token: t, allowed_origins: ['*']}", "'*' is not an origin"),
        ("{token: t, allowed_origins: ['https://shop.example.com/']}", "is not an origin"),
        ("{token: t, allowed_origins: ['https://Shop.example.com']}", "is not an origin"),
        ("{token: t, allowed_origins: [null]}", "None is not an origin"),
        ("{token: t, allowed_origins: https://shop.example.com}", "allowed_origins must be list"),
        ("{public: yes please}", "public must be bool"),
    ],
)
def test_a_connection_open_to_browsers_is_refused_in_one_line_unless_safe(tmp_path, connection, message):
    path = tmp_path / "config.yaml"
    path.write_text(f"inlet: {{connections: {{shop: {connection}}}}}")
    with pytest.raises(ConfigError, match=message.replace("*", r"\*")) as refused:
        load_config(path)
    assert "inlet.connections.shop" in str(refused.value) and "\n" not in str(refused.value)


# --- CORS -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/collection/shop", "/collection/batch/shop"])
def test_a_preflight_from_an_allowed_origin_allows_the_post(client, path):
    response = client.options(path, headers={"Origin": SHOP, "Access-Control-Request-Method": "POST"})
    assert response.status_code == 204
    assert cors_headers(response) == {
        "access-control-allow-origin": SHOP,
        "access-control-allow-methods": "POST, OPTIONS",
        "access-control-allow-headers": CORS_ALLOWED_HEADERS,
        "access-control-max-age": str(CORS_MAX_AGE_S),
    }
    assert response.headers["vary"] == "Origin"


@pytest.mark.parametrize(
    ("path", "origin"),
    [
        ("/collection/shop", ELSEWHERE),
        ("/collection/batch/shop", BLOG),  # another connection's origin
        ("/collection/blog", SHOP),
        ("/collection/server", SHOP),  # a connection allowing no origin
        ("/collection/unknown", SHOP),
        ("/collection/shop", None),
    ],
)
def test_a_preflight_from_any_other_origin_is_403_without_cors_headers(client, path, origin):
    headers = {"Access-Control-Request-Method": "POST"} | ({"Origin": origin} if origin else {})
    response = client.options(path, headers=headers)
    assert response.status_code == 403
    assert cors_headers(response) == {} and "vary" not in response.headers


def test_every_answer_to_an_allowed_origin_carries_cors_headers(client):
    origin = {"Origin": SHOP}
    accepted = client.post("/collection/shop", content=EVENT_BYTES, headers=origin)
    bad_json = client.post("/collection/shop", content=b"{", headers=origin)
    limited = client.post("/collection/shop", content=EVENT_BYTES, headers=origin)  # the burst of 2 is spent
    no_token = client.post("/collection/admin", content=EVENT_BYTES, headers=origin)
    assert [accepted.status_code, bad_json.status_code, limited.status_code, no_token.status_code] == [
        200,
        400,
        429,
        401,
    ]
    for response in (accepted, bad_json, no_token):
        assert cors_headers(response) == {"access-control-allow-origin": SHOP}
        assert response.headers["vary"] == "Origin"
    assert cors_headers(limited) == {
        "access-control-allow-origin": SHOP,
        "access-control-expose-headers": "Retry-After",
    }
    assert limited.headers["retry-after"] == "1"


def test_a_token_connection_allowing_an_origin_still_asks_its_token(client):
    headers = {"Origin": SHOP, "Authorization": f"Bearer {WEB_TOKEN}"}
    response = client.post("/collection/admin", content=EVENT_BYTES, headers=headers)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == SHOP


@pytest.mark.parametrize(
    ("path", "origin", "token"),
    [
        ("/collection/shop", ELSEWHERE, {}),
        ("/collection/shop", BLOG, {}),  # another connection's origin
        ("/collection/server", SHOP, {}),  # a connection allowing no origin
        ("/collection/admin", BLOG, {"Authorization": f"Bearer {WEB_TOKEN}"}),  # the right token, the wrong page
    ],
)
def test_a_post_from_an_origin_not_allowed_is_403_without_cors_headers_and_not_published(
    client, publisher, path, origin, token
):
    # Without a token, text/plain is a simple request: a browser sends it without a preflight.
    response = client.post(path, content=EVENT_BYTES, headers={"Origin": origin} | TEXT_PLAIN | token)
    assert response.status_code == 403
    assert cors_headers(response) == {} and "vary" not in response.headers
    assert publisher.published == []


def test_a_page_of_another_origin_spends_none_of_the_connections_rate(client):
    for _ in range(3):
        assert client.post("/collection/shop", content=EVENT_BYTES, headers={"Origin": BLOG}).status_code == 403
    assert client.post("/collection/shop", content=EVENT_BYTES, headers={"Origin": SHOP}).status_code == 200


def test_a_request_without_an_origin_is_not_a_browsers_and_needs_no_cors(client):
    response = client.post("/collection/shop", content=EVENT_BYTES)
    assert response.status_code == 200
    assert cors_headers(response) == {}


# --- bodies -----------------------------------------------------------------------------------------------------


def test_a_text_plain_body_is_json_as_sendbeacon_sends_it(client, publisher):
    single = client.post("/collection/shop", content=EVENT_BYTES, headers=TEXT_PLAIN)
    batch = client.post("/collection/batch/blog", content=BATCH_BYTES, headers=TEXT_PLAIN)
    assert (single.status_code, batch.status_code) == (200, 207)
    assert len(publisher.published) == 3
    assert publisher.published[0][0] == EVENT_BYTES


def test_a_text_plain_body_that_is_not_json_is_400_as_json_would_be(client):
    as_text = client.post("/collection/blog", content=b"hello", headers=TEXT_PLAIN)
    as_json = client.post("/collection/blog", content=b"hello", headers={"Content-Type": "application/json"})
    assert as_text.status_code == as_json.status_code == 400
    assert as_text.json() == as_json.json()
    assert as_text.json()["report"]["cause"]["_streamingValidation"][0]["causingExceptions"][0]["keyword"] == NOT_JSON


def test_gzip_bodies_are_published_decompressed_on_both_routes(client, publisher):
    headers = GZIP | TEXT_PLAIN | {"Origin": BLOG}
    single = client.post("/collection/blog", content=gzip.compress(EVENT_BYTES), headers=headers)
    batch = client.post("/collection/batch/blog", content=gzip.compress(BATCH_BYTES), headers=headers)
    assert (single.status_code, batch.status_code) == (200, 207)
    assert [entry.keys() for entry in batch.json()["responses"]] == [{"xactionId"}, {"xactionId"}]
    assert publisher.published[0][0] == EVENT_BYTES
    assert [json.loads(data) for data, _ in publisher.published[1:]] == [EVENT, EVENT]
    assert single.headers["access-control-allow-origin"] == BLOG


@pytest.mark.parametrize(
    "body",
    [
        b"not gzip at all",
        gzip.compress(EVENT_BYTES)[:-10],  # cut short
        gzip.compress(EVENT_BYTES) + b"trailing",
        b"",
    ],
)
def test_a_corrupt_gzip_body_is_400_with_a_stable_code(client, publisher, body):
    response = client.post("/collection/server", content=body, headers=GZIP)
    assert response.status_code == 400
    [violation] = response.json()["report"]["cause"]["_streamingValidation"][0]["causingExceptions"]
    assert violation["keyword"] == BAD_GZIP
    assert publisher.published == []


def test_a_gzip_body_over_the_limit_once_decompressed_is_413(client, publisher):
    at_limit, over = (event_of(SETTINGS.max_request_bytes + extra) for extra in (0, 1))
    assert client.post("/collection/server", content=gzip.compress(at_limit), headers=GZIP).status_code == 200
    response = client.post("/collection/server", content=gzip.compress(over), headers=GZIP)
    assert response.status_code == 413
    assert "once decompressed" in response.json()["report"]["message"]


@pytest.mark.parametrize("encoding", ["br", "deflate", "gzip, gzip", "compress"])
def test_another_content_encoding_is_415(client, encoding):
    response = client.post("/collection/server", content=EVENT_BYTES, headers={"Content-Encoding": encoding})
    assert response.status_code == 415


def test_identity_encoding_is_no_encoding(client):
    response = client.post("/collection/server", content=EVENT_BYTES, headers={"Content-Encoding": "identity"})
    assert response.status_code == 200


def test_the_bomb_maker_makes_a_gzip_stream_of_zeros():
    assert gzip.decompress(zeros_gzip(3, 2)) == bytes(6 * MIB)


# --- over loopback ----------------------------------------------------------------------------------------------


def memory_kb(pid: int) -> dict[str, int]:
    """The resident set (``VmRSS``) and its peak (``VmHWM``) of process ``pid``, in kB."""
    with open(f"/proc/{pid}/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


@pytest.mark.integration
@pytest.mark.slow
def test_a_gzip_bomb_is_413_without_the_server_growing(topology, tmp_path):
    bomb = zeros_gzip(BOMB_BLOCKS, BOMB_BLOCK_MIB)
    limit = InletSettings().max_request_bytes
    assert len(bomb) < limit  # so that only its decompressed size can refuse it
    config = tmp_path / "config.yaml"
    config.write_text("inlet: {connections: {server: {}}}")
    with (
        running_inlet(tmp_path, config, topology.topic, os.environ, "bomb") as served,
        httpx2.Client(base_url=served.url, timeout=30.0) as http,
    ):
        # Warm the paths a gzip body takes, so that what they allocate once is not counted against the bomb.
        warm = http.post("/collection/server", content=gzip.compress(EVENT_BYTES), headers=GZIP)
        assert warm.status_code == 200
        before = memory_kb(served.process.pid)
        response = http.post("/collection/server", content=bomb, headers=GZIP | TEXT_PLAIN)
        after = memory_kb(served.process.pid)
    assert response.status_code == 413
    assert after["VmRSS"] - before["VmRSS"] < RSS_GROWTH_LIMIT_KB
    assert after["VmHWM"] - before["VmHWM"] < RSS_GROWTH_LIMIT_KB  # nor did it spike meanwhile


def test_loadgen_sends_browser_shaped_batches_the_inlet_takes(judge, publisher, capsys):
    inlet = Inlet(
        InletSettings(connections={"shop": InletConnection(public=True, allowed_origins=(SHOP,), burst=1000)}),
        judge,
        publisher,
        environ={},
    )
    with running_server(app_with(inlet)) as url:
        argv = ["--target", f"{url}/collection/batch/shop", "--browser", SHOP, "--count", "40", "--rate", "2000"]
        code = loadgen.main([*argv, "--batch-size", "10", "--seed", "3"])
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert code == 0
    assert (set(report["statuses"]), report["failed"]) == ({"207"}, 0)  # batches of 10, or fewer when the pacer lags
    assert len(publisher.published) == 40


def test_loadgen_refuses_browser_for_pub_sub(capsys):
    argv = ["--target", "pubsub:projects/p/topics/t", "--browser", SHOP, "--count", "1"]
    assert loadgen.main(argv) == 2
    assert capsys.readouterr().err.strip() == "profilestream loadgen: error: --browser applies to an HTTP target"
