"""Every touch of FastAPI's, Starlette's and MONAI Label's internals, in one place (the next monailabel upgrade
changes this file): :func:`install` puts the services on the running app, our routes ahead of MONAI Label's with
every stock route off the allow-list removed, and the HTTP guards (the auth guard, clear 4xx errors, 500s that show a
request id rather than the exception, and an upload size limit).

monailabel builds its FastAPI app before it loads ours, so all of it is attached to the running app once, when the
server switches the app into server mode.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from monailabel.interfaces.exception import ImageNotFoundException, LabelNotFoundException, MONAILabelException
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..auth.guard import Authenticator, AuthGuard, monai_label_user
from ..auth.policy import inherited
from ..errors import AxonSegError
from ..identifiers import escape_log_lines, log_safe
from ..services import Services
from . import activelearning, datastore, dicomweb, infer, jobs, labels, models, scoring, train, users, viewer, volumes

logger = logging.getLogger(__name__)

# Ours, in front of MONAI Label's; users (the built-in /auth/ and /users/) only where MONAI Label's OIDC is off.
ROUTERS = [
    infer.router,
    train.router,
    models.router,
    scoring.router,
    jobs.router,
    labels.router,
    datastore.router,
    activelearning.router,
    volumes.router,
    viewer.router,
    dicomweb.router,
]


def install(app: FastAPI, services: Services) -> None:
    """Serve axonseg on MONAI Label's running FastAPI ``app``: services, guards and routes (idempotent)."""
    app.state.services = services
    install_http_guards(app, services.settings.max_upload_bytes, services.auth)
    replace_routes(app, with_login=services.auth.mode != "oidc")


class UploadLimit:
    """Reject request bodies over ``max_bytes`` with 413 before they are written anywhere.

    Checks ``Content-Length`` up front and counts streamed (chunked) bodies as they arrive.
    """

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and int(length) > self.max_bytes:
            await self._reject(send, int(length))
            return
        received, too_large = 0, False

        async def counting_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                too_large = True
                raise _TooLarge(received)
            return message

        async def guarded_send(message: Message) -> None:
            if not too_large:  # the app's own reply to the aborted body is replaced by our 413
                await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large:
            await self._reject(send, received)

    async def _reject(self, send: Send, size: int) -> None:
        response = JSONResponse(
            status_code=413,
            content={
                "detail": f"upload of {size / 1e6:.1f} MB exceeds the server limit of {self.max_bytes / 1e6:.1f} MB "
                "(set it with --conf max_upload_mb)"
            },
        )
        await response({"type": "http"}, _no_receive, send)


class _TooLarge(Exception):
    def __init__(self, size: int):
        self.size = size


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


async def _axonseg_error(request: Request, exc: Exception) -> JSONResponse:
    status = getattr(exc, "status_code", 400)
    if status >= 500 and status not in (503, 504, 507):  # a job that crashed: its text is for the log
        return _internal_error(request, exc)
    logger.info(f"{request.method} {log_safe(request.url.path)}: {status} {log_safe(exc, 500)}")
    return JSONResponse(status_code=status, content={"detail": str(exc)})


async def _monailabel_error(request: Request, exc: Exception) -> JSONResponse:
    status = 404 if isinstance(exc, (ImageNotFoundException, LabelNotFoundException)) else 400
    return JSONResponse(status_code=status, content={"detail": getattr(exc, "msg", str(exc))})


async def _service_down(request: Request, exc: Exception) -> JSONResponse:
    """503 naming the service; what it said (commands, keys, addresses) is for the log only."""
    what = "job queue (Redis)" if isinstance(exc, RedisError) else "database"
    logger.error(f"{request.method} {log_safe(request.url.path)}: {what} unavailable: {exc!r}")
    return JSONResponse(
        status_code=503, content={"detail": f"the {what} is unavailable. Nothing was changed; try again later."}
    )


async def _too_deep(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=400, content={"detail": "the request nests objects or lists too deeply"})


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    return _internal_error(request, exc)


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """500 with an id to quote; the exception and traceback go to the server log under that id only."""
    request_id = uuid.uuid4().hex[:12]
    logger.error(f"request {request_id}: {request.method} {log_safe(request.url.path)} failed: {exc!r}", exc_info=exc)
    return JSONResponse(
        status_code=500,
        content={"detail": f"internal error (request id {request_id}); the server log has the details"},
        headers={"X-Request-ID": request_id},
    )


def install_http_guards(app: FastAPI, max_upload_bytes: int, authenticator: Authenticator) -> None:
    """Authenticate and authorise every request, map axonseg/MONAI Label errors to 4xx JSON replies and cap
    upload size (idempotent). The guard comes first after CORS (which reads nothing): nothing is read from a caller
    it refuses."""
    if getattr(app.state, "axonseg_guards", False):
        return
    app.add_exception_handler(AxonSegError, _axonseg_error)
    app.add_exception_handler(MONAILabelException, _monailabel_error)
    app.add_exception_handler(RedisError, _service_down)
    app.add_exception_handler(OperationalError, _service_down)
    app.add_exception_handler(RecursionError, _too_deep)  # JSON nested thousands deep
    app.add_exception_handler(Exception, _unexpected_error)
    app.user_middleware[:] = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    app.user_middleware.insert(0, Middleware(UploadLimit, max_bytes=max_upload_bytes))
    app.user_middleware.insert(0, Middleware(AuthGuard, authenticator=authenticator))
    app.user_middleware.insert(0, Middleware(CORSMiddleware, **cors_settings()))  # preflights carry no token
    if authenticator.mode == "oidc":  # MONAI Label's RBAC on its own routes: the identity the guard checked
        from monailabel.endpoints.user.auth import get_current_user

        app.dependency_overrides[get_current_user] = monai_label_user
    # Starlette builds its middleware stack on the first event (lifespan); rebuild it on the next
    # request so the handlers and the limit above take effect.
    app.middleware_stack = None
    app.state.axonseg_guards = True
    escape_log_lines()


def cors_settings() -> dict[str, Any]:
    """Cross-origin access only for the origins MONAI Label's setting lists (``MONAI_LABEL_CORS_ORIGINS``);
    none by default: the viewer, OHIF and /zarr are served from this origin. MONAI Label's own default
    answers every origin, with credentials, so any page a logged-in user opens could read the API."""
    from monailabel.config import settings

    origins = [str(o).rstrip("/") for o in settings.MONAI_LABEL_CORS_ORIGINS]
    return {
        "allow_origins": origins,
        "allow_credentials": bool(origins),
        "allow_methods": ["*"],
        "allow_headers": ["*"],
    }


def replace_routes(app: FastAPI, with_login: bool = True) -> None:
    """Serve our routes ahead of MONAI Label's, and remove every stock route that is not on the allow-list
    (:data:`~lib.auth.policy.INHERITED`): a request for one gets 404 and it is absent from /openapi.json.
    ``with_login``: our ``/auth/`` and ``/users/`` (not in OIDC mode, where MONAI Label's ``/auth/`` talks to
    Keycloak)."""

    def keep_inherited(routes: list[Any], prefix: str) -> list[Any]:
        kept = []
        for route in routes:
            if hasattr(route, "original_router"):  # an included router: filter its own list in place
                inner = route.original_router
                inner.routes[:] = keep_inherited(inner.routes, prefix + route.include_context.prefix)
                getattr(inner, "_mark_routes_changed", lambda: None)()  # FastAPI caches what it dispatches to
                kept.append(route)
            elif getattr(route, "methods", None):
                if all(inherited(method, prefix + route.path) for method in route.methods):
                    kept.append(route)
            elif inherited("GET", prefix + route.path.rstrip("/") + "/{path:path}"):  # a mount (static files)
                kept.append(route)
        return kept

    app.router.routes[:] = keep_inherited(app.router.routes, "")
    for extra in ROUTERS + ([users.router] if with_login else []):
        count = len(app.router.routes)
        app.include_router(extra)
        added = app.router.routes[count:]
        del app.router.routes[count:]
        app.router.routes[0:0] = added
    app.openapi_schema = None  # rebuilt from the routes now served
