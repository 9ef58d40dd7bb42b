"""``make bench-e2e``: from a device's POST to a fresh profile and a lake file, measured against README's "Targets".

    python -m tools.bench_e2e [--rate 500] [--duration 60] [--commit-interval 60] [--sample 50]
                                  [--latencies FILE] [--runner-args '--runner PrismRunner ...'] [--shape browser]

The whole path runs on this machine, each part a process of its own as in production: :mod:`tools.loadgen`'s traffic
(1% invalid, 1% duplicates) at ``--rate`` events/s for ``--duration`` seconds, POSTed to the batch route of the inlet
of ``profilestream serve``, which publishes to the Pub/Sub emulator, read by ``profilestream run --source pubsub:``
into a SQLite profile store and the lake (commit interval ``--commit-interval``, 60 s rather than the default 5
minutes, so that the benchmark takes minutes). A warm-up first waits until
the pipeline writes profiles, so its start-up is not counted. ``--runner-args`` go to both pipeline runs.

Figures (README, "End to end: `make bench-e2e`"), each beside its target with pass or fail:

- **receive → profile visible**, p50, p95, p99: for one valid event in ``--sample``, from its send (the inlet receives
  it within the same millisecond on loopback) until the store's lookup by identity shows it among its person's recent
  events, polled every :data:`POLL_S`; target p99 at most 5 s.
- **receive → lake file visible**, p99: for every valid event, until a Parquet file of ``experience_events`` holding
  it appears (files are moved into place whole); target the commit interval plus 60 s.
- **inlet requests/s**: single-message POSTs from 32 clients, for a few seconds, to a topic nobody reads. With
  ``--shape browser`` (``SHAPE=browser``), also gzip batches of ``--batch-size`` sent as ``text/plain`` from an
  allowed origin, as the browser SDK sends them, to the same inlet in the same run; the measured load is then sent
  that way too.
- **kill -9 loss**: a run reading a stream published straight to Pub/Sub is killed with SIGKILL (its whole process
  group) :data:`KILL_AFTER_S` seconds in; a second run reads the rest and what Pub/Sub delivers again once the killed
  run's unacknowledged messages pass their ack deadline (:data:`KILL_ACK_DEADLINE_S`), and is stopped cleanly; the
  figure is how many messages the killed run had acknowledged and how many valid events never reached the lake and the
  profile store (README, "Limits of local development").

The last line is one JSON object:
``{"rate", "profile_p50_s", "profile_p95_s", "profile_p99_s", "lake_p99_s", "inlet_rps", "pass"}``, plus
``"inlet_browser_rps"`` (requests/s) with ``--shape browser``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import httpx2
import pyarrow.parquet as pq
import yaml

from core.clock import wall_clock_us
from identity.stitching import StitchSettings
from pipelines.config import load_config
from profiles.model import view_from_bytes
from service.profile_lookup import lookup_key
from stores.opening import open_profile_store
from tools.loadgen import VALID, HttpTarget, Pacer, PubSubTarget, Traffic, TrafficShape, send_load
from tools.local_servers import local_server
from tools.pubsub_emulator import (
    EMULATOR_HOST_ENV,
    Topology,
    create_topology,
    emulator_environment,
    free_port,
    running_emulator,
)
from tools.sample_stream import EXPERIENCE_EVENT_SCHEMA

PROFILE_TARGET_P99_S = 5.0
LAKE_SLACK_S = 60.0
POLL_S = 0.25
LAKE_POLL_S = 0.5
WARM_UP_TIMEOUT_S = 120.0
PROFILE_WAIT_S = 60.0
STOP_TIMEOUT_S = 120.0
INLET_BURST_S = 5.0
INLET_CLIENTS = 32
KILL_AFTER_S = 10.0
# Pub/Sub's shortest: messages the killed run pulled and never acknowledged come back this soon.
KILL_ACK_DEADLINE_S = 10
REDELIVERY_SLACK_S = 5.0
CONNECTION = "bench"
API_TOKEN = "bench-token"
JSON_SHAPE, BROWSER_SHAPE = "json", "browser"
# The page the browser-shaped load comes from, which the benchmark's connection allows.
BROWSER_ORIGIN = "http://shop.localhost:8000"


@dataclasses.dataclass
class Sent:
    """A valid event sent: when, and an identity to find its profile by."""

    sent_us: int
    identity: str


class SendLog(io.TextIOBase):
    """The loadgen's send log, read as it is written: valid ExperienceEvents are noted for the watchers."""

    def __init__(self, sample: int) -> None:
        self._sample = sample
        self._lock = threading.Lock()
        self._events: dict[str, Sent] = {}
        self._sampled: dict[str, Sent] = {}
        self._seen = 0

    def write(self, line: str) -> int:
        entry = json.loads(line)
        if entry["kind"] == VALID and entry["schema"] == EXPERIENCE_EVENT_SCHEMA and entry["identities"]:
            sent = Sent(entry["sent_us"], entry["identities"][0])
            with self._lock:
                self._events[entry["id"]] = sent
                self._seen += 1
                if self._seen % self._sample == 0:
                    self._sampled[entry["id"]] = sent
        return len(line)

    def events(self) -> dict[str, Sent]:
        with self._lock:
            return dict(self._events)

    def sampled(self) -> dict[str, Sent]:
        with self._lock:
            return dict(self._sampled)


class ProfileWatcher(threading.Thread):
    """Polls the profile store for the sampled events until each is visible; records each one's latency."""

    def __init__(self, store_url: str, config_path: Path, log: SendLog) -> None:
        super().__init__(daemon=True)
        self._store_url = store_url
        self._settings = load_config(config_path).stitch_settings()
        self._log = log
        self.latencies_s: dict[str, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        with open_profile_store(self._store_url) as store:
            while not self.stopping.wait(POLL_S):
                sampled = self._log.sampled()
                pending: dict[str, list[str]] = {}
                for event_id, sent in sampled.items():
                    if event_id not in self.latencies_s:
                        pending.setdefault(sent.identity, []).append(event_id)
                for identity, event_ids in pending.items():
                    view = store.view_by_identity(lookup_key(identity, self._settings, by="identity"))
                    seen_us = wall_clock_us()
                    # Views are canonical JSON, where a shown event's id reads "_id":"<id>": a cheap look first, so
                    # the watcher does not parse whole views (and take the CPU the pipeline needs) to find nothing.
                    if view is None or not any(f'"_id":"{event_id}"'.encode() in view for event_id in event_ids):
                        continue
                    shown = {event.get("_id") for event in view_from_bytes(view)["events"]["recent"]}
                    for event_id in event_ids:
                        if event_id in shown:
                            self.latencies_s[event_id] = (seen_us - sampled[event_id].sent_us) / 1e6

    def waiting(self) -> int:
        return len(self._log.sampled()) - len(self.latencies_s)


class LakeWatcher(threading.Thread):
    """Watches the lake's experience_events for new files; records when each sent event first appears in one."""

    def __init__(self, lake: Path, log: SendLog) -> None:
        super().__init__(daemon=True)
        self._folder = lake / "experience_events"
        self._log = log
        self._files: set[Path] = set()
        self.latencies_s: dict[str, float] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(LAKE_POLL_S):
            new = set(self._folder.glob("**/*.parquet")) - self._files
            seen_us = wall_clock_us()
            events = self._log.events()
            for path in new:
                for event_id in pq.read_table(path, columns=["_id"]).column("_id").to_pylist():
                    if event_id in events and event_id not in self.latencies_s:
                        self.latencies_s[event_id] = (seen_us - events[event_id].sent_us) / 1e6
            self._files |= new

    def waiting(self) -> int:
        return len(self._log.events()) - len(self.latencies_s)


def percentile(values: list[float], percent: int) -> float:
    """The ``percent``-th percentile (inclusive method); NaN for no values."""
    if not values:
        return math.nan
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[percent - 1]


def write_config(folder: Path, commit_interval_s: int) -> Path:
    path = folder / "profilestream.yaml"
    # Public, allowing the browser-shaped load's origin: neither load sends a token, as before.
    connection = {
        "rate_per_second": 1_000_000,
        "burst": 1_000_000,
        "public": True,
        "allowed_origins": [BROWSER_ORIGIN],
    }
    path.write_text(
        yaml.safe_dump(
            {"commit_interval_seconds": commit_interval_s, "inlet": {"connections": {CONNECTION: connection}}}
        )
    )
    return path


@dataclasses.dataclass(frozen=True)
class Served:
    """A running ``profilestream serve``: its base URL and its process."""

    url: str
    process: subprocess.Popen


@contextlib.contextmanager
def inlet(folder: Path, config: Path, topic: str, env: Mapping[str, str], name: str) -> Iterator[Served]:
    """``profilestream serve`` with the inlet on ``topic``, its files named ``name`` in ``folder``; yields it once it
    answers, and stops it after."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "pipelines.cli", "serve", "--port", str(port), "--config", str(config)]
    command += ["--pubsub-topic", topic, "--profile-store", f"sqlite:///{folder}/{name}.profiles.sqlite"]
    env = {**env, "PROFILESTREAM_API_TOKEN": API_TOKEN}
    with local_server("serve", command, folder / f"{name}.log", lambda: healthy(url), port=port, env=env) as process:
        yield Served(url, process)


def healthy(url: str) -> bool:
    """Whether the ``profilestream serve`` at ``url`` answers ``/health`` with 200 within a second."""
    try:
        return httpx2.get(f"{url}/health", timeout=1.0).status_code == 200
    except httpx2.HTTPError:
        return False


def pipeline_run(command: list[str], log: Path, env: dict[str, str]) -> contextlib.AbstractContextManager:
    """A ``profilestream run`` process for the ``with`` block; stopped with SIGTERM (it then flushes) after."""
    return local_server("profilestream run", command, log, lambda: True, env=env, stop_timeout_s=STOP_TIMEOUT_S)


def http_target(url: str, shape: str, *, batch_size: int, clients: int) -> HttpTarget:
    """The loadgen's HTTP target on ``url``, sending as ``shape`` says: plain JSON, or as the browser SDK does."""
    origin = BROWSER_ORIGIN if shape == BROWSER_SHAPE else None
    return HttpTarget(url, batch_size=batch_size, concurrency=clients, browser_origin=origin)


def send(target: HttpTarget, rate: float, count: int, seed: int, log: SendLog | None) -> dict:
    """Sends ``count`` messages to ``target`` at ``rate``, then closes it; returns the loadgen's figures."""
    shape = TrafficShape(people=2000, invalid_fraction=0.01, duplicate_fraction=0.01)
    pacer = Pacer(rate)
    started = time.monotonic()
    try:
        kinds = send_load(Traffic(shape, seed), target, pacer, count, send_log=log)
    finally:
        delivery = target.close()
    seconds = time.monotonic() - started
    return {
        "kinds": dict(kinds),
        "rate": pacer.achieved_rate,
        "seconds": seconds,
        "statuses": delivery.statuses,
        "failed": delivery.failed,
    }


def measure_inlet(seconds: float, target: HttpTarget) -> float:
    """Requests/s the inlet answers (200, or 207 to a batch) for ``seconds`` of ``target``'s requests, sent as fast
    as it answers them."""
    traffic = Traffic(TrafficShape(people=2000), seed=1)
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            now = wall_clock_us()
            target.send([traffic.message(now) for _ in range(target.chunk)], now)
    finally:
        delivery = target.close()
    elapsed = time.monotonic() - started
    answered = sum(count for status, count in delivery.statuses.items() if status in ("200", "207"))
    return answered / elapsed if elapsed else 0.0


def measure_inlet_alone(
    shape: str, batch_size: int, folder: Path, config: Path, topic: str, env: Mapping[str, str]
) -> dict[str, float]:
    """The inlet's requests/s on ``topic``, printed, and returned as the JSON line has them: ``inlet_rps`` for
    single-message POSTs and, for the browser ``shape``, ``inlet_browser_rps`` for browser-shaped batches of
    ``batch_size`` sent to the same server just after."""
    with inlet(folder, config, topic, env, "inlet-alone") as alone:
        single = http_target(f"{alone.url}/collection/{CONNECTION}", JSON_SHAPE, batch_size=1, clients=INLET_CLIENTS)
        figures = {"inlet_rps": measure_inlet(INLET_BURST_S, single)}
        print(f"inlet alone: {figures['inlet_rps']:,.0f} requests/s (single-message POSTs, {INLET_CLIENTS} clients)")
        if shape == BROWSER_SHAPE:
            batch_url = f"{alone.url}/collection/batch/{CONNECTION}"
            batches = http_target(batch_url, BROWSER_SHAPE, batch_size=batch_size, clients=INLET_CLIENTS)
            figures["inlet_browser_rps"] = rps = measure_inlet(INLET_BURST_S, batches)
            print(
                f"inlet alone, browser-shaped: {rps:,.0f} requests/s, {rps * batch_size:,.0f} messages/s (gzip "
                f"batches of {batch_size} as text/plain from an allowed origin, {INLET_CLIENTS} clients)"
            )
    return figures


def wait_for(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_e2e", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=float(os.environ.get("RATE") or 500))
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measured load (default 60)")
    parser.add_argument("--commit-interval", type=int, default=60, help="the pipeline's lake commit interval")
    parser.add_argument("--sample", type=int, default=50, help="watch one valid event in N for the profile figure")
    parser.add_argument("--batch-size", type=int, default=10, help="messages per inlet batch request")
    parser.add_argument("--latencies", type=Path, help="write each watched event's send time and latencies here")
    parser.add_argument(
        "--shape",
        choices=(JSON_SHAPE, BROWSER_SHAPE),
        default=os.environ.get("SHAPE") or JSON_SHAPE,
        help="how the load is sent: plain JSON, or as the browser SDK does, gzip as text/plain (default json)",
    )
    parser.add_argument(
        "--runner-args",
        type=shlex.split,
        default=os.environ.get("RUNNER_ARGS", ""),
        help="runner flags for the pipeline runs, e.g. '--runner PrismRunner --prism_location PATH'",
    )
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as scratch:
        folder = Path(scratch)
        config = write_config(folder, args.commit_interval)
        topology = Topology.named("profilestream-bench", "events", "events-pipeline", "events-nobody")
        with running_emulator(folder / "pubsub", topology) as host:
            env = {**os.environ, EMULATOR_HOST_ENV: host}
            inlet_rps = measure_inlet_alone(
                args.shape, args.batch_size, folder, config, topology.dead_letter_topic, env
            )
            figures = measure_path(args, folder, config, topology, env)
            killed = Topology.named("profilestream-bench", "killed", "killed-pipeline", "killed-nobody")
            create_topology(host, killed, ack_deadline_s=KILL_ACK_DEADLINE_S)
            loss = measure_kill_loss(args.rate, folder / "killed", config, killed, env, args.runner_args)
    profile_p99 = figures["profile_p99_s"]
    lake_target = args.commit_interval + LAKE_SLACK_S
    profile_pass = profile_p99 <= PROFILE_TARGET_P99_S
    # A message the inlet did not accept (a 503 under load, which the client should retry) is not expected anywhere.
    lake_pass = figures["lake_p99_s"] <= lake_target and figures["lake_missing"] <= figures["not_accepted"]
    print(
        f"receive -> profile visible  p50 {figures['profile_p50_s']:6.2f} s  p95 {figures['profile_p95_s']:6.2f} s  "
        f"p99 {profile_p99:6.2f} s   target p99 <= {PROFILE_TARGET_P99_S:.0f} s: {'pass' if profile_pass else 'FAIL'}"
        f"  ({figures['profile_samples']} sampled events, {figures['profile_missing']} never seen)"
    )
    print(
        f"receive -> lake file        p99 {figures['lake_p99_s']:6.2f} s   target <= {lake_target:.0f} s "
        f"(commit interval {args.commit_interval} s + {LAKE_SLACK_S:.0f} s): {'pass' if lake_pass else 'FAIL'}"
        f"  ({figures['lake_events']} events, {figures['lake_missing']} never seen)"
    )
    print(
        f"load: {figures['sent_rate']:,.0f} events/s achieved of {args.rate:,.0f} asked; inlet answers by status "
        f"{json.dumps(figures['statuses'])} ({figures['not_accepted']} messages not accepted); "
        f"pipeline summary: {json.dumps(figures['summary'])}"
    )
    print(
        f"kill -9 {KILL_AFTER_S:.0f} s into a run: it had acknowledged {loss['acknowledged']} of {loss['sent']} "
        f"messages; {loss['lost_from_lake']} of {loss['valid']} valid events never reached the lake and "
        f"{loss['lost_from_profiles']} never reached a profile (the rest came through the restarted run)"
    )
    result = {
        "rate": args.rate,
        "profile_p50_s": round(figures["profile_p50_s"], 3),
        "profile_p95_s": round(figures["profile_p95_s"], 3),
        "profile_p99_s": round(profile_p99, 3),
        "lake_p99_s": round(figures["lake_p99_s"], 3),
        **{name: round(value, 1) for name, value in inlet_rps.items()},
        "pass": profile_pass and lake_pass,
    }
    print(json.dumps(result))
    return 0


def measure_kill_loss(
    rate: float, folder: Path, config: Path, topology: Topology, env: dict[str, str], runner_args: list[str]
) -> dict:
    """Kills a run with SIGKILL mid-stream, reads the rest with a second run, and counts what never landed."""
    folder.mkdir()
    command = [sys.executable, "-m", "pipelines.cli", "run", "--source", f"pubsub:{topology.subscription}"]
    command += runner_args
    command += ["--lake", str(folder / "lake"), "--config", str(config)]
    command += ["--identity-store", f"sqlite:///{folder}/identity.sqlite"]
    command += ["--profile-store", f"sqlite:///{folder}/profiles.sqlite"]
    # Twice as long a stream as the killed run lives, so the restarted run reads the second half as it comes.
    count = math.ceil(rate * 2 * KILL_AFTER_S)
    log = SendLog(sample=1)
    settings = load_config(config).stitch_settings()
    # Google's publisher reads the emulator's address from the environment when it is made.
    with emulator_environment(env[EMULATOR_HOST_ENV]):
        target = PubSubTarget(topology.topic)
        shape = TrafficShape(people=2000)
        with pipeline_run(command, folder / "killed.log", env) as killed:
            sender = threading.Thread(
                target=send_load, args=(Traffic(shape, 4), target, Pacer(rate), count), kwargs={"send_log": log}
            )
            sender.start()
            time.sleep(KILL_AFTER_S)
            os.killpg(killed.pid, signal.SIGKILL)
            killed.wait()
            killed_at = time.monotonic()
        with pipeline_run(command, folder / "restarted.log", env) as restarted:
            sender.join()
            target.close()
            # Caught up once the last event sent shows in its profile, and once what the killed run never acknowledged
            # has come back; the stop then flushes the rest to the lake.
            last_id, last = max(log.events().items(), key=lambda item: item[1].sent_us)
            wait_for(lambda: last_id in _recent_ids(folder, settings, [last.identity]), STOP_TIMEOUT_S)
            time.sleep(max(0.0, killed_at + KILL_ACK_DEADLINE_S + REDELIVERY_SLACK_S - time.monotonic()))
            restarted.send_signal(signal.SIGTERM)
            restarted.wait(timeout=STOP_TIMEOUT_S)
    summary = run_summary(folder / "restarted.log")
    if "messages" not in summary:
        raise RuntimeError(f"the restarted run printed no summary; see {folder / 'restarted.log'}")
    events = log.events()
    in_profiles = _recent_ids(folder, settings, {sent.identity for sent in events.values()})
    return {
        "sent": count,
        # At least once: what the restarted run did not read again, the killed run had acknowledged.
        "acknowledged": max(0, count - summary["messages"]),
        "valid": len(events),
        "lost_from_lake": len(set(events) - _lake_ids(folder / "lake")),
        # A person's recent events keep the newest 50, so an event can also be missing for being old: none are here,
        # where no person sends more than a few.
        "lost_from_profiles": len(set(events) - in_profiles),
    }


def run_summary(log: Path) -> dict:
    """The summary a ``profilestream run`` printed into ``log`` (its last JSON line: a runner may log after it), or
    an empty dict when it printed none."""
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                return json.loads(line)
    return {}


def _recent_ids(folder: Path, settings: StitchSettings, identities: Iterable[str]) -> set[str]:
    """The ids of the recent events in the profiles of ``identities``, in the profile store under ``folder``."""
    found = set()
    with open_profile_store(f"sqlite:///{folder}/profiles.sqlite") as store:
        for identity in identities:
            view = store.view_by_identity(lookup_key(identity, settings, by="identity"))
            if view is not None:
                found |= {event.get("_id") for event in view_from_bytes(view)["events"]["recent"]}
    return found


def _lake_ids(lake: Path) -> set[str]:
    return {
        event_id
        for path in (lake / "experience_events").glob("**/*.parquet")
        for event_id in pq.read_table(path, columns=["_id"]).column("_id").to_pylist()
    }


def measure_path(args: argparse.Namespace, folder: Path, config: Path, topology: Topology, env: dict[str, str]) -> dict:
    """Runs the pipeline and the inlet, warms them up, sends the measured load and waits for it to land."""
    profiles = f"sqlite:///{folder}/profiles.sqlite"
    lake = folder / "lake"
    run_command = [sys.executable, "-m", "pipelines.cli", "run", "--source", f"pubsub:{topology.subscription}"]
    run_command += args.runner_args
    run_command += ["--lake", str(lake), "--config", str(config), "--profile-store", profiles]
    run_command += ["--identity-store", f"sqlite:///{folder}/identity.sqlite"]
    with (
        pipeline_run(run_command, folder / "run.log", env) as pipeline,
        inlet(folder, config, topology.topic, env, "inlet") as served,
    ):
        batch_url = f"{served.url}/collection/batch/{CONNECTION}"
        warm_up = SendLog(sample=1)
        warm_watch = ProfileWatcher(profiles, config, warm_up)
        warm_watch.start()
        send(http_target(batch_url, args.shape, batch_size=args.batch_size, clients=4), 20, 20, 2, warm_up)
        if not wait_for(lambda: warm_watch.latencies_s, WARM_UP_TIMEOUT_S):
            raise RuntimeError(f"no profile written during the warm-up: {(folder / 'run.log').read_text()}")
        warm_watch.stopping.set()

        log = SendLog(args.sample)
        watchers = (ProfileWatcher(profiles, config, log), LakeWatcher(lake, log))
        for watcher in watchers:
            watcher.start()
        count = math.ceil(args.rate * args.duration)
        sent = send(http_target(batch_url, args.shape, batch_size=args.batch_size, clients=8), args.rate, count, 3, log)
        profile_watch, lake_watch = watchers
        wait_for(lambda: profile_watch.waiting() == 0, PROFILE_WAIT_S)
        wait_for(lambda: lake_watch.waiting() == 0, args.commit_interval + LAKE_SLACK_S + 30)
        for watcher in watchers:
            watcher.stopping.set()
            watcher.join()
        pipeline.send_signal(signal.SIGTERM)
        pipeline.wait(timeout=STOP_TIMEOUT_S)
    summary = run_summary(folder / "run.log")
    profile_s = list(profile_watch.latencies_s.values())
    lake_s = list(lake_watch.latencies_s.values())
    figures = {
        "profile_p50_s": percentile(profile_s, 50),
        "profile_p95_s": percentile(profile_s, 95),
        # Samples never seen count as infinitely late, unless the inlet turned their request away.
        "profile_p99_s": percentile(profile_s, 99) if profile_watch.waiting() <= sent["failed"] else math.inf,
        "profile_samples": len(log.sampled()),
        "profile_missing": profile_watch.waiting(),
        "lake_p99_s": percentile(lake_s, 99),
        "lake_events": len(log.events()),
        "lake_missing": lake_watch.waiting(),
        "sent_rate": sent["rate"],
        "statuses": sent["statuses"],
        "not_accepted": sent["failed"],
        "summary": {key: summary.get(key) for key in ("messages", "records", "valid", "failed", "profiles_written")},
    }
    if args.latencies is not None:
        with args.latencies.open("w") as out:
            for event_id, event in sorted(log.sampled().items(), key=lambda item: item[1].sent_us):
                line = {"id": event_id, "sent_us": event.sent_us, "profile_s": profile_watch.latencies_s.get(event_id)}
                out.write(json.dumps({**line, "lake_s": lake_watch.latencies_s.get(event_id)}) + "\n")
    return figures


if __name__ == "__main__":
    sys.exit(main())
