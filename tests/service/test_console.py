"""The console of ``profilestream serve`` (:mod:`service.console`): its page and assets, the identity graph route and
the pipeline figures route.

The identity store is the one ``profilestream run`` builds from ``test_identity_cli``'s shared-device story, so that
its graph has a link removed by a rule; the pipeline figures are read from metrics files written here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import service.api
import tests.pipelines.test_identity_cli as identity_cli
from pipelines.cli import command_parser, main
from pipelines.config import load_config
from service import console
from service.api import API_TOKEN_ENV, create_app
from service.identity_lookup import lookup_identity
from service.pipeline_metrics import PipelineMetrics, write_snapshot
from stores import opening
from tests.service.test_api import Served
from tests.service.test_profile_lookup import OpenedStores, sample_store

TOKEN = "console-Token_1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SECOND_US = 1_000_000
T0_US = 1_796_000_000 * SECOND_US
SUMMARY = {
    "messages": 100,
    "records": 120,
    "valid": 110,
    "failed": 10,
    "profiles_written": 40,
    "failed_by_code": {"DECODE.INVALID_JSON": 4, "VALIDATION.MISSING_REQUIRED": 6},
    "profile_freshness_ms": {"p50": 25, "p95": 250, "p99": 1000},
}
PAGE_IDS = ["token", "lookup", "lookup-go", "follow", "identities", "attributes", "events", "graph", "pipeline"]
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


@pytest.fixture(scope="module")
def settings():
    return load_config(None).stitch_settings()


# The identity store ``profilestream run`` builds of the shared-device logins, where a rule removed the device's links
# to Ann (a sqlite:/// URL).
identity_store = identity_cli.store


def console_app(settings, identity_store_url: str, metrics: PipelineMetrics | None = None) -> TestClient:
    def open_store():
        return opening.open_identity_store(identity_store_url, read_only=True)

    app = create_app(
        sample_store(),
        settings,
        TOKEN,
        routers=[
            console.identities_router(open_store, settings),
            console.pipeline_router(metrics or PipelineMetrics(None)),
        ],
        open_routers=[console.console_router()],
    )
    return TestClient(app)


@pytest.fixture
def client(settings, identity_store) -> TestClient:
    return console_app(settings, identity_store)


# --- the page and its assets -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "media_type"),
    [("/console", "text/html"), ("/console/console.js", "text/javascript"), ("/console/console.css", "text/css")],
)
def test_the_page_and_its_assets_are_served_without_a_token(client, path, media_type):
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert "connect-src 'self'" in response.headers["content-security-policy"]


@pytest.mark.parametrize("name", ["index.html", "..%2Fconsole.py", "missing.js"])
def test_nothing_else_under_the_console_is_served(client, name):
    assert client.get(f"/console/{name}").status_code == 404


def test_the_console_loads_nothing_from_elsewhere():
    for path in console.CONSOLE_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        # The only absolute URL is SVG's XML namespace, a name rather than something fetched.
        assert set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"')]*", text)) <= {SVG_NAMESPACE}, path.name
        assert "@import" not in text, path.name
        for reference in re.findall(r"""(?:src|href)=["']([^"']+)""", text):
            # data:, is the empty favicon, which spares the browser asking for /favicon.ico.
            assert reference.startswith("/console/") or reference == "data:,", (path.name, reference)
        for fetched in re.findall(r"""(?:get|fetch)\(\s*["']([^"']+)""", text):
            assert fetched.startswith("/"), (path.name, fetched)


def test_the_page_has_the_documented_dom_ids(client):
    page = client.get("/console").text
    for element_id in PAGE_IDS:
        assert f'id="{element_id}"' in page
    assert re.search(r'<svg id="graph"', page)
    # The comment at the top lists them for the end-to-end test.
    header = page.split("-->", 1)[0]
    for element_id in PAGE_IDS:
        assert f"#{element_id}" in header


def test_every_console_file_ships_in_the_package():
    setup_text = (Path(__file__).parents[2] / "setup.py").read_text(encoding="utf-8")
    shipped = re.search(r"CONSOLE_FILES = \[.*for ext in \(([^)]*)\)", setup_text)
    assert shipped is not None
    extensions = set(re.findall(r'"(\w+)"', shipped.group(1)))
    assert {path.suffix.lstrip(".") for path in console.CONSOLE_DIR.iterdir()} <= extensions


# --- GET /identities/{NAMESPACE:ID} ----------------------------------------------------------------------------


@pytest.mark.parametrize(("headers", "status"), [({}, 401), ({"Authorization": "Bearer another-token"}, 403)])
def test_the_identity_route_needs_the_api_token(client, headers, status):
    assert client.get("/identities/CRMID:ann", headers=headers).status_code == status


@pytest.mark.parametrize("asked", ["CRMID:ann", "Email:ANN@Example.com", f"ECID:{identity_cli.DEVICE}"])
def test_the_identity_route_answers_as_identity_get(client, identity_store, capsys, asked):
    assert main(["identity", "get", "--store", identity_store, "--identity", asked]) == 0
    [line] = capsys.readouterr().out.splitlines()
    response = client.get(f"/identities/{asked}", headers=AUTH)
    assert response.status_code == 200
    assert response.json() == json.loads(line)


def test_the_identity_route_shows_the_links_a_rule_removed(client, settings, identity_store):
    answer = client.get("/identities/CRMID:ann", headers=AUTH).json()
    removed = [link for link in answer["links"] if link["removed_by"] is not None]
    assert removed, "the device's links to Ann were removed when Bob logged in"
    with opening.open_identity_store(identity_store, read_only=True) as store:
        assert answer == lookup_identity("CRMID:ann", store, settings)


def test_an_identity_with_a_slash_reaches_the_route_whole(client):
    # %2F is decoded before routing: the route takes the rest of the path, so this is a lookup, not a 404 route.
    response = client.get("/identities/CRMID:a%2Fb", headers=AUTH)
    assert response.status_code == 404
    assert response.json() == {"detail": "not found"}


@pytest.mark.parametrize("asked", ["nonsense", ":ann", "Nowhere:ann", "Email:not-an-address"])
def test_a_malformed_identity_is_422_without_echoing_it(client, asked):
    response = client.get(f"/identities/{asked}", headers=AUTH)
    assert response.status_code == 422
    assert asked not in response.text


def test_an_identity_store_that_cannot_be_opened_is_503(settings, tmp_path):
    client = console_app(settings, f"sqlite:///{tmp_path}/missing.sqlite")
    response = client.get("/identities/CRMID:ann", headers=AUTH)
    assert response.status_code == 503


# --- GET /pipeline/metrics ---------------------------------------------------------------------------------------


def metrics_client(settings, identity_store, path: Path | None, now_us: list[int]) -> TestClient:
    metrics = PipelineMetrics(None if path is None else str(path), clock=lambda: now_us[0])
    return console_app(settings, identity_store, metrics)


def test_the_pipeline_route_needs_the_api_token(client):
    assert client.get("/pipeline/metrics").status_code == 401


def test_the_pipeline_figures_of_a_metrics_file(settings, identity_store, tmp_path):
    path = tmp_path / "metrics.json"
    now_us = [T0_US + 3 * SECOND_US]
    client = metrics_client(settings, identity_store, path, now_us)
    write_snapshot(str(path), SUMMARY, running=True, at_us=T0_US)
    first = client.get("/pipeline/metrics", headers=AUTH).json()
    assert first == {
        "available": True,
        "at": "2026-11-30T00:53:20Z",
        "age_s": 3.0,
        "running": True,
        "messages": 100,
        "messages_per_s": None,
        "records": 120,
        "failed": 10,
        "failed_by_code": {"DECODE.INVALID_JSON": 4, "VALIDATION.MISSING_REQUIRED": 6},
        "profile_freshness_ms": {"p50": 25, "p99": 1000},
    }
    write_snapshot(str(path), {**SUMMARY, "messages": 150}, running=True, at_us=T0_US + 2 * SECOND_US)
    second = client.get("/pipeline/metrics", headers=AUTH).json()
    assert (second["messages"], second["messages_per_s"], second["age_s"]) == (150, 25.0, 1.0)
    # Read again before the run writes anew: the same rate, not zero.
    assert client.get("/pipeline/metrics", headers=AUTH).json()["messages_per_s"] == 25.0


def test_a_new_run_starts_the_rate_again(settings, identity_store, tmp_path):
    path = tmp_path / "metrics.json"
    client = metrics_client(settings, identity_store, path, [T0_US])
    write_snapshot(str(path), SUMMARY, running=False, at_us=T0_US)
    client.get("/pipeline/metrics", headers=AUTH)
    write_snapshot(str(path), {**SUMMARY, "messages": 3}, running=True, at_us=T0_US + SECOND_US)
    assert client.get("/pipeline/metrics", headers=AUTH).json()["messages_per_s"] is None


@pytest.mark.parametrize(
    ("content", "detail"),
    [(None, "no metrics file yet"), ("{not json", "cannot be read"), ('{"at": "yesterday", "summary": {}}', "cannot")],
)
def test_without_a_readable_metrics_file_the_figures_are_unavailable(
    settings, identity_store, tmp_path, content, detail
):
    path = tmp_path / "metrics.json"
    if content is not None:
        path.write_text(content)
    answer = metrics_client(settings, identity_store, path, [T0_US]).get("/pipeline/metrics", headers=AUTH).json()
    assert answer["available"] is False
    assert detail in answer["detail"]


def test_serve_without_a_metrics_file_says_so(client):
    answer = client.get("/pipeline/metrics", headers=AUTH).json()
    assert answer == {"available": False, "detail": "serve was started without --metrics-file"}


def test_serve_takes_a_metrics_file_and_an_identity_store():
    args = command_parser().parse_args(["serve", "--metrics-file", "m.json", "--identity-store", "sqlite:///i.db"])
    assert (args.metrics_file, args.identity_store) == ("m.json", "sqlite:///i.db")


# --- profilestream serve -----------------------------------------------------------------------------------------


def served_app(monkeypatch, *flags: str):
    """The app ``profilestream serve`` builds with ``flags`` (its profile store and server stood in for)."""
    served = Served()
    monkeypatch.setattr(opening, "open_profile_store", OpenedStores(), raising=False)
    monkeypatch.setattr(service.api, "serve", served)
    monkeypatch.setenv(API_TOKEN_ENV, TOKEN)
    assert main(["serve", "--port", "0", *flags]) == 0
    [(app, _)] = served.calls
    return app


def test_serve_serves_the_console_on_its_identity_store_and_metrics_file(monkeypatch, identity_store, tmp_path):
    path = tmp_path / "metrics.json"
    write_snapshot(str(path), SUMMARY, running=True, at_us=T0_US)
    app = served_app(monkeypatch, "--identity-store", identity_store, "--metrics-file", str(path))
    with TestClient(app) as client:
        assert client.get("/console").status_code == 200
        assert client.get("/identities/CRMID:ann", headers=AUTH).json()["person_id"] is not None
        assert client.get("/pipeline/metrics", headers=AUTH).json()["messages"] == SUMMARY["messages"]


def test_serve_refuses_an_identity_store_url_it_cannot_read(monkeypatch, capsys):
    monkeypatch.setenv(API_TOKEN_ENV, TOKEN)
    assert main(["serve", "--port", "0", "--identity-store", "mysql://db/identities"]) == 2
    assert "mysql" in capsys.readouterr().err
