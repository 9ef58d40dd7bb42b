"""The privacy job routes of ``profilestream serve``: submitting a job, its receipt, the privacy token's role.

The app is called in process (FastAPI's TestClient) with :class:`~privacy.jobs.PrivacyJobs` on an in-memory job store
and stand-ins for normalising and running a job, so each test controls how a job goes; the ``serve`` tests build the
app through ``profilestream serve``, and one of them runs jobs with the real runner on empty SQLite stores.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

import privacy.runner  # noqa: F401 (imported before a test patches the store openers, which it binds on import)
import service.api
import stores.opening as store_opening
from identity.model import Identity
from pipelines.cli import main
from pipelines.config import load_config
from privacy.jobs import DONE, FAILED, MAX_IDENTITIES, QUEUED, JobRequest, JobRequestError, JobStore, PrivacyJobs
from privacy.keys import PRIVACY_KEY_ENV, identity_hash
from service.api import API_TOKEN_ENV, create_app
from service.inlet import AuthFailureLimit
from service.privacy_api import PRIVACY_TOKEN_ENV, privacy_role, privacy_token
from tests.service.test_api import AUTH as API_AUTH
from tests.service.test_api import PROFILE_ROUTES
from tests.service.test_api import TOKEN as API_TOKEN
from tests.service.test_profile_lookup import ANN, OpenedStores, needs_sqlite_store, sample_store

PRIVACY_TOKEN = "privacy-Token_2"
PRIVACY_AUTH = {"Authorization": f"Bearer {PRIVACY_TOKEN}"}
KEY = b"a privacy key of 32 bytes, test."
SECRET_EMAIL = "ann.secret@example.com"
ANN_JOB = {"regulation": "gdpr", "action": "delete", "identities": [{"namespace": "Email", "id": SECRET_EMAIL}]}
OUTCOME = {"counts": {"lake": {"events": 2}, "profile_store": {"views": 1}}, "files_rewritten": ["events/a.parquet"]}
JOB_TIMEOUT_S = 10.0


def given_as_is(request: JobRequest) -> list[Identity]:
    """Stands for normalisation: the identities as given; none (a JobRequestError) when an id is ``unusable``."""
    if any(identity_id == "unusable" for _, identity_id in request.identities):
        raise JobRequestError("none of the identities given is of a configured namespace and a usable id")
    return [Identity(namespace, identity_id) for namespace, identity_id in request.identities]


class Runs:
    """Stands for running a job: records each job, returns :data:`OUTCOME` or raises what it was told to, and may
    hold a job until released."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.jobs: list[tuple[str, JobRequest]] = []
        self.failure = failure
        self.release = threading.Event()
        self.release.set()

    def __call__(self, job_id: str, request: JobRequest) -> dict:
        self.jobs.append((job_id, request))
        self.release.wait(JOB_TIMEOUT_S)
        if self.failure is not None:
            raise self.failure
        return OUTCOME


@pytest.fixture(scope="module")
def settings():
    return load_config(None).stitch_settings()


@pytest.fixture
def runs() -> Runs:
    return Runs()


@pytest.fixture
def client(settings, runs) -> Iterator[TestClient]:
    yield from _client(settings, runs)


def _client(settings, runs: Runs, auth_failures: AuthFailureLimit | None = None) -> Iterator[TestClient]:
    jobs = PrivacyJobs(JobStore(":memory:"), KEY, given_as_is, runs)
    app = create_app(
        sample_store(), settings, API_TOKEN, roles=[privacy_role(jobs, PRIVACY_TOKEN)], auth_failures=auth_failures
    )
    try:
        with TestClient(app) as test_client:
            yield test_client
    finally:
        jobs.close()


def submit(client: TestClient, body: object) -> object:
    return client.post("/privacy/jobs", json=body, headers=PRIVACY_AUTH)


def finished(client: TestClient, job_id: str) -> dict:
    """The job's receipt once it is done or failed."""
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (receipt := client.get(f"/privacy/jobs/{job_id}", headers=PRIVACY_AUTH).json())["status"] not in (
        DONE,
        FAILED,
    ):
        assert time.monotonic() < deadline, receipt
        time.sleep(0.01)
    return receipt


def test_a_posted_job_is_202_queued_with_its_location(client):
    response = submit(client, ANN_JOB)
    assert response.status_code == 202
    job_id = response.json()["job_id"]
    assert response.json() == {"job_id": job_id, "status": QUEUED}
    assert response.headers["Location"] == f"/privacy/jobs/{job_id}"


def test_a_job_goes_from_queued_to_done_and_its_receipt_holds_the_run_s_counts_and_times(client, runs):
    runs.release.clear()
    job_id = submit(client, {**ANN_JOB, "regulation": "ccpa", "dry_run": True}).json()["job_id"]
    waiting = client.get(f"/privacy/jobs/{job_id}", headers=PRIVACY_AUTH).json()
    runs.release.set()
    receipt = finished(client, job_id)

    assert waiting["status"] in (QUEUED, "running") and waiting["finished"] is None
    assert receipt["status"] == DONE
    assert (receipt["regulation"], receipt["action"], receipt["dry_run"], receipt["suppress"]) == (
        "ccpa",
        "delete",
        True,
        False,
    )
    assert (receipt["counts"], receipt["files_rewritten"], receipt["error"]) == (
        OUTCOME["counts"],
        OUTCOME["files_rewritten"],
        None,
    )
    assert receipt["created"] <= receipt["started"] <= receipt["finished"]
    [(ran_id, request)] = runs.jobs
    assert (ran_id, request.identities, request.dry_run) == (job_id, (("Email", SECRET_EMAIL),), True)


def test_a_receipt_holds_the_identities_only_as_keyed_hashes(client):
    job_id = submit(client, ANN_JOB).json()["job_id"]
    response = client.get(f"/privacy/jobs/{job_id}", headers=PRIVACY_AUTH)
    assert response.json()["identities"] == [identity_hash(KEY, Identity("Email", SECRET_EMAIL))]
    assert "ann.secret" not in response.text


def test_what_a_run_adds_to_the_receipt_is_shown(settings):
    def exported(job_id: str, request: JobRequest) -> dict:
        return {"counts": {}, "out_dir": f"data/privacy/access/{job_id}"}

    jobs = PrivacyJobs(JobStore(":memory:"), KEY, given_as_is, exported)
    try:
        app = create_app(sample_store(), settings, API_TOKEN, roles=[privacy_role(jobs, PRIVACY_TOKEN)])
        with TestClient(app) as client:
            job_id = submit(client, {**ANN_JOB, "action": "access"}).json()["job_id"]
            assert finished(client, job_id)["out_dir"] == f"data/privacy/access/{job_id}"
    finally:
        jobs.close()


def test_a_failing_run_leaves_the_job_failed_with_an_error_naming_no_identity(settings):
    runs = Runs(failure=RuntimeError(f"cannot erase {SECRET_EMAIL}"))
    for client in _client(settings, runs):
        job_id = submit(client, ANN_JOB).json()["job_id"]
        receipt = finished(client, job_id)
    assert receipt["status"] == FAILED
    assert receipt["error"].startswith("RuntimeError")
    assert "ann.secret" not in receipt["error"]


def test_an_unknown_job_is_404(client):
    response = client.get("/privacy/jobs/pj-0123456789abcdef0123456789abcdef", headers=PRIVACY_AUTH)
    assert (response.status_code, response.json()) == (404, {"detail": "not found"})


SECRET_IDENTITY = {"namespace": "Email", "id": SECRET_EMAIL}


@pytest.mark.parametrize(
    "body",
    [
        {key: value for key, value in ANN_JOB.items() if key != "regulation"},
        {key: value for key, value in ANN_JOB.items() if key != "identities"},
        {**ANN_JOB, "regulation": "hipaa"},
        {**ANN_JOB, "action": "erase"},
        {**ANN_JOB, "regulation": 1},
        {**ANN_JOB, "identities": []},
        {**ANN_JOB, "identities": [SECRET_IDENTITY] * (MAX_IDENTITIES + 1)},
        {**ANN_JOB, "identities": SECRET_EMAIL},
        {**ANN_JOB, "identities": [SECRET_EMAIL]},
        {**ANN_JOB, "identities": [{"namespace": "Email"}]},
        {**ANN_JOB, "identities": [{"namespace": "Email", "id": ""}]},
        {**ANN_JOB, "identities": [{"namespace": "Email", "id": 5}]},
        {**ANN_JOB, "identities": [{**SECRET_IDENTITY, SECRET_EMAIL: SECRET_EMAIL}]},
        {**ANN_JOB, SECRET_EMAIL: True},
        {**ANN_JOB, "dryrun": True},
        {**ANN_JOB, "dry_run": "yes"},
        {**ANN_JOB, "action": "access", "suppress": True},
        {**ANN_JOB, "identities": [{"namespace": "Email", "id": "unusable"}]},
        [SECRET_IDENTITY],
        SECRET_EMAIL,
    ],
)
def test_a_bad_body_is_422_without_echoing_an_identity_and_queues_nothing(client, runs, body):
    response = submit(client, body)
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"]
    assert "ann.secret" not in response.text
    assert runs.jobs == []


def test_a_body_that_is_not_json_is_422_without_echoing_it(client):
    response = client.post(
        "/privacy/jobs",
        content=f'{{"identities": "{SECRET_EMAIL}"',
        headers={**PRIVACY_AUTH, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert "ann.secret" not in response.text


@pytest.mark.parametrize(
    ("method", "url"), [("POST", "/privacy/jobs"), ("GET", "/privacy/jobs/pj-0123456789abcdef0123456789abcdef")]
)
def test_the_privacy_routes_take_only_the_privacy_token(client, runs, method, url):
    def status(headers: dict[str, str]) -> int:
        return client.request(method, url, json=ANN_JOB, headers=headers).status_code

    assert status({}) == 401
    assert status(API_AUTH) == 403
    assert status({"Authorization": f"Bearer {PRIVACY_TOKEN}x"}) == 403
    assert status(PRIVACY_AUTH) in (202, 404)


def test_without_a_token_a_malformed_job_is_401_before_its_body_is_judged(client):
    response = client.post("/privacy/jobs", json={"identities": SECRET_EMAIL})
    assert (response.status_code, response.json()) == (401, {"detail": "a bearer token is required"})


def test_the_privacy_token_does_not_open_the_profile_routes(client):
    for url in PROFILE_ROUTES:
        assert client.get(url, headers=PRIVACY_AUTH).status_code == 403, url
        assert client.get(url, headers=API_AUTH).status_code == 200, url


def test_failed_privacy_authentications_count_with_the_api_s(settings, runs):
    for client in _client(settings, runs, AuthFailureLimit(2, 60.0)):
        statuses = [
            client.get(f"/profiles/{ANN}", headers=PRIVACY_AUTH).status_code,
            client.post("/privacy/jobs", json=ANN_JOB, headers=API_AUTH).status_code,
            client.post("/privacy/jobs", json=ANN_JOB, headers=PRIVACY_AUTH).status_code,
        ]
    assert statuses == [403, 403, 429]
    assert runs.jobs == []


def test_the_privacy_token_must_not_be_the_api_token(settings, runs):
    jobs = PrivacyJobs(JobStore(":memory:"), KEY, given_as_is, runs)
    try:
        with pytest.raises(ValueError, match="privacy token must not be the API token"):
            create_app(sample_store(), settings, API_TOKEN, roles=[privacy_role(jobs, API_TOKEN)])
    finally:
        jobs.close()


def test_without_a_privacy_role_there_are_no_privacy_routes(settings):
    with TestClient(create_app(sample_store(), settings, API_TOKEN)) as client:
        assert client.post("/privacy/jobs", json=ANN_JOB, headers=API_AUTH).status_code == 404


def test_the_openapi_document_describes_the_privacy_routes_under_their_own_scheme(client):
    document = client.get("/openapi.json").json()
    submit_doc = document["paths"]["/privacy/jobs"]["post"]
    receipt_doc = document["paths"]["/privacy/jobs/{job_id}"]["get"]
    assert submit_doc["security"] == receipt_doc["security"] == [{"PrivacyBearer": []}]
    assert {"202", "401", "403", "422"} <= set(submit_doc["responses"])
    assert {"200", "401", "403", "404"} <= set(receipt_doc["responses"])
    submission = document["components"]["schemas"]["JobSubmission"]["properties"]
    assert (submission["regulation"]["enum"], submission["action"]["enum"]) == (["gdpr", "ccpa"], ["delete", "access"])
    assert document["components"]["securitySchemes"]["PrivacyBearer"]["scheme"] == "bearer"


def test_there_is_no_privacy_token_without_a_file_or_the_environment():
    assert privacy_token(None, {}) is None
    assert privacy_token(None, {PRIVACY_TOKEN_ENV: " "}) is None


def test_the_privacy_token_file_wins_over_the_environment(tmp_path):
    token_file = tmp_path / "privacy.token"
    token_file.write_text(PRIVACY_TOKEN + "\n")
    assert privacy_token(str(token_file), {PRIVACY_TOKEN_ENV: "other"}) == PRIVACY_TOKEN
    assert privacy_token(None, {PRIVACY_TOKEN_ENV: PRIVACY_TOKEN}) == PRIVACY_TOKEN


@pytest.mark.parametrize(
    ("content", "fragment"), [(None, "--privacy-token-file .*: No such file"), ("a b", "one word")]
)
def test_a_privacy_token_file_that_gives_no_token_is_an_error_naming_it(tmp_path, content, fragment):
    token_file = tmp_path / "privacy.token"
    if content is not None:
        token_file.write_text(content)
    with pytest.raises(ValueError, match=fragment):
        privacy_token(str(token_file), {})


def serving(exercise: Callable[[TestClient], object]) -> tuple[Callable[..., None], list[object]]:
    """Stands for :func:`service.api.serve` in CLI tests: while ``serve`` runs, calls ``exercise`` with a client of the
    app it built and keeps what it returns."""
    outcomes: list[object] = []

    def serve(app, _listener, _limits) -> None:
        with TestClient(app) as client:
            outcomes.append(exercise(client))

    return serve, outcomes


@pytest.fixture
def serve_env(monkeypatch):
    """``serve``'s environment with the API token only."""
    monkeypatch.setenv(API_TOKEN_ENV, API_TOKEN)
    monkeypatch.delenv(PRIVACY_TOKEN_ENV, raising=False)
    monkeypatch.delenv(PRIVACY_KEY_ENV, raising=False)
    monkeypatch.setattr(store_opening, "open_profile_store", OpenedStores())
    return monkeypatch


def test_serve_without_a_privacy_token_has_no_privacy_routes(serve_env):
    serve, outcomes = serving(lambda client: client.post("/privacy/jobs", json=ANN_JOB, headers=API_AUTH).status_code)
    serve_env.setattr(service.api, "serve", serve)
    assert main(["serve", "--port", "0"]) == 0
    assert outcomes == [404]


@pytest.mark.parametrize(
    ("environ", "fragment"),
    [
        ({PRIVACY_TOKEN_ENV: PRIVACY_TOKEN}, PRIVACY_KEY_ENV),
        ({PRIVACY_TOKEN_ENV: PRIVACY_TOKEN, PRIVACY_KEY_ENV: "short"}, "at least"),
        ({PRIVACY_TOKEN_ENV: API_TOKEN, PRIVACY_KEY_ENV: KEY.decode()}, "must not be the API token"),
    ],
)
def test_serve_with_a_privacy_token_refuses_to_start_without_a_key_or_with_the_api_token(
    serve_env, capsys, tmp_path, environ, fragment
):
    for name, value in environ.items():
        serve_env.setenv(name, value)
    code = main(["serve", "--port", "0", "--privacy-store", f"sqlite:///{tmp_path}/privacy.sqlite"])
    [line] = capsys.readouterr().err.splitlines()
    assert code == 2
    assert fragment in line


def test_serve_refuses_a_privacy_store_that_is_not_a_sqlite_url(serve_env, capsys):
    serve_env.setenv(PRIVACY_TOKEN_ENV, PRIVACY_TOKEN)
    serve_env.setenv(PRIVACY_KEY_ENV, KEY.decode())
    assert main(["serve", "--port", "0", "--privacy-store", "redis://localhost:6379/0"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "privacy store" in line


@needs_sqlite_store
def test_serve_runs_privacy_jobs_on_its_lake_and_stores_then_stops_them(monkeypatch, tmp_path):
    """Through ``profilestream serve`` and the real job runner, on an empty lake and empty SQLite stores."""
    (tmp_path / "privacy.token").write_text(PRIVACY_TOKEN)
    (tmp_path / "lake").mkdir()
    monkeypatch.setenv(API_TOKEN_ENV, API_TOKEN)
    monkeypatch.setenv(PRIVACY_KEY_ENV, KEY.decode())

    def delete_then_access(client: TestClient) -> list[dict]:
        jobs = [submit(client, ANN_JOB), submit(client, {**ANN_JOB, "action": "access", "regulation": "ccpa"})]
        return [finished(client, job.json()["job_id"]) for job in jobs]

    serve, outcomes = serving(delete_then_access)
    monkeypatch.setattr(service.api, "serve", serve)
    flags = {
        "--privacy-token-file": tmp_path / "privacy.token",
        "--profile-store": f"sqlite:///{tmp_path}/profiles.sqlite",
        "--identity-store": f"sqlite:///{tmp_path}/identity.sqlite",
        "--privacy-store": f"sqlite:///{tmp_path}/privacy.sqlite",
        "--lake": tmp_path / "lake",
        "--privacy-out": tmp_path / "access",
    }
    assert main(["serve", "--port", "0", *(str(part) for flag in flags.items() for part in flag)]) == 0

    [[deleted, accessed]] = outcomes
    assert (deleted["status"], deleted["error"], deleted["counts"]["persons"]) == (DONE, None, 0)
    assert (accessed["status"], accessed["error"]) == (DONE, None)
    assert accessed["out_dir"] == str(tmp_path / "access" / accessed["job_id"])
    assert (tmp_path / "access" / accessed["job_id"] / "manifest.json").is_file()
    assert not [thread for thread in threading.enumerate() if thread.name == "privacy-jobs"]
    kept = JobStore(str(tmp_path / "privacy.sqlite"))
    try:
        assert kept.get(deleted["job_id"]) == deleted
    finally:
        kept.close()
