"""Privacy jobs: a request to erase or export a person, run once, kept as a receipt without personal data.

A :class:`JobRequest` names the regulation (``gdpr`` or ``ccpa``), the action (``delete`` or ``access``) and the
identities as given (``NAMESPACE:ID``). :class:`JobStore` keeps each job (an embedded SQLite file by default,
``data/privacy.sqlite``): its id, regulation, action, status (``queued`` → ``running`` → ``done`` or ``failed``),
timestamps, counts per store, the lake files rewritten, and the identities only as keyed hashes
(:mod:`privacy.keys`). :class:`PrivacyJobs` runs submitted jobs one at a time on a thread of its own, for ``serve``;
the CLI runs one in the foreground. Neither a receipt nor an error message holds a raw identity.

A receipt (``JobStore.get``)::

    {"job_id": "pj-<hex>", "regulation": "gdpr", "action": "delete", "status": "done", "dry_run": false,
     "suppress": false, "identities": ["<hmac hex>", ...], "created": RFC 3339, "started": ..., "finished": ...,
     "counts": {"identity_store": {...}, "profile_store": {...}, "lake": {"<dataset>": n, ...}},
     "files_rewritten": ["<path relative to the lake>", ...], "error": null | "<code>: <reason without identities>"}
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import queue
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from identity.model import Identity
from identity.stitching import StitchSettings
from privacy.keys import identity_hashes
from stores.sqlite_files import open_store_file, transaction

REGULATIONS = ("gdpr", "ccpa")
ACTIONS = ("delete", "access")
MAX_IDENTITIES = 100
QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
INTERRUPTED = "interrupted, submit the job again"

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, receipt TEXT NOT NULL);
COMMIT;
"""


@dataclasses.dataclass(frozen=True)
class PrivacySettings:
    """Where a deployment keeps what privacy jobs work on: the lake, the stores by URL, the job store
    (``sqlite:///PATH``), the privacy key, the identity rules, and the folder access jobs export into (each under its
    job id) unless the caller names one."""

    lake_dir: str
    identity_store: str
    profile_store: str
    privacy_store: str
    key: bytes
    stitch: StitchSettings
    access_out: str = "data/privacy/access"


def privacy_store_path(url: str) -> str:
    """The file of a ``sqlite:///PATH`` privacy store URL; a one-line ValueError for any other."""
    if not url.startswith("sqlite:///") or not url.removeprefix("sqlite:///"):
        raise ValueError(f"malformed privacy store URL {url!r}: expected sqlite:///PATH")
    return url.removeprefix("sqlite:///")


class JobRequestError(ValueError):
    """A request that cannot be run, in one line that names no identity."""


@dataclasses.dataclass(frozen=True)
class JobRequest:
    """What to do (``action``), under which regulation, for whom (``identities``: ``(namespace, id)`` as given)."""

    regulation: str
    action: str
    identities: tuple[tuple[str, str], ...]
    dry_run: bool = False
    suppress: bool = False

    def __post_init__(self) -> None:
        if self.regulation not in REGULATIONS:
            raise JobRequestError(f"regulation must be one of {', '.join(REGULATIONS)}")
        if self.action not in ACTIONS:
            raise JobRequestError(f"action must be one of {', '.join(ACTIONS)}")
        if not self.identities:
            raise JobRequestError("a privacy job needs at least one identity")
        if len(self.identities) > MAX_IDENTITIES:
            raise JobRequestError(f"a privacy job takes at most {MAX_IDENTITIES} identities")
        for namespace, identity_id in self.identities:
            if not namespace or not identity_id or not isinstance(namespace, str) or not isinstance(identity_id, str):
                raise JobRequestError("each identity needs a namespace and an id, both non-empty strings")
        if self.suppress and self.action != "delete":
            raise JobRequestError("suppress goes with delete only")

    @classmethod
    def parse_identity(cls, text: str) -> tuple[str, str]:
        """``NAMESPACE:ID`` as the CLI takes it; the error names no id."""
        namespace, colon, identity_id = text.partition(":")
        if not colon or not namespace or not identity_id:
            raise JobRequestError("--identity takes NAMESPACE:ID, e.g. Email:ann@example.com")
        return namespace, identity_id


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


class JobStore:
    """The receipts of privacy jobs in an SQLite file (``:memory:`` for tests); safe for one thread at a time per
    object, and for several processes on one file."""

    def __init__(self, path: str) -> None:
        self._connection = open_store_file(path, _SCHEMA, "privacy job store")
        self._lock = threading.Lock()

    def create(self, request: JobRequest, normalised: Iterable[Identity], key: bytes) -> str:
        """Keeps a new queued job for ``request`` whose given identities normalise to ``normalised``; its id."""
        job_id = f"pj-{uuid.uuid4().hex}"
        receipt = {
            "job_id": job_id,
            "regulation": request.regulation,
            "action": request.action,
            "status": QUEUED,
            "dry_run": request.dry_run,
            "suppress": request.suppress,
            "identities": identity_hashes(key, normalised),
            "created": _now(),
            "started": None,
            "finished": None,
            "counts": {},
            "files_rewritten": [],
            "error": None,
            # The process that runs it: a job whose process is gone never finishes, and is said to have failed.
            "pid": os.getpid(),
        }
        self._put(receipt)
        return job_id

    def fail_abandoned(self) -> list[str]:
        """Marks failed every queued or running job whose process has stopped (on this machine, where the store's
        file is); their ids. Their identities are kept as hashes only, so they cannot be run again from here: the
        error says to submit them again."""
        with self._lock:
            rows = self._connection.execute("SELECT receipt FROM jobs").fetchall()
        abandoned = [
            receipt["job_id"]
            for receipt in (json.loads(row) for (row,) in rows)
            if receipt["status"] in (QUEUED, RUNNING) and not _alive(receipt.get("pid"))
        ]
        for job_id in abandoned:
            self.update(job_id, status=FAILED, error=f"{INTERRUPTED}: the process running it stopped")
        return abandoned

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._connection.execute("SELECT receipt FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else json.loads(row[0])

    def update(self, job_id: str, **fields: Any) -> dict[str, Any]:
        """Sets fields of a job's receipt (``status``, ``counts``, ...), stamping ``started``/``finished`` as the
        status says; the receipt after."""
        receipt = self.get(job_id)
        if receipt is None:
            raise KeyError(job_id)
        receipt.update(fields)
        if fields.get("status") == RUNNING:
            receipt["started"] = _now()
        if fields.get("status") in (DONE, FAILED):
            receipt["finished"] = _now()
        self._put(receipt)
        return receipt

    def close(self) -> None:
        self._connection.close()

    def _put(self, receipt: Mapping[str, Any]) -> None:
        with self._lock, transaction(self._connection):
            self._connection.execute(
                "INSERT OR REPLACE INTO jobs (id, receipt) VALUES (?, ?)",
                (receipt["job_id"], json.dumps(receipt, sort_keys=True)),
            )


class PrivacyJobs:
    """Runs submitted jobs one at a time on a thread of its own (``serve``'s job routes).

    ``normalise`` turns a request's identities into their normal forms (for the receipt's hashes), raising
    :class:`JobRequestError` when none is usable; ``run`` carries out a queued job, given its id and request, and
    returns the counts and files for its receipt (:func:`privacy.runner.run_job` with the deployment's settings).
    """

    def __init__(
        self,
        store: JobStore,
        key: bytes,
        normalise: Callable[[JobRequest], Sequence[Identity]],
        run: Callable[[str, JobRequest], Mapping[str, Any]],
    ) -> None:
        self._store = store
        self._key = key
        self._normalise = normalise
        self._run = run
        self._queue: queue.Queue[tuple[str, JobRequest] | None] = queue.Queue()
        store.fail_abandoned()
        self._worker = threading.Thread(target=self._work, name="privacy-jobs", daemon=True)
        self._worker.start()

    def submit(self, request: JobRequest) -> str:
        """Queues the job; its id. Raises :class:`JobRequestError` for identities none of which can be normalised."""
        job_id = self._store.create(request, self._normalise(request), self._key)
        self._queue.put((job_id, request))
        return job_id

    def status(self, job_id: str) -> dict[str, Any] | None:
        return self._store.get(job_id)

    def close(self, timeout_s: float = 30.0) -> None:
        """Lets the job in progress finish (up to ``timeout_s``); the jobs still queued are marked failed, to be
        submitted again."""
        while True:
            try:
                job_id, _ = self._queue.get_nowait()
            except queue.Empty:
                break
            self._store.update(job_id, status=FAILED, error=f"{INTERRUPTED}: serve stopped before it ran")
        self._queue.put(None)
        self._worker.join(timeout_s)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            job_id, request = item
            run_queued(self._store, job_id, request, self._run)


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def run_queued(
    store: JobStore, job_id: str, request: JobRequest, run: Callable[[str, JobRequest], Mapping[str, Any]]
) -> dict[str, Any]:
    """Runs a queued job and records how it ended; the final receipt. A failure is kept as its error's class and a
    message that names no identity."""
    store.update(job_id, status=RUNNING)
    try:
        outcome = run(job_id, request)
    except Exception as error:  # a job's failure is recorded, never raised into the server
        return store.update(job_id, status=FAILED, error=f"{type(error).__name__}: the job stopped; run it again")
    return store.update(job_id, status=DONE, **outcome)
