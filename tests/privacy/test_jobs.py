"""Privacy jobs that cannot finish say so: a job's receipt never stays queued or running once nothing can run it."""

from __future__ import annotations

import subprocess
import threading

from identity.model import Identity
from privacy.jobs import DONE, FAILED, QUEUED, RUNNING, JobRequest, JobStore, PrivacyJobs

KEY = b"a-privacy-key-for-tests-only-0123456789"
REQUEST = JobRequest("gdpr", "delete", (("Email", "ann@example.com"),))
ANN = [Identity("Email", "ann@example.com")]


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_jobs_whose_process_died_are_failed_when_serve_starts_and_live_ones_are_left(tmp_path):
    store = JobStore(str(tmp_path / "privacy.sqlite"))
    orphaned, running, live = (store.create(REQUEST, ANN, KEY) for _ in range(3))
    store.update(orphaned, pid=dead_pid())
    store.update(running, status=RUNNING, pid=dead_pid())

    jobs = PrivacyJobs(store, KEY, lambda request: ANN, lambda job_id, request: {})
    jobs.close()

    for job_id in (orphaned, running):
        receipt = store.get(job_id)
        assert receipt["status"] == FAILED and "submit the job again" in receipt["error"] and receipt["finished"]
    assert store.get(live)["status"] == QUEUED


def test_jobs_still_queued_when_serve_stops_end_failed(tmp_path):
    store = JobStore(str(tmp_path / "privacy.sqlite"))
    started, release = threading.Event(), threading.Event()

    def run(job_id: str, request: JobRequest) -> dict:
        started.set()
        release.wait(10)
        return {"counts": {}}

    jobs = PrivacyJobs(store, KEY, lambda request: ANN, run)
    first, second = jobs.submit(REQUEST), jobs.submit(REQUEST)
    assert started.wait(10)
    threading.Timer(0.2, release.set).start()
    jobs.close()

    assert store.get(first)["status"] == DONE
    assert store.get(second)["status"] == FAILED and "serve stopped" in store.get(second)["error"]
