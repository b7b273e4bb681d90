"""The blinded expert review web app (Starlette; served by uvicorn on 127.0.0.1).

Pages (all behind a login except ``/login`` and the static CSS/JS):

* ``/``: both studies with this reviewer's progress;
* ``/faithfulness/<case>``: Study 1 — the de-identified video, the feature's
  question, the model's answer and its justifications (buttons seek the
  video to each window), one 1-5 score;
* ``/comparison/<case>``: Study 2 — the video, then rationales A/B/C in this
  reviewer's shuffled order, four 1-5 scales each, best, second best and a
  comment;
* ``/media/<study>/<case>``: the case's de-identified video (range requests),
  only from the de-identified layers (``tasks.review.deidentified_media``).

Every input saves itself the moment it changes (``POST /api/save``, one
value); without JavaScript the page's Save button posts the same values.
The browser only ever sees slot letters, never variant names or model ids,
and only the logged-in reviewer's own ratings.

Security: argon2 password hashes; sessions in a signed cookie (HttpOnly,
SameSite=Strict, absolute lifetime ``review.session_hours``) that carries a
session token the database must still know: logout, a password reset and
``semioflow review logout NAME`` end sessions for good (a copied cookie too); a per-session
CSRF token on every POST (form field or ``X-CSRF-Token`` header) plus an
Origin / Sec-Fetch-Site check; a Host allow-list (DNS rebinding); a strict
Content-Security-Policy (no inline script); no caching of pages.
"""

from __future__ import annotations

import hmac
import math
import secrets
import time
from collections import defaultdict, deque
from pathlib import Path
from urllib.parse import urlsplit

import jinja2
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from tasks import review
from tasks.params import Params

PACKAGE = Path(__file__).resolve().parent
TEMPLATES_DIR = PACKAGE / "templates" / "review"
STATIC_DIR = PACKAGE / "static" / "review"
COOKIE = "semioflow_review"
PUBLIC_PATHS = ("/login", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
LOGIN_FREE_FAILURES = 5  # failed logins per name within LOGIN_WINDOW_S before each try must wait
LOGIN_WINDOW_S = 900.0
LOGIN_BACKOFF_S = 1.0  # the wait after the first failure past the free ones; doubles with each more
LOGIN_BACKOFF_CAP_S = 60.0  # never longer: a guesser slows down, the real reviewer is not locked out
SECONDS_PER_HOUR = 3600.0
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; media-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",  # no-referrer would make Chromium send "Origin: null" on our own forms
    "cache-control": "no-store",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
FAITH_LABELS = {1: "not faithful", 2: "mostly unfaithful", 3: "partly faithful", 4: "mostly faithful",
                5: "fully faithful"}
LIKERT_LABELS = {1: "very poor", 2: "poor", 3: "fair", 4: "good", 5: "excellent"}


class _SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every response."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items() if k.encode() not in names]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _RequireLogin:
    """Every path but the login page and static assets needs a live session; POSTs must come from this origin."""

    def __init__(self, app, *, session_s: float, engine: Engine) -> None:
        self.app = app
        self.session_s = session_s
        self.engine = engine

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        if request.method not in SAFE_METHODS and not _same_origin(request):
            await PlainTextResponse("cross-site request refused", status_code=403)(scope, receive, send)
            return
        path = scope["path"]
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send)
            return
        session = scope.get("session", {})
        token = session.get("token")
        live = token is not None and await run_in_threadpool(review.session_reviewer, self.engine, str(token),
                                                             self.session_s) == session.get("reviewer_id")
        if not session.get("reviewer_id") or not live:
            session.clear()
            if path.startswith("/api/") or request.method not in SAFE_METHODS:
                response: Response = JSONResponse({"error": "not logged in"}, status_code=401)
            else:
                response = RedirectResponse("/login", status_code=303)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _same_origin(request: Request) -> bool:
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return True  # old clients send neither; the CSRF token still has to match
    parts = urlsplit(origin)
    return parts.netloc == request.headers.get("host", "") and parts.scheme in ("http", "https")


def _csrf_ok(request: Request, token: str | None) -> bool:
    expected = request.session.get("csrf")
    return bool(expected and token and hmac.compare_digest(str(expected), str(token)))


def _new_csrf(request: Request) -> str:
    request.session["csrf"] = secrets.token_urlsafe(32)
    return request.session["csrf"]


def create_app(engine: Engine, data_dir: Path, params: Params, *, allowed_hosts: tuple[str, ...] = ()) -> Starlette:
    """The review app over ``engine`` (cases already prepared) for the cohort in ``data_dir``."""
    data_dir = Path(data_dir)
    seed = params.base.seed
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    templates = Jinja2Templates(env=env)
    failures: dict[str, deque] = defaultdict(deque)

    def page(request: Request, name: str, status: int = 200, **ctx) -> Response:
        ctx.setdefault("reviewer", request.session.get("name"))
        ctx.setdefault("csrf", request.session.get("csrf") or _new_csrf(request))
        return templates.TemplateResponse(request, name, ctx, status_code=status)

    def reviewer_id(request: Request) -> int:
        return int(request.session["reviewer_id"])

    async def login_form(request: Request) -> Response:
        if request.session.get("reviewer_id"):
            return RedirectResponse("/", status_code=303)
        return page(request, "login.html", error=None)

    async def login(request: Request) -> Response:
        form = await request.form()
        name = str(form.get("name", ""))[:64]
        if not _csrf_ok(request, form.get("csrf")):
            return page(request, "login.html", 403, error="The form expired; please try again.")
        now = time.monotonic()
        recent = failures[name]
        while recent and now - recent[0] > LOGIN_WINDOW_S:
            recent.popleft()
        extra = len(recent) - LOGIN_FREE_FAILURES
        if extra >= 0:
            wait_s = min(LOGIN_BACKOFF_CAP_S, LOGIN_BACKOFF_S * 2 ** extra) - (now - recent[-1])
            if wait_s > 0:
                return page(request, "login.html", 429,
                            error=f"Too many failed attempts; try again in {math.ceil(wait_s)} s.")
        # counted before the password is checked: concurrent guesses each take a slot (no await in between)
        recent.append(now)
        rid = await run_in_threadpool(review.authenticate, engine, name, str(form.get("password", "")))
        if rid is None:
            return page(request, "login.html", 401, error="Unknown name or wrong password.")
        failures.pop(name, None)
        if request.session.get("token"):  # logging in again ends the session this browser had
            await run_in_threadpool(review.end_session, engine, str(request.session["token"]))
        request.session.clear()
        token = await run_in_threadpool(review.start_session, engine, rid)
        request.session.update(reviewer_id=rid, name=name, token=token)
        _new_csrf(request)
        return RedirectResponse("/", status_code=303)

    async def logout(request: Request) -> Response:
        form = await request.form()
        if not _csrf_ok(request, form.get("csrf")):
            return PlainTextResponse("invalid form token", status_code=403)
        if request.session.get("token"):
            await run_in_threadpool(review.end_session, engine, str(request.session["token"]))
        request.session.clear()
        return RedirectResponse("/login", status_code=303)

    def _overview(rid: int) -> dict:
        faith = review.case_list(engine, review.STUDY_FAITHFULNESS)
        comp = review.case_list(engine, review.STUDY_COMPARISON)
        scored = review.faithfulness_scores(engine, rid)
        done = review.comparison_done(engine, rid)
        return {
            review.STUDY_FAITHFULNESS: [dict(case_id=c["case_id"], done=c["case_id"] in scored) for c in faith],
            review.STUDY_COMPARISON: [dict(case_id=c["case_id"], done=c["case_id"] in done) for c in comp],
            "random_weights": any(review.random_weights(c) for c in faith + comp),
        }

    async def home(request: Request) -> Response:
        ov = await run_in_threadpool(_overview, reviewer_id(request))
        return page(request, "home.html", studies=[
            dict(key=review.STUDY_FAITHFULNESS, title="Study 1 — Faithfulness of justifications",
                 cases=ov[review.STUDY_FAITHFULNESS]),
            dict(key=review.STUDY_COMPARISON, title="Study 2 — Blinded comparison of rationales",
                 cases=ov[review.STUDY_COMPARISON])], random_weights=ov["random_weights"])

    def _neighbours(study: str, case_id: str, rid: int) -> dict:
        ov = _overview(rid)[study]
        ids = [c["case_id"] for c in ov]
        i = ids.index(case_id)
        nxt = next((c["case_id"] for c in ov[i + 1:] + ov[:i] if not c["done"]), None)
        return dict(number=i + 1, total=len(ids), prev=ids[i - 1] if i else None,
                    next=ids[i + 1] if i + 1 < len(ids) else None, next_open=nxt)

    async def faithfulness_page(request: Request) -> Response:
        cid = request.path_params["case_id"]
        rid = reviewer_id(request)
        case = await run_in_threadpool(review.get_case, engine, review.STUDY_FAITHFULNESS, cid)
        if case is None:
            return page(request, "missing.html", 404)
        scores = await run_in_threadpool(review.faithfulness_scores, engine, rid)
        nav = await run_in_threadpool(_neighbours, review.STUDY_FAITHFULNESS, cid, rid)
        return page(request, "faithfulness.html", study=review.STUDY_FAITHFULNESS, case_id=cid, nav=nav,
                    score=scores.get(cid),
                    feature_name=case["feature_name"], question=case["question"], predicted=case["predicted"],
                    justifications=case["justifications"], random_weights=review.random_weights(case),
                    labels=FAITH_LABELS)

    async def faithfulness_post(request: Request) -> Response:
        cid = request.path_params["case_id"]
        form = await request.form()
        if not _csrf_ok(request, form.get("csrf")):
            return PlainTextResponse("invalid form token", status_code=403)
        if form.get("score"):
            try:
                await run_in_threadpool(review.save_faithfulness, engine, reviewer_id(request), cid, form["score"])
            except review.ReviewError as exc:
                return PlainTextResponse(str(exc), status_code=400)
        return RedirectResponse(f"/faithfulness/{cid}", status_code=303)

    async def comparison_page(request: Request) -> Response:
        cid = request.path_params["case_id"]
        rid = reviewer_id(request)
        case = await run_in_threadpool(review.get_case, engine, review.STUDY_COMPARISON, cid)
        if case is None:
            return page(request, "missing.html", 404)
        state = await run_in_threadpool(review.comparison_state, engine, rid, cid)
        nav = await run_in_threadpool(_neighbours, review.STUDY_COMPARISON, cid, rid)
        letter = {v: s for s, v in review.slots(case, rid, seed)}
        shown = [dict(slot=s, rationale=case["variants"][v],
                      scores={sc: state["scores"].get((v, sc)) for sc in review.SCALES})
                 for s, v in review.slots(case, rid, seed)]
        ch = state["choices"]
        return page(request, "comparison.html", study=review.STUDY_COMPARISON, case_id=cid, nav=nav,
                    context=case["context"], shown=shown,
                    scales=[(s, review.SCALE_NAMES[s]) for s in review.SCALES], labels=LIKERT_LABELS,
                    best=letter.get(ch["best"]), second=letter.get(ch["second"]), comment=ch["comment"],
                    random_weights=review.random_weights(case))

    def _save(rid: int, study: str, cid: str, field: str, value: str | None) -> dict:
        """Save one value named as the page names it (slot letters, never variants); returns choice letters."""
        if study == review.STUDY_FAITHFULNESS:
            if field != "score":
                raise review.ReviewError("unknown field")
            review.save_faithfulness(engine, rid, cid, value)
            return {}
        if study != review.STUDY_COMPARISON:
            raise review.ReviewError("unknown study")
        case = review.get_case(engine, study, cid)
        if case is None:
            raise review.ReviewError("no such case")
        variant_of = dict(review.slots(case, rid, seed))
        if field in ("best", "second"):
            if value not in (None, "") and value not in variant_of:
                raise review.ReviewError("no such slot")
            ch = review.save_choice(engine, rid, cid, field, variant_of.get(value) if value else None)
        elif field == "comment":
            ch = review.save_choice(engine, rid, cid, field, value)
        else:
            slot, _, scale = field.partition(".")
            if slot not in variant_of:
                raise review.ReviewError("unknown field")
            review.save_likert(engine, rid, cid, variant_of[slot], scale, value)
            ch = review.comparison_state(engine, rid, cid)["choices"]
        letter = {v: s for s, v in variant_of.items()}
        return {"best": letter.get(ch["best"]), "second": letter.get(ch["second"])}

    async def comparison_post(request: Request) -> Response:
        cid = request.path_params["case_id"]
        form = await request.form()
        if not _csrf_ok(request, form.get("csrf")):
            return PlainTextResponse("invalid form token", status_code=403)
        rid = reviewer_id(request)
        fields = [k for k in form if k != "csrf"]
        try:
            for f in sorted(fields, key=lambda k: k == "second"):  # best first: choosing it may clear second
                await run_in_threadpool(_save, rid, review.STUDY_COMPARISON, cid, f, str(form[f]))
        except review.ReviewError as exc:
            return PlainTextResponse(str(exc), status_code=400)
        return RedirectResponse(f"/comparison/{cid}", status_code=303)

    async def api_save(request: Request) -> Response:
        if not _csrf_ok(request, request.headers.get("x-csrf-token")):
            return JSONResponse({"error": "invalid form token; reload the page"}, status_code=403)
        try:
            body = await request.json()
        except ValueError:
            return JSONResponse({"error": "expected JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "expected a JSON object"}, status_code=400)
        value = body.get("value")
        try:
            choices = await run_in_threadpool(_save, reviewer_id(request), str(body.get("study")),
                                              str(body.get("case_id")), str(body.get("field")),
                                              None if value is None else str(value))
        except review.ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({"ok": True, "choices": choices})

    async def favicon(request: Request) -> Response:
        # Chromium fetches it without the SameSite=Strict cookie; redirected to /login it would reset the CSRF token
        return Response(status_code=204)

    async def media(request: Request) -> Response:
        study, cid = request.path_params["study"], request.path_params["case_id"]
        if study not in review.STUDIES:
            return PlainTextResponse("not found", status_code=404)
        case = await run_in_threadpool(review.get_case, engine, study, cid)
        if case is None:
            return PlainTextResponse("not found", status_code=404)
        try:  # hashing a video on its first request: off the event loop, other reviewers' pages go on
            path = await run_in_threadpool(review.deidentified_media, data_dir, case["media"])
        except review.ReviewError:
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(path, media_type="video/mp4", headers={"cache-control": "private, max-age=0"})

    routes = [
        Route("/login", login_form, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", logout, methods=["POST"]),
        Route("/", home, methods=["GET"]),
        Route("/faithfulness/{case_id}", faithfulness_page, methods=["GET"]),
        Route("/faithfulness/{case_id}", faithfulness_post, methods=["POST"]),
        Route("/comparison/{case_id}", comparison_page, methods=["GET"]),
        Route("/comparison/{case_id}", comparison_post, methods=["POST"]),
        Route("/api/save", api_save, methods=["POST"]),
        Route("/media/{study}/{case_id}", media, methods=["GET", "HEAD"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    session_s = params.review.session_hours * SECONDS_PER_HOUR
    secret = review.session_secret()
    mode = params.review.secure_cookie
    secure = mode == "on" or (mode == "auto" and params.review.host not in LOOPBACK_HOSTS)
    review.forget_db_secrets(engine)  # a secret an older version stored in the database signs nothing now
    hosts = list(dict.fromkeys((*LOOPBACK_HOSTS, *allowed_hosts, params.review.host)))
    middleware = [
        Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
        Middleware(_SecurityHeaders),
        Middleware(SessionMiddleware, secret_key=secret, session_cookie=COOKIE,
                   max_age=max(1, math.ceil(session_s)), same_site="strict", https_only=secure),
        Middleware(_RequireLogin, session_s=session_s, engine=engine),
    ]
    return Starlette(routes=routes, middleware=middleware)


def serve(engine: Engine, data_dir: Path, params: Params, *, host: str, port: int) -> None:
    """Run the app with uvicorn until interrupted (access logs off: URLs carry case ids only, but nothing is needed)."""
    import uvicorn

    app = create_app(engine, data_dir, params, allowed_hosts=(host,))
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False)
