"""Servers started on loopback for local runs, tests and benchmarks, counted as up only when the one answering is ours.

:func:`refuse_taken_port` refuses a port in use (:class:`PortTakenError`, one line naming the port);
:func:`wait_until_serving` counts a server started in a process group of its own as up only once that group holds
every listening socket on the port (:func:`who_listens`, from Linux's ``/proc``) and the caller's own check passes;
otherwise the whole group is stopped (:func:`stop`) and :class:`ServerStartError` says so in one line naming the
server's log. :func:`local_server` does all three for a ``with`` block. Without ``/proc`` (macOS) a server counts as
ours once it accepts connections on a port that was free when it started.

Why: docs/decisions/0030-local-servers-count-as-up-only-when-ours.md.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
# A new Python interpreter imports Beam before it serves, and a JVM warms up: seconds alone, more on a loaded machine.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
POLL_INTERVAL_S = 0.05
PROC = Path("/proc")
TCP_LISTEN_STATE = "0A"  # the st column of /proc/net/tcp for a socket in LISTEN


class PortTakenError(RuntimeError):
    """The port a server was to start on is already in use by another program."""


class ServerStartError(RuntimeError):
    """A server started here exited, timed out or was not the only listener on its port; it has been stopped. The
    message is one line; ``log`` is the server's output, for whoever wants more (a test's failure report)."""

    def __init__(self, message: str, log: Path) -> None:
        super().__init__(message)
        self.log = log


def free_port() -> int:
    """A loopback port free when asked; the server binds it a moment later, a race other processes rarely win (and
    :func:`wait_until_serving` notices when one does)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def refuse_taken_port(port: int, host: str = LOOPBACK) -> None:
    """Raises :class:`PortTakenError` unless ``host:port`` can be bound, that is unless no program listens on it."""
    with socket.socket() as probe:
        # Linux still refuses a port another socket listens on; the option only lets a port whose last connections
        # linger in TIME_WAIT (a server just stopped) count as free, as the server's own bind will.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise PortTakenError(
                    f"port {port} on {host} is in use by another program; stop it or choose another port"
                ) from None
            raise PortTakenError(f"port {port} on {host} cannot be used: {error.strerror}") from None


def listening_sockets(port: int) -> set[int]:
    """The inodes of the TCP sockets (IPv4 and IPv6, any address) listening on ``port``."""
    inodes = set()
    for table in ("tcp", "tcp6"):
        with contextlib.suppress(FileNotFoundError), (PROC / "net" / table).open() as rows:
            next(rows)  # the column names
            for row in rows:
                columns = row.split()
                local_port = int(columns[1].rsplit(":", 1)[1], 16)
                if local_port == port and columns[3] == TCP_LISTEN_STATE:
                    inodes.add(int(columns[9]))
    return inodes


def group_sockets(group: int) -> set[int]:
    """The inodes of the sockets open in the processes of process group ``group``."""
    inodes = set()
    for process in PROC.glob("[0-9]*"):
        try:
            # The command name (in parentheses) may hold spaces; the process group is the third field after it.
            if int((process / "stat").read_text().rsplit(")", 1)[1].split()[2]) != group:
                continue
            descriptors = list((process / "fd").iterdir())
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile, or not ours to read
        for descriptor in descriptors:
            with contextlib.suppress(OSError):
                target = os.readlink(descriptor)
                if target.startswith("socket:["):
                    inodes.add(int(target[len("socket:[") : -1]))
    return inodes


class Listener(enum.Enum):
    """Who listens on a port, as seen from a process group that is to serve there."""

    NOBODY = "nobody"
    OURS = "ours"  # the group holds every socket listening on the port
    ANOTHER = "another"  # some other program holds one of them


def who_listens(group: int, port: int) -> Listener:
    """Whether the processes of process group ``group`` hold every socket listening on ``port``, or another program
    listens there too, or nobody does. Without ``/proc`` a port that accepts connections counts as the group's."""
    if not (PROC / "net" / "tcp").exists():
        return Listener.OURS if _accepts_connections(port) else Listener.NOBODY
    listening = listening_sockets(port)
    if not listening:
        return Listener.NOBODY
    return Listener.OURS if listening <= group_sockets(group) else Listener.ANOTHER


def _accepts_connections(port: int) -> bool:
    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
    except OSError:
        return False
    return True


def wait_until_serving(
    name: str,
    process: subprocess.Popen,
    log: Path,
    *,
    port: int | None = None,
    ready: Callable[[], bool] | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> None:
    """Returns once ``process`` (started in a process group of its own) serves: its group holds every socket
    listening on loopback ``port`` when one is given, and ``ready()`` passes when given. Otherwise stops the group
    and raises :class:`ServerStartError`: when the process exits, when another program listens on ``port`` too, or
    after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        listener = Listener.OURS if port is None else who_listens(process.pid, port)
        if listener is Listener.ANOTHER:
            stop(process.pid)
            raise ServerStartError(f"{name}: another program listens on port {port} too; stopped ours", log)
        ours = listener is Listener.OURS
        if ours and (ready is None or ready()):
            return
        if process.poll() is not None:
            stop(process.pid)
            raise ServerStartError(f"{name} exited with code {process.returncode} while starting: see {log}", log)
        if time.monotonic() > deadline:
            stop(process.pid)
            raise ServerStartError(f"{name} did not start within {timeout_s:.0f} s: see {log}", log)
        time.sleep(POLL_INTERVAL_S)


def stop(pid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stops the process group led by ``pid``: SIGTERM, then SIGKILL after ``timeout_s``. A server's group holds what
    it started (the JVM under the Pub/Sub emulator's start script; the Flink cluster's processes)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(POLL_INTERVAL_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def start_server(
    name: str,
    command: Sequence[str],
    log: Path,
    *,
    port: int | None = None,
    ready: Callable[[], bool] | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> subprocess.Popen:
    """Runs ``command`` (its output in ``log``) in a process group of its own and returns it once it serves
    (:func:`wait_until_serving`); when ``port`` is given, only if it was free (:func:`refuse_taken_port`)."""
    if port is not None:
        refuse_taken_port(port)
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    wait_until_serving(name, process, log, port=port, ready=ready, timeout_s=timeout_s)
    return process


@contextlib.contextmanager
def local_server(
    name: str,
    command: Sequence[str],
    log: Path,
    ready: Callable[[], bool] | None = None,
    *,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    start_timeout_s: float = START_TIMEOUT_S,
    stop_timeout_s: float = STOP_TIMEOUT_S,
) -> Iterator[subprocess.Popen]:
    """:func:`start_server` for the block; stopped at the end, always: SIGTERM to the server alone (a pipeline run
    then flushes), SIGKILL after ``stop_timeout_s``, then SIGKILL to what is left of its group (a pipeline on Prism
    runs the Prism binary as a child)."""
    process = start_server(name, command, log, port=port, ready=ready, env=env, timeout_s=start_timeout_s)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=stop_timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
