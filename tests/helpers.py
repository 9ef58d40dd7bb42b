"""Helpers for end-to-end tests: small replay files in Pub/Sub REST form, ways to read the lake back, and the
Pub/Sub emulator topology a streaming run reads (the fixtures ``small_stream`` and ``topology``, which
``tests/conftest.py`` offers to every test)."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tools.pubsub_emulator import EMULATOR_HOST_ENV, Topology, create_topology

EVENT_SCHEMA = "https://ns.adobe.com/xdm/context/experienceevent"
PROFILE_SCHEMA = "https://ns.adobe.com/xdm/context/profile"
START = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)


def rest_line(payload: bytes | dict, message_id: str, publish_time: datetime, attributes: dict | None = None) -> str:
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    message = {
        "data": base64.b64encode(data).decode(),
        "messageId": message_id,
        "publishTime": publish_time.isoformat().replace("+00:00", "Z"),
    }
    if attributes:
        message["attributes"] = attributes
    return json.dumps(message)


def envelope(entity: dict, schema_id: str = EVENT_SCHEMA, dataset_id: str | None = None) -> dict:
    header = {"schemaRef": {"id": schema_id, "contentType": "application/vnd.adobe.xed-full+json;version=1"}}
    if dataset_id is not None:
        header["datasetId"] = dataset_id
    return {"header": header, "body": {"xdmMeta": {"schemaRef": header["schemaRef"]}, "xdmEntity": entity}}


def event(event_id: str, at: datetime, ecid: str = "1" * 38) -> dict:
    return {
        "_id": event_id,
        "timestamp": at.isoformat(),
        "eventType": "web.webpagedetails.pageViews",
        "identityMap": {"ECID": [{"id": ecid, "authenticatedState": "ambiguous", "primary": True}]},
        "web": {"webPageDetails": {"name": "home", "URL": "https://example.com/"}},
    }


def stream_lines(minutes: int, per_minute: int) -> list[str]:
    """A stream over ``minutes`` of publish time: valid events, a batch, invalid messages and redeliveries."""
    lines = []
    for minute in range(minutes):
        for n in range(per_minute):
            at = START + timedelta(minutes=minute, seconds=n * 60 / per_minute)
            message_id = f"m{minute}-{n}"
            if n % 10 == 3:
                lines.append(rest_line(b'{"not json', message_id, at))
            elif n % 10 == 5:
                bad = event(f"e{minute}-{n}", at)
                del bad["timestamp"]
                lines.append(rest_line(envelope(bad), message_id, at))
            elif n % 10 == 7:
                batch = {"messages": [envelope(event(f"e{minute}-{n}-{k}", at)) for k in range(3)]}
                lines.append(rest_line(batch, message_id, at))
            else:
                lines.append(rest_line(envelope(event(f"e{minute}-{n}", at)), message_id, at))
            if n % 10 == 9:
                lines.append(lines[-1])  # a redelivery: same message id, publish time and data
    return lines


@pytest.fixture
def small_stream(tmp_path: Path) -> Path:
    path = tmp_path / "stream.jsonl"
    path.write_text("\n".join(stream_lines(minutes=12, per_minute=10)) + "\n")
    return path


def finished(command: list[str], timeout_s: float) -> subprocess.CompletedProcess:
    """``command`` run to its end in a process group of its own, its output and errors apart; if it outlives
    ``timeout_s``, the group (a Prism server with it) is killed and the test fails."""
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace", start_new_session=True
    )
    try:
        output, errors = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        pytest.fail(f"did not finish within {timeout_s} s: {' '.join(command)}")
    return subprocess.CompletedProcess(command, process.returncode, output, errors)


def lake_rows(lake: Path, dataset: str) -> list[dict]:
    """Every row of a lake dataset, read the way users read it, in a stable order without partition columns."""
    if not (lake / dataset).exists():
        return []
    table = ds.dataset(lake / dataset, partitioning="hive", format="parquet").to_table()
    rows = table.drop_columns([name for name in ("date", "hour") if name in table.column_names]).to_pylist()
    return sorted(rows, key=lambda row: json.dumps(row, default=str, sort_keys=True))


def dataset_files(lake: Path) -> list[str]:
    return sorted(
        str(path.relative_to(lake)) for path in lake.rglob("*") if path.is_file() and ".tmp" not in path.parts
    )


@pytest.fixture
def topology(pubsub_emulator, monkeypatch, request) -> Topology:
    """Topics and subscriptions of the test's own on the Pub/Sub emulator, which the test's clients then talk to."""
    monkeypatch.setenv(EMULATOR_HOST_ENV, pubsub_emulator)
    name = f"run-{request.node.name[-40:].replace('_', '-')}"
    topics = Topology.named("profilestream-test", name, f"{name}-sub", f"{name}-dead")
    create_topology(pubsub_emulator, topics)
    return topics
