"""The HTTP face of the router (FastAPI): the same app runs in Ray Serve and, for comparison, in plain uvicorn.

Endpoints:

    POST /predict?user_id=U     body: the image bytes      -> tags, confidence, arm, model version, request id
         [&caption=C&hashtags=H&hashtags=H2&post_id=P]     what a fusion version reads beside the image
    POST /feedback              {"request_id", "event"}    -> the event recorded
    GET  /healthz               the process answers
    GET  /readyz                the champion has a model loaded (503 until it has)
    GET  /ab                    the A/B dashboard (HTML); ?token=T once sets its cookie (serving.access)
    GET  /ab/static/NAME        its stylesheet and script (dashboard.css, dashboard.js)
    GET  /ab/report.json        the A/B analysis the dashboard shows
    GET  /openapi.json          this, as an OpenAPI spec

When the app listens beyond 127.0.0.1 (``report_token`` given), the report surfaces (``/ab``, its
files and report, the detail of ``/readyz``) need ``Authorization: Bearer <token>`` or the
dashboard's cookie: 401 without; ``/readyz`` then answers only ``{"ready": ...}`` for probes.

Every refusal is a 4xx with ``{"detail": "..."}`` saying what was wrong; a user past the per-user
rate limit gets a 429 and when no arm can answer a 503, both with a ``Retry-After`` header (seconds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, Field

from components.errors import ConfigError, TrendloopError
from serving.access import COOKIE, bearer, dashboard_key, same
from serving.dashboard import ASSET_TYPES, Links, asset, page_headers, render_dashboard
from serving.eventlog import EVENTS
from serving.router import Refused, Router

Probe = Callable[[], Awaitable[int | None]]  # the model version an arm has loaded, or None


class Feedback(BaseModel):
    request_id: str = Field(min_length=1, max_length=64, description="the request_id /predict returned")
    event: Literal[EVENTS] = Field(description="what the user did with the tagged post")  # type: ignore[valid-type]


class Tag(BaseModel):
    label: str
    score: float


class Prediction(BaseModel):
    request_id: str
    user_id: str = Field(description="the user_id sent; what is logged is its keyed pseudonym, never this")
    arm: str = Field(description="champion or challenger")
    model_version: int
    experiment: str | None
    label: str
    confidence: float
    tags: list[Tag] = Field(description="the top labels, most likely first")
    latency_ms: float
    side_inputs: Literal["none", "online", "unavailable"] = Field(
        description="stored features the version read: none (image only), online, or unavailable (image alone)"
    )
    fallback: bool = Field(
        False, description="the user's own arm failed and `arm` answered instead (not counted in the A/B test)"
    )


class Problem(BaseModel):
    """Every refusal's body."""

    detail: str = Field(description="what was wrong, in one line")


class LogState(BaseModel):
    written: int = Field(description="records written since the replica started")
    pending: int = Field(description="records waiting to be written (a failed write keeps them)")
    dropped: int = Field(description="oldest records let go while writes kept failing and the queue was full")
    failures: int = Field(description="writes that failed")
    last_error: str | None = Field(description="the last failed write's error (null: none yet)")


class Readiness(BaseModel):
    """Readiness; the fields after ``ready`` are left out for a caller without the report token (when one
    is needed: the app listens beyond 127.0.0.1)."""

    ready: bool = Field(description="the champion has a model loaded")
    models: dict[str, int | None] | None = Field(None, description="the version each arm has loaded (null: none)")
    traffic: dict | None = Field(None, description="the router's knobs: split, experiment, versions")
    outcomes: dict[str, int] | None = Field(
        None, description="requests answered by their own arm, by the other one, by neither"
    )
    limited: int | None = Field(None, description="requests refused (429) by the per-user rate limit")
    logs: dict[str, LogState] | None = Field(None, description="this replica's prediction and feedback log writers")


_WHY = {
    400: "the upload is empty (predict), or the body is not JSON (feedback)",
    401: "the app listens beyond 127.0.0.1 and the report token is missing or wrong (Authorization: Bearer)",
    404: "no such request id (feedback) or file",
    413: "the upload is larger than the limit",
    415: "the upload is not an image, or of a format not accepted",
    422: "a parameter or the body is invalid, or the image cannot be decoded",
    429: "this user sent more than the per-user rate limit allows (see the Retry-After header)",
    503: "no arm can answer right now (see the Retry-After header), or the report cannot be computed",
}


def _problems(*codes: int) -> dict:
    """OpenAPI responses for refusals: every one is a ``Problem``."""
    return {code: {"model": Problem, "description": _WHY[code]} for code in codes}


class NoToken(Exception):
    """A report surface asked for without the right report token: 401, with the message the caller sees."""


NEEDED = "this needs the report token: send Authorization: Bearer <token>, or open /ab?token=<token> once in a browser"


class Recorded(BaseModel):
    request_id: str
    event: str
    arm: str
    recorded_at: str


_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "the image file's bytes (JPEG, PNG, WEBP, GIF, BMP or TIFF)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


def build_api(
    router: Router,
    probes: dict[str, Probe],
    report: Callable[[], dict],
    report_ttl_s: float = 5.0,
    refresh_s: int = 30,
    report_token: Callable[[], str] | None = None,
) -> FastAPI:
    """The FastAPI app over ``router``; ``report()`` computes the A/B report (it runs in a thread), which
    the dashboard fetches again every ``refresh_s`` seconds. ``report_token()``: the token the report
    surfaces need (``serving.access.TokenFile.read``); None: they are open (the app listens on loopback)."""
    api = FastAPI(
        title="trendloop serving",
        version="1",
        description="Image tags from the champion or the challenger model, sticky per user, with an A/B dashboard.",
    )
    cache: dict[str, tuple[float, dict]] = {}

    @api.exception_handler(Refused)
    async def refused(request: Request, err: Refused) -> JSONResponse:
        headers = {"Retry-After": str(err.retry_after)} if err.retry_after is not None else None
        return JSONResponse({"detail": err.message}, status_code=err.status, headers=headers)

    @api.exception_handler(NoToken)
    async def no_token(request: Request, err: NoToken) -> JSONResponse:
        headers = {"WWW-Authenticate": 'Bearer realm="trendloop reports"'}  # RFC 6750
        return JSONResponse({"detail": str(err)}, status_code=401, headers=headers)

    def token() -> str:
        try:
            return report_token()  # type: ignore[misc]
        except ConfigError as err:  # a replica that cannot read the token keeps the reports closed
            raise Refused(503, f"the report surfaces are closed: {err}") from None

    def shown(request: Request, cookie: bool = True) -> bool:
        """Whether the right token (or the dashboard's cookie) came, or none is needed; False: nothing came.
        A wrong one is refused (401)."""
        if report_token is None:
            return True
        given = bearer(request.headers.get("authorization"))
        if given is not None:
            if same(given, token()):
                return True
            raise NoToken("the report token is wrong")
        if cookie and COOKIE in request.cookies:
            if same(request.cookies[COOKIE], dashboard_key(token())):
                return True
            raise NoToken("the dashboard's cookie is out of date (the token changed): open /ab?token=<token> again")
        return False

    def guard(request: Request) -> None:
        if not shown(request):
            raise NoToken(NEEDED)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        # one line in the same shape as every other refusal, not FastAPI's list of error objects
        said = "; ".join(f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in err.errors())
        return JSONResponse({"detail": said or "invalid request"}, status_code=422)

    @api.post(
        "/predict",
        response_model=Prediction,
        openapi_extra=_IMAGE_BODY,
        responses=_problems(400, 413, 415, 422, 429, 503),
    )
    async def predict(
        request: Request,
        user_id: str = Query(
            min_length=1, max_length=128, pattern=r"\S", description="who posted: decides the arm, sticky"
        ),
        caption: str | None = Query(None, max_length=2200, description="the post's caption"),
        hashtags: Annotated[list[str] | None, Query(max_length=64, description="the post's hashtags, no #")] = None,
        post_id: str | None = Query(None, max_length=128, description="the post, if the feature store knows it"),
    ) -> dict:
        upload = await _read_capped(request, router.max_upload_bytes)
        return await router.predict(upload, user_id, caption, hashtags or (), post_id)

    @api.post("/feedback", response_model=Recorded, responses=_problems(400, 404, 422))
    async def feedback(body: Feedback) -> dict:
        # a request id not in memory is looked up in the log: off the event loop
        return await asyncio.to_thread(router.feedback, body.request_id, body.event)

    @api.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @api.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "not ready"}, **_problems(401)},
    )
    async def readyz(request: Request) -> JSONResponse:
        loaded = {arm: await _probe(probe) for arm, probe in probes.items()}
        ready = loaded.get("champion") is not None
        if not shown(request, cookie=False):  # a probe: whether it is ready, no more
            return JSONResponse({"ready": ready}, status_code=200 if ready else 503)
        body = {
            "ready": ready,
            "models": loaded,
            "traffic": router.traffic.__dict__,
            "outcomes": dict(router.outcomes),
            "limited": router.limited,
            "logs": {"predictions": router.predictions.state(), "feedback": router.feedback_log.state()},
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    @api.get("/ab/report.json", responses=_problems(401, 503), dependencies=[Depends(guard)])
    async def ab_report() -> dict:
        now = time.monotonic()
        if "report" not in cache or now - cache["report"][0] > report_ttl_s:
            try:
                cache["report"] = (now, await asyncio.to_thread(report))
            except TrendloopError as err:  # an experiment record or a log it cannot read: say which
                raise Refused(503, f"the A/B report cannot be computed: {err}") from None
        return cache["report"][1]

    @api.get("/ab", response_class=HTMLResponse, responses=_problems(401))
    async def dashboard(request: Request) -> Response:
        here = request.url_for("dashboard").path
        given = request.query_params.get("token")
        if report_token is not None and given is not None:  # a browser's first visit: the cookie, then the page
            if not same(given, token()):
                raise NoToken("the report token in the address is wrong")
            back = RedirectResponse(here, status_code=303)  # the token leaves the address bar and the history
            secure = request.url.scheme == "https"
            back.set_cookie(COOKIE, dashboard_key(given), path=here, httponly=True, samesite="strict", secure=secure)
            return back
        guard(request)
        report_url = request.url_for("ab_report").path
        style, script = (request.url_for("dashboard_file", name=n).path for n in ("dashboard.css", "dashboard.js"))
        links = Links(style=style, script=script)
        page = render_dashboard(report_url=report_url, refresh_s=refresh_s, links=links)
        return HTMLResponse(page, headers=page_headers(report_url, links))

    # the page's own files, not an API
    @api.get("/ab/static/{name}", include_in_schema=False, dependencies=[Depends(guard)])
    async def dashboard_file(name: str) -> Response:
        if name not in ASSET_TYPES:
            raise Refused(404, f"the dashboard has no file {name!r}")
        return Response(asset(name), media_type=ASSET_TYPES[name], headers={"X-Content-Type-Options": "nosniff"})

    return api


async def _probe(probe: Probe, timeout: float = 2.0) -> int | None:
    """An arm's loaded version; None when it does not answer in time or fails."""
    try:
        return await asyncio.wait_for(probe(), timeout)
    except Exception:  # noqa: BLE001 - an unhealthy arm reads as not ready, not as a 500
        return None


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``limit`` (before reading it all)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refused(413, f"the image is {int(declared):,} bytes; the limit is {limit:,}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Refused(413, f"the image is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
