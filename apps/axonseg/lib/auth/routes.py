"""``/auth/`` as MONAI Label's 3D Slicer plugin calls it, a login page for browsers, and ``/users/``.

    GET    /auth/              {"enabled": ...}: the plugin asks for a user name and password if true
    POST   /auth/token         OAuth2 password form -> {"access_token", "token_type": "bearer", "expires_in"};
                               also sets an HttpOnly cookie (browsers: the viewer's chunk requests);
                               with ``next`` (the login page) redirects there; 429 after repeated failures
    GET    /auth/token/valid   200 with the caller's name and role, 401 if the token is not (guard)
    GET    /auth/login         a login form for browsers
    GET    /users/             accounts (admin)
    POST   /users/             {"name", "password", "role"} (admin)
    PUT    /users/{name}       {"password"} and/or {"role"} (admin)
    DELETE /users/{name}       (admin; not the last admin)

Not served in ``oidc`` mode: MONAI Label's own ``/auth/`` routes talk to Keycloak then.
"""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from monailabel.interfaces.utils.app import app_instance

from ..errors import InvalidRequest, NotFound, Unauthorized
from ..identifiers import check_user_name
from .accounts import describe_user
from .guard import COOKIE
from .identity import caller, check_role

if TYPE_CHECKING:
    from main import AxonSegApp

router = APIRouter()


def _app() -> AxonSegApp:
    return app_instance()


@router.get("/auth/", summary="Is login required (MONAI Label's shape: the Slicer plugin asks this first)")
async def auth_enabled():
    return {"enabled": _app().auth.enabled, "client_id": None, "realm": None}


@router.post("/auth/token", summary="Log in: OAuth2 password flow, returns a bearer token")
async def access_token(
    request: Request,
    username: str = Form(...),
    password: str = Form(...),
    grant_type: str | None = Form(None),
    next: str | None = Form(None),
):
    app = _app()
    if not app.auth.enabled:
        raise InvalidRequest("auth is off on this server: requests need no token")
    if grant_type not in (None, "", "password"):
        raise InvalidRequest(f"grant_type must be 'password', not {grant_type!r}")
    address = request.client.host if request.client else "unknown"
    await run_in_threadpool(app.login_throttle.check, username, address)
    identity = await run_in_threadpool(app.auth.accounts.verify, username, password)
    if identity is None:
        await run_in_threadpool(app.login_throttle.failed, username, address)
        raise Unauthorized("wrong user name or password")
    token = app.auth.issuer.issue(identity.name, identity.role)
    ttl = int(app.auth.issuer.ttl_s)
    if next is not None:
        target = next if next.startswith("/") and not next.startswith("//") else "/"  # only this server's pages
        response: Any = RedirectResponse(target, status_code=303)
    else:
        response = JSONResponse({"access_token": token, "token_type": "bearer", "expires_in": ttl})
    response.set_cookie(COOKIE, token, max_age=ttl, httponly=True, samesite="strict")
    return response


@router.get("/auth/token/valid", summary="Whether the caller's token is valid (401 if not)")
async def valid_token():
    identity = caller()
    return {"username": identity.name, "name": identity.name, "email": None, "roles": [identity.role]}


@router.get("/auth/login", summary="Login form for browsers (the viewer)", response_class=HTMLResponse)
async def login_page(next: str = "/"):
    return HTMLResponse(
        "<!doctype html><title>axonseg login</title><form method=post action=/auth/token>"
        f"<input type=hidden name=next value='{html.escape(next, quote=True)}'>"
        "<label>User <input name=username autofocus></label> "
        "<label>Password <input name=password type=password></label> <button>Log in</button></form>"
    )


def _body_text(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"send '{key}' as a non-empty string")
    return value


@router.get("/users/", summary="Accounts (admin)")
async def list_users():
    return [describe_user(u) for u in await run_in_threadpool(_app().db.users)]


@router.post("/users/", summary="Add an account (admin)", status_code=201)
async def add_user(body: dict):
    accounts = _app().auth.accounts
    user = await run_in_threadpool(
        accounts.add, _body_text(body, "name"), _body_text(body, "password"), _body_text(body, "role")
    )
    return describe_user(user)


@router.put("/users/{name}", summary="Change an account's password or role (admin)")
async def update_user(name: str, body: dict):
    app = _app()
    check_user_name(name)
    if not {"password", "role"} & set(body):
        raise InvalidRequest("send 'password' and/or 'role'")
    if "role" in body:
        role = _body_text(body, "role")
        try:
            check_role(role)
        except ValueError as e:
            raise InvalidRequest(str(e)) from e
        if role != "admin":
            await run_in_threadpool(_keep_an_admin, name)
        if await run_in_threadpool(lambda: app.db.update_user(name, role=role)) is None:
            raise NotFound(f"no user '{name}'")
    if "password" in body:
        await run_in_threadpool(app.auth.accounts.set_password, name, _body_text(body, "password"))
    return describe_user(await run_in_threadpool(app.db.user, name))


@router.delete("/users/{name}", summary="Remove an account (admin)")
async def remove_user(name: str):
    check_user_name(name)
    await run_in_threadpool(_keep_an_admin, name)
    await run_in_threadpool(_app().auth.accounts.remove, name)
    return {"removed": name}


def _keep_an_admin(name: str) -> None:
    admins = [u.name for u in _app().db.users() if u.role == "admin"]
    if admins == [name]:
        raise InvalidRequest(f"'{name}' is the only admin; make another admin first")
