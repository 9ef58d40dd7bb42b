"""The privacy job routes of ``profilestream serve``: erase or export a person over HTTP, behind a token of their own.

README ("Privacy jobs"):

- ``POST /privacy/jobs`` with ``{"regulation": "gdpr"|"ccpa", "action": "delete"|"access", "identities":
  [{"namespace", "id"}, ...], "dry_run": false, "suppress": false}`` queues a job on :class:`~privacy.jobs.PrivacyJobs`:
  202 ``{"job_id", "status": "queued"}`` with ``Location: /privacy/jobs/{job_id}``. A body of the wrong shape (a
  missing or unknown field, a wrong type) or a request :class:`~privacy.jobs.JobRequest` refuses (an unknown
  regulation or action, no identity, none usable) is a 422 that repeats no identity.
- ``GET /privacy/jobs/{job_id}``: 200 with the job's receipt (:meth:`~privacy.jobs.JobStore.get`: status, timestamps,
  counts, the identities only as keyed hashes), 404 ``{"detail": "not found"}`` for an unknown id.

Both need ``Authorization: Bearer`` the privacy token (``--privacy-token-file`` or :data:`PRIVACY_TOKEN_ENV`), which
the profile routes refuse as the privacy routes refuse the API token: erasing people is another role than looking
them up. :func:`privacy_role` gives the routes as a :class:`service.api.Role` for :func:`service.api.create_app`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, HTTPException, Response
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from privacy.jobs import ACTIONS, MAX_IDENTITIES, QUEUED, REGULATIONS, JobRequest, JobRequestError, PrivacyJobs
from service.api import Role, bearer_token, unprocessable

PRIVACY_TOKEN_ENV = "PROFILESTREAM_PRIVACY_TOKEN"
JOBS_PATH = "/privacy/jobs"

_PRIVACY_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="PrivacyBearer",
    description=f"The privacy token (--privacy-token-file or {PRIVACY_TOKEN_ENV}), not the API token",
)


class _Strict(BaseModel):
    # Unknown fields are refused rather than ignored: a misspelt "dry_run" must not make a dry run a real delete.
    model_config = ConfigDict(extra="forbid", strict=True)


class GivenIdentity(_Strict):
    namespace: str = Field(examples=["Email"])
    id: str = Field(examples=["ann@example.com"])


class JobSubmission(_Strict):
    """A privacy request as posted; :class:`~privacy.jobs.JobRequest` checks its values."""

    # Enumerated in the OpenAPI document only: JobRequest checks them, with its own message.
    regulation: str = Field(json_schema_extra={"enum": list(REGULATIONS)})
    action: str = Field(json_schema_extra={"enum": list(ACTIONS)})
    identities: list[GivenIdentity] = Field(description=f"1 to {MAX_IDENTITIES} identities of the person")
    dry_run: bool = Field(False, description="say what a delete would touch and change nothing")
    suppress: bool = Field(False, description="delete only: drop the person's later messages at ingestion")


class JobQueued(BaseModel):
    job_id: str
    status: str


class Receipt(BaseModel):
    """A job's receipt: what was asked, how it went, and the identities only as keyed hashes (HMAC-SHA-256, hex)."""

    # Kept open: what a job's run adds to its receipt (an access job's out_dir, a dry run's would_rewrite) is shown.
    model_config = ConfigDict(extra="allow")

    job_id: str
    regulation: str
    action: str
    status: str
    dry_run: bool
    suppress: bool
    identities: list[str]
    created: str
    started: str | None
    finished: str | None
    counts: dict[str, Any]
    files_rewritten: list[str]
    error: str | None


def privacy_token(token_file: str | None, environ: Mapping[str, str]) -> str | None:
    """The privacy token from ``token_file`` (which wins) or :data:`PRIVACY_TOKEN_ENV`, None without either (then
    ``serve`` has no privacy routes); raises a one-line ValueError for an unreadable file or a malformed token."""
    return bearer_token(token_file, environ, flag="--privacy-token-file", env=PRIVACY_TOKEN_ENV)


def privacy_role(jobs: PrivacyJobs, token: str) -> Role:
    """The privacy job routes on ``jobs``, behind ``token``."""
    return Role(token, (_jobs_router(jobs),), _PRIVACY_BEARER, whose="the privacy routes'")


def _jobs_router(jobs: PrivacyJobs) -> APIRouter:
    router = APIRouter(tags=["privacy"])

    # Plain `def` routes: submitting writes the job store, so FastAPI runs them on its worker threads.
    @router.post(JOBS_PATH, status_code=202, response_model=JobQueued)
    def submit_job(submission: JobSubmission, response: Response) -> dict[str, str]:
        try:
            request = JobRequest(
                regulation=submission.regulation,
                action=submission.action,
                identities=tuple((given.namespace, given.id) for given in submission.identities),
                dry_run=submission.dry_run,
                suppress=submission.suppress,
            )
            job_id = jobs.submit(request)
        except JobRequestError as error:
            raise unprocessable(("body",), str(error)) from None
        response.headers["Location"] = f"{JOBS_PATH}/{job_id}"
        return {"job_id": job_id, "status": QUEUED}

    @router.get(
        f"{JOBS_PATH}/{{job_id}}", response_model=Receipt, responses={404: {"description": "No job with this id"}}
    )
    def job_receipt(job_id: str) -> dict[str, Any]:
        receipt = jobs.status(job_id)
        if receipt is None:
            raise HTTPException(status_code=404, detail="not found")
        return receipt

    return router
