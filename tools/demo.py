"""``make demo``: from a web page to a profile on this machine. A small shop sends XDM beacons through the web SDK
(``clients/web``) to the inlet; the pipeline turns them into persons and profiles; the console shows them forming.

    python -m tools.demo [--folder DIR]

Starts Google's Pub/Sub emulator with a topic and subscription; ``profilestream serve`` with the inlet on that topic
(connection ``shop``: public, no token, CORS for the shop's origin only), the profile API and the console;
``profilestream run`` on the subscription (profiles within a second or two, lake files every 10 s); and the shop's
static pages (``tools/demo_shop``) with the SDK beside them, on another origin, as a real site would be. It prints the
shop's and the console's addresses and the console's token, and runs until Ctrl-C; everything it writes stays in
``--folder`` (``data/demo``). :func:`running_demo` is the same for a ``with`` block (the browser test's).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import http.server
import json
import os
import secrets
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import yaml

from tools.bench_e2e import healthy, pipeline_run
from tools.local_servers import LOOPBACK, free_port, local_server
from tools.pubsub_emulator import EMULATOR_HOST_ENV, Topology, running_emulator

ROOT = Path(__file__).resolve().parents[1]
SHOP_DIR = Path(__file__).resolve().parent / "demo_shop"
SDK_DIR = ROOT / "clients" / "web" / "src"
CONNECTION = "shop"
EXPERIENCE_EVENT = "https://ns.adobe.com/xdm/context/experienceevent"
SCHEMA_REF = {"id": EXPERIENCE_EVENT, "contentType": "application/vnd.adobe.xed-full+json;version=1"}
COMMIT_INTERVAL_S = 10


@dataclasses.dataclass(frozen=True)
class Demo:
    """Where the running demo answers: the shop's first page, the console, the API's base URL and token, and the
    folder holding its stores, lake and logs."""

    shop: str
    console: str
    api: str
    token: str
    folder: Path


def write_config(folder: Path, shop_origin: str) -> Path:
    """The demo's configuration: the lake's commit interval and the shop's inlet connection."""
    connection = {
        "public": True,
        "allowed_origins": [shop_origin],
        "rate_per_second": 50,
        "burst": 100,
        "schema": EXPERIENCE_EVENT,
    }
    path = folder / "profilestream.yaml"
    config = {"commit_interval_seconds": COMMIT_INTERVAL_S, "inlet": {"connections": {CONNECTION: connection}}}
    path.write_text(yaml.safe_dump(config))
    return path


class _ShopHandler(http.server.SimpleHTTPRequestHandler):
    """The shop's pages, ``/sdk/`` from the SDK's sources, and ``/demo-config.json``: what the pages init the SDK
    with."""

    def __init__(self, *args, sdk_config: bytes, **kwargs) -> None:
        self._sdk_config = sdk_config
        super().__init__(*args, directory=str(SHOP_DIR), **kwargs)

    def translate_path(self, path: str) -> str:
        if path.startswith("/sdk/"):
            return str(SDK_DIR / Path(path.split("?", 1)[0]).name)
        return super().translate_path(path)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != "/demo-config.json":
            super().do_GET()
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self._sdk_config)))
        self.end_headers()
        self.wfile.write(self._sdk_config)

    def log_message(self, format: str, *args) -> None:  # quiet: the demo prints its own lines
        return


@contextlib.contextmanager
def shop_server(port: int, inlet_url: str) -> Iterator[str]:
    """The shop's static pages on ``port`` for the block, their SDK pointed at ``inlet_url``; yields the shop's URL."""
    sdk_config = {
        "endpoint": inlet_url,
        "connectionId": CONNECTION,
        "schemaRef": SCHEMA_REF,
        "datasetId": "experience_events",
        "batchSize": 5,
        "flushIntervalMs": 500,
    }
    handler = functools.partial(_ShopHandler, sdk_config=json.dumps(sdk_config).encode())
    server = http.server.ThreadingHTTPServer((LOOPBACK, port), handler)
    thread = threading.Thread(target=server.serve_forever, name="demo-shop", daemon=True)
    thread.start()
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def running_demo(folder: Path) -> Iterator[Demo]:
    """The whole demo for the ``with`` block (see the module docstring), stopped at its end."""
    folder.mkdir(parents=True, exist_ok=True)
    topology = Topology.named(topic="demo-events", subscription="demo-events-run", dead_letter_topic="demo-dead")
    shop_port, api_port = free_port(), free_port()
    config = write_config(folder, f"http://{LOOPBACK}:{shop_port}")
    token = secrets.token_urlsafe(24)
    stores = [
        f"--identity-store=sqlite:///{folder}/identity.sqlite",
        f"--profile-store=sqlite:///{folder}/profiles.sqlite",
    ]
    api = f"http://{LOOPBACK}:{api_port}"
    cli = [sys.executable, "-m", "pipelines.cli"]
    metrics = f"--metrics-file={folder}/metrics.json"
    serve = [*cli, "serve", f"--port={api_port}", f"--config={config}", f"--pubsub-topic={topology.topic}", *stores]
    serve.append(metrics)
    run = [*cli, "run", f"--source=pubsub:{topology.subscription}", f"--config={config}", f"--lake={folder}/lake"]
    run += [*stores, f"--dead-letter-topic={topology.dead_letter_topic}", metrics]
    with running_emulator(folder / "pubsub", topology) as host:
        env = {**os.environ, EMULATOR_HOST_ENV: host, "PROFILESTREAM_API_TOKEN": token}
        serve_healthy = functools.partial(healthy, api)
        with (
            local_server("profilestream serve", serve, folder / "serve.log", serve_healthy, port=api_port, env=env),
            pipeline_run(run, folder / "run.log", env),
            shop_server(shop_port, api) as shop,
        ):
            yield Demo(shop=f"{shop}/index.html", console=f"{api}/console", api=api, token=token, folder=folder)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("data/demo"), help="stores, lake and logs (data/demo)")
    args = parser.parse_args(argv)
    with running_demo(args.folder) as demo:
        print(f"shop:    {demo.shop}", flush=True)
        print(f"console: {demo.console}  (token: {demo.token})", flush=True)
        print(f"logs, stores and lake in {demo.folder}/; Ctrl-C stops everything", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
