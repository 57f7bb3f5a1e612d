"""Who may call what: one rule per route, MONAI Label's inherited routes included, and which inherited routes
stay at all (:data:`INHERITED`, an allow-list).

A rule is the least role a route needs (:data:`~.identity.ROLES`) or ``public``. A request whose route has no
rule is refused (403): the guard fails closed, and ``tests/test_auth.py`` walks the app's routes so that a new
route without a rule fails the tests. Rules about *which* job a caller may cancel (its owner, or an admin) are
the handlers' (:meth:`~.identity.Identity.owns`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from starlette.routing import compile_path

from .identity import PUBLIC

ANNOTATOR, TRAINER, ADMIN = "annotator", "trainer", "admin"
READ = ("GET", "HEAD")

# (methods, path as the route declares it, role); the first rule matching method and path applies.
RULES: list[tuple[tuple[str, ...], str, str]] = [
    # logging in, and the API's own documentation
    (READ, "/auth/", PUBLIC),
    (("POST",), "/auth/token", PUBLIC),
    (READ, "/auth/login", PUBLIC),
    (READ, "/auth/token/valid", ANNOTATOR),
    (READ, "/", PUBLIC),
    (READ, "/docs", PUBLIC),
    (READ, "/openapi.json", PUBLIC),
    (READ, "/favicon.ico", PUBLIC),
    (READ, "/static/{path:path}", PUBLIC),
    # annotators: info, next sample, datastore reads, uploads and labels, inference, viewing
    (READ, "/info/", ANNOTATOR),
    (READ, "/datastore/", ANNOTATOR),
    (READ, "/datastore/image", ANNOTATOR),
    (READ, "/datastore/image/info", ANNOTATOR),
    (READ, "/datastore/label", ANNOTATOR),
    (READ, "/datastore/label/info", ANNOTATOR),
    (("PUT",), "/datastore/", ANNOTATOR),
    (("PUT",), "/datastore/image", ANNOTATOR),
    (("PUT",), "/datastore/image/info", ANNOTATOR),
    (("PUT",), "/datastore/label", ANNOTATOR),
    (("POST",), "/activelearning/{strategy}", ANNOTATOR),
    (("POST",), "/infer/{model}", ANNOTATOR),
    (READ, "/labels/{image}/versions", ANNOTATOR),
    (READ, "/labels/{image}/versions/{version}", ANNOTATOR),
    (READ, "/leases/", ANNOTATOR),
    (READ, "/models/{model}/versions", ANNOTATOR),
    (READ, "/encoders/", ANNOTATOR),
    (READ, "/train/", ANNOTATOR),  # Slicer's progress bar polls it
    (READ, "/train/{model}/learning_curve.png", ANNOTATOR),
    (READ, "/scoring/{method}", ANNOTATOR),
    (READ, "/jobs/", ANNOTATOR),
    (READ, "/jobs/workers", ANNOTATOR),
    (READ, "/jobs/{job_id}", ANNOTATOR),
    (("DELETE",), "/jobs/{job_id}", ANNOTATOR),  # its owner or an admin (the handler checks)
    (READ, "/zarr/{image}/{path:path}", ANNOTATOR),
    (READ, "/viewer/{image}", ANNOTATOR),
    (READ, "/viewer/{image}/v/{token}/{path:path}", ANNOTATOR),
    (READ, "/viewer/{image}/events/{token}", ANNOTATOR),
    (("POST",), "/viewer/{image}/action/{token}", ANNOTATOR),
    (("POST",), "/viewer/{image}/state/{token}", ANNOTATOR),
    (READ, "/ohif/{path:path}", ANNOTATOR),
    (READ + ("POST",), "/proxy/dicom/wado/{path:path}", ANNOTATOR),
    (READ, "/proxy/dicom/qido/{path:path}", ANNOTATOR),
    # trainers: training, scoring, batch and whole-volume jobs, registering volumes in place
    (("POST",), "/train/", TRAINER),
    (("POST",), "/train/{model}", TRAINER),  # ssl_pretrain included
    (("DELETE",), "/train/", TRAINER),
    (("POST",), "/scoring/{method}", TRAINER),
    (("POST",), "/batch/infer/{model}", TRAINER),
    (("POST",), "/volumes/{image}/segment/{model}", TRAINER),
    (("POST",), "/volumes/register", TRAINER),
    # admins: model versions, deleting images, users, the server log
    (("POST",), "/models/{model}/versions/{version_id}/activate", ADMIN),
    (("DELETE",), "/datastore/", ADMIN),
    (("DELETE",), "/datastore/image", ADMIN),
    (READ, "/logs/", ADMIN),
    (READ + ("POST",), "/users/", ADMIN),
    (("PUT", "DELETE"), "/users/{name}", ADMIN),
]

# MONAI Label's own routes that stay, each with the reason; lib.api.install.replace_routes removes every other stock
# route from the app (404, absent from /openapi.json), so an inherited route is served only if it is listed here
# (and covered by a rule above). Everything else a client reaches is axonseg's own, re-implemented and tested.
INHERITED: dict[str, tuple[tuple[str, ...], str]] = {
    "/openapi.json": (READ, "FastAPI's schema of the API: it lists only the routes served"),
    "/docs": (READ, "the API's documentation page"),
    "/static/{path:path}": (READ, "the documentation page's scripts and styles"),
    "/": (("GET",), "redirects to /docs"),
    "/favicon.ico": (("GET",), "the documentation page's icon"),
    "/info/": (("GET",), "MONAI Label's handler around AxonSegApp.info(): 3D Slicer's first call"),
    "/logs/": (("GET",), "the server log, for admins"),
    "/ohif/{path:path}": (("GET",), "the OHIF viewer's static build (tests/test_ohif.py drives it in chromium)"),
    # oidc mode only: MONAI Label's Keycloak login (in the other modes ours shadow these)
    "/auth/": (("GET",), "oidc mode: whether login is needed, and Keycloak's client and realm"),
    "/auth/token": (("POST",), "oidc mode: Keycloak's password grant"),
    "/auth/token/valid": (("GET",), "oidc mode: the token check"),
}


def inherited(method: str, path: str) -> bool:
    """Whether MONAI Label's own route ``method path`` (as it declares its path) stays served."""
    methods, _ = INHERITED.get(path, ((), ""))
    return method in methods


_COMPILED = [(frozenset(methods), compile_path(path)[0], path, role) for methods, path, role in RULES]


def rule_for(method: str, path: str) -> str | None:
    """The role (or ``public``) the request needs; None when no rule covers it."""
    for methods, regex, _, role in _COMPILED:
        if method in methods and regex.match(path):
            return role
    return None


def declared_rule(method: str, template: str) -> str | None:
    """The rule written for a route as the route declares its path (what the route walk checks)."""
    for methods, _, path, role in _COMPILED:
        if method in methods and path == template:
            return role
    return None


def app_routes(app: Any) -> Iterator[tuple[str, str]]:
    """Every (method, path template) the FastAPI app serves, through included routers and mounts."""

    def walk(routes: list[Any], prefix: str) -> Iterator[tuple[str, str]]:
        for route in routes:
            if hasattr(route, "original_router"):  # FastAPI's included router
                yield from walk(route.original_router.routes, prefix + route.include_context.prefix)
            elif getattr(route, "methods", None):
                for method in sorted(route.methods):
                    yield method, prefix + route.path
            elif hasattr(route, "routes") or hasattr(route, "app"):  # a mount (static files)
                for method in READ:
                    yield method, prefix + re.sub(r"/$", "", route.path) + "/{path:path}"

    yield from walk(app.router.routes, "")
