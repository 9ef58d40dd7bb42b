"""The console of ``profilestream serve``: a browser page to look people up and watch persons form.

Routes (README, "Console")::

    GET /console, /console/console.js, /console/console.css   the page and its assets, without a token
    GET /identities/{NAMESPACE:ID}                              the ``identity get`` line, behind the API token
    GET /pipeline/metrics                                       the run's figures, behind the API token

The page and its assets hold no data, so they are served to anyone who asks; everything they show is fetched with
the API token the user pastes into the page (kept in the tab's ``sessionStorage``, sent as ``Authorization: Bearer``).
They are plain files under ``service/console/``, with nothing from a CDN, and served with a Content-Security-Policy
that lets the page load and fetch from this server only.

``/identities/...`` answers :func:`~service.identity_lookup.lookup_identity` from the identity store, opened
read-only for each lookup (so a store made after ``serve`` started is found); an unknown identity is a 404, one
ingestion would reject (or not ``NAMESPACE:ID``) a 422, and a store that cannot be opened a 503.
``/pipeline/metrics`` is :class:`~service.pipeline_metrics.PipelineMetrics`' answer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException
from fastapi import Path as PathParam
from fastapi.responses import FileResponse

from identity.stitching import StitchSettings
from service.api import unprocessable
from service.identity_lookup import lookup_identity
from service.pipeline_metrics import PipelineMetrics
from stores.errors import StoreUnavailableError
from stores.identity import IdentityStore

CONSOLE_DIR = Path(__file__).parent / "console"
# The page's files, by the name they are asked for: nothing else under CONSOLE_DIR is served.
CONSOLE_ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}
# Scripts, styles and fetches from this server only; the SVG graph is drawn with attributes, never inline styles.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "X-Content-Type-Options": "nosniff"}

IdentityOpener = Callable[[], IdentityStore]
_IDENTITY_PARAM = ("path", "identity")


def console_router() -> APIRouter:
    """The page and its assets, served without a token: they hold no data."""
    router = APIRouter(include_in_schema=False)

    @router.get("/console")
    async def console_page() -> FileResponse:
        return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_HEADERS)

    @router.get("/console/{name}")
    async def console_asset(name: str) -> FileResponse:
        media_type = CONSOLE_ASSETS.get(name)
        if media_type is None:
            raise HTTPException(status_code=404, detail="not found")
        return FileResponse(CONSOLE_DIR / name, media_type=media_type, headers=_HEADERS)

    return router


def identities_router(open_store: IdentityOpener, settings: StitchSettings) -> APIRouter:
    """``GET /identities/{NAMESPACE:ID}``: the ``identity get`` line of the identity, from a store ``open_store``
    opens read-only for each lookup."""
    router = APIRouter(tags=["identities"])

    # A plain `def` route: the store read blocks, so FastAPI runs it on a worker thread.
    @router.get("/identities/{identity:path}")
    def identity_graph(
        identity: Annotated[str, PathParam(description="NAMESPACE:ID", examples=["Email:ann@example.com"])],
    ) -> dict[str, Any]:
        namespace, separator, _ = identity.partition(":")
        if not separator or not namespace:
            raise unprocessable(_IDENTITY_PARAM, "expected NAMESPACE:ID")
        try:
            store = open_store()
        except (ValueError, StoreUnavailableError):
            raise HTTPException(status_code=503, detail="the identity store cannot be opened") from None
        try:
            answer = lookup_identity(identity, store, settings)
        finally:
            store.close()
        if "rejected" in answer:
            raise unprocessable(_IDENTITY_PARAM, f"{answer['rejected']}, an identity ingestion never keeps")
        if answer["person_id"] is None:
            raise HTTPException(status_code=404, detail="not found")
        return answer

    return router


def pipeline_router(metrics: PipelineMetrics) -> APIRouter:
    """``GET /pipeline/metrics``: the figures of the run whose metrics file ``metrics`` reads."""
    router = APIRouter(tags=["pipeline"])

    @router.get("/pipeline/metrics")
    def pipeline_metrics() -> dict[str, Any]:
        return metrics.figures()

    return router
