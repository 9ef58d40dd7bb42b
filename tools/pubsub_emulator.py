"""Google's Pub/Sub emulator, started and stopped for local runs, tests and benchmarks, with its topics made.

The emulator is the Google Cloud CLI's ``pubsub-emulator`` component, the same program ``gcloud beta emulators pubsub
start`` runs, started directly (found beside the ``gcloud`` on the PATH) in a process group of its own, so stopping it
stops its JVM too (docs/decisions/0030-local-servers-count-as-up-only-when-ours.md). Google's client libraries
(and Beam's Pub/Sub IO) talk to it when ``PUBSUB_EMULATOR_HOST`` holds its ``HOST:PORT``.

    python -m tools.pubsub_emulator up [--port 8085] [--state-dir data/pubsub] [--project P] [--topic T]
                                           [--subscription S] [--dead-letter-topic D]
    python -m tools.pubsub_emulator down [--state-dir data/pubsub]

``up`` starts the emulator in the background (its pid and log in the state folder), makes the topic, its
subscription and the dead-letter topic (with a subscription of its own, so failed records can be read back), and
prints the environment line to use; ``down`` stops it. ``make pubsub-up`` / ``make pubsub-down`` run these. On a
port another program holds, ``up`` starts nothing and exits 1 with one line; an emulator that does not come up alone on
its port is stopped, JVM and all, with one line too (:mod:`tools.local_servers`). Either way no ``export`` line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tools.local_servers import LOOPBACK, free_port, start_server, stop

EMULATOR_HOST_ENV = "PUBSUB_EMULATOR_HOST"
START_TIMEOUT_S = 60.0
DEFAULT_PORT = 8085
DEFAULT_PROJECT = "profilestream-local"
DEFAULT_TOPIC = "events"
DEFAULT_SUBSCRIPTION = "events-pipeline"
DEFAULT_DEAD_LETTER_TOPIC = "events-failed"
DEFAULT_STATE_DIR = Path("data/pubsub")
ACK_DEADLINE_S = 60


class EmulatorNotFoundError(RuntimeError):
    """The Google Cloud CLI or its pubsub-emulator component is missing."""


@dataclasses.dataclass(frozen=True)
class Topology:
    """The topic, subscription and dead-letter topic (and its subscription) a run uses, by full resource name."""

    project: str
    topic: str
    subscription: str
    dead_letter_topic: str
    dead_letter_subscription: str

    @classmethod
    def named(
        cls,
        project: str = DEFAULT_PROJECT,
        topic: str = DEFAULT_TOPIC,
        subscription: str = DEFAULT_SUBSCRIPTION,
        dead_letter_topic: str = DEFAULT_DEAD_LETTER_TOPIC,
    ) -> Topology:
        return cls(
            project=project,
            topic=f"projects/{project}/topics/{topic}",
            subscription=f"projects/{project}/subscriptions/{subscription}",
            dead_letter_topic=f"projects/{project}/topics/{dead_letter_topic}",
            dead_letter_subscription=f"projects/{project}/subscriptions/{dead_letter_topic}-read",
        )


def emulator_binary() -> Path:
    """The emulator's start script in the Google Cloud CLI that ``gcloud`` runs from."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        raise EmulatorNotFoundError("the Pub/Sub emulator needs the Google Cloud CLI (gcloud), which is not on PATH")
    binary = Path(gcloud).resolve().parent.parent / "platform" / "pubsub-emulator" / "bin" / "cloud-pubsub-emulator"
    if not os.access(binary, os.X_OK):
        raise EmulatorNotFoundError(
            "the Google Cloud CLI has no Pub/Sub emulator: gcloud components install pubsub-emulator"
        )
    if shutil.which("java") is None:
        raise EmulatorNotFoundError("the Pub/Sub emulator needs Java, which is not on PATH")
    return binary


def start(port: int, state_dir: Path) -> subprocess.Popen:
    """Starts the emulator on loopback ``port`` and returns it once it serves there, it and nothing else
    (:func:`~tools.local_servers.start_server`); it logs to ``state_dir/emulator.log``. A port another program
    holds is :class:`~tools.local_servers.PortTakenError`, and an emulator that does not serve is stopped and
    :class:`~tools.local_servers.ServerStartError`, each one line."""
    state_dir.mkdir(parents=True, exist_ok=True)
    command = [str(emulator_binary()), f"--host={LOOPBACK}", f"--port={port}"]
    return start_server(
        "the Pub/Sub emulator", command, state_dir / "emulator.log", port=port, timeout_s=START_TIMEOUT_S
    )


def create_topology(host: str, topology: Topology, *, ack_deadline_s: int = ACK_DEADLINE_S) -> None:
    """Makes the topics and subscriptions (those already there are left as they are); the subscriptions give a
    pulled message ``ack_deadline_s`` (10 to 600) to be acknowledged before Pub/Sub delivers it again."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    with emulator_environment(host):
        publisher = pubsub_v1.PublisherClient()
        subscriber = pubsub_v1.SubscriberClient()
        try:
            for topic in (topology.topic, topology.dead_letter_topic):
                with contextlib.suppress(AlreadyExists):
                    publisher.create_topic(name=topic)
            for subscription, topic in (
                (topology.subscription, topology.topic),
                (topology.dead_letter_subscription, topology.dead_letter_topic),
            ):
                with contextlib.suppress(AlreadyExists):
                    subscriber.create_subscription(name=subscription, topic=topic, ack_deadline_seconds=ack_deadline_s)
        finally:
            subscriber.close()
            publisher.transport.close()


@contextlib.contextmanager
def emulator_environment(host: str) -> Iterator[None]:
    """``PUBSUB_EMULATOR_HOST`` set to ``host`` for the block (Google's clients read it when they are made)."""
    before = os.environ.get(EMULATOR_HOST_ENV)
    os.environ[EMULATOR_HOST_ENV] = host
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(EMULATOR_HOST_ENV, None)
        else:
            os.environ[EMULATOR_HOST_ENV] = before


@contextlib.contextmanager
def running_emulator(state_dir: Path, topology: Topology | None = None) -> Iterator[str]:
    """An emulator on a free loopback port for the ``with`` block, with ``topology`` made; yields its ``HOST:PORT``."""
    port = free_port()
    process = start(port, state_dir)
    host = f"{LOOPBACK}:{port}"
    try:
        if topology is not None:
            create_topology(host, topology)
        yield host
    finally:
        stop(process.pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.pubsub_emulator", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start the emulator in the background and make the topics")
    up.add_argument("--port", type=int, default=DEFAULT_PORT)
    up.add_argument("--project", default=DEFAULT_PROJECT)
    up.add_argument("--topic", default=DEFAULT_TOPIC)
    up.add_argument("--subscription", default=DEFAULT_SUBSCRIPTION)
    up.add_argument("--dead-letter-topic", default=DEFAULT_DEAD_LETTER_TOPIC)
    down = commands.add_parser("down", help="stop the emulator that up started")
    for command in (up, down):
        command.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    args = parser.parse_args(argv)
    pid_file = args.state_dir / "emulator.pid"
    try:
        if args.command == "down":
            if pid_file.exists():
                stop(int(pid_file.read_text()))
                pid_file.unlink()
            return 0
        if pid_file.exists():
            print(f"pubsub_emulator: already up (pid file {pid_file}); run down first", file=sys.stderr)
            return 1
        process = start(args.port, args.state_dir)
        pid_file.write_text(str(process.pid))
        host = f"{LOOPBACK}:{args.port}"
        topology = Topology.named(args.project, args.topic, args.subscription, args.dead_letter_topic)
        try:
            create_topology(host, topology)
        except BaseException:
            stop(process.pid)
            pid_file.unlink()
            raise
    except (EmulatorNotFoundError, RuntimeError) as error:
        print(f"pubsub_emulator: {error}", file=sys.stderr)
        return 1
    print(f"export {EMULATOR_HOST_ENV}={host}")
    print(f"# source pubsub:{topology.subscription}, dead-letter topic {topology.dead_letter_topic}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
