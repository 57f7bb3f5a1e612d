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
from typing import Any

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse

from ..auth.accounts import describe_user
from ..auth.guard import COOKIE
from ..auth.identity import caller, check_role
from ..db.store import Database
from ..errors import InvalidRequest, NotFound, Unauthorized
from ..identifiers import check_user_name
from .common import Svc

router = APIRouter()


@router.get("/auth/", summary="Is login required (MONAI Label's shape: the Slicer plugin asks this first)")
async def auth_enabled(svc: Svc):
    return {"enabled": svc.auth.enabled, "client_id": None, "realm": None}


@router.post("/auth/token", summary="Log in: OAuth2 password flow, returns a bearer token")
async def access_token(
    svc: Svc,
    request: Request,
    username: str = Form(...),
    password: str = Form(...),
    grant_type: str | None = Form(None),
    next: str | None = Form(None),
):
    if not svc.auth.enabled:
        raise InvalidRequest("auth is off on this server: requests need no token")
    accounts, issuer = svc.auth.builtin()
    throttle = svc.login_throttle
    if grant_type not in (None, "", "password"):
        raise InvalidRequest(f"grant_type must be 'password', not {grant_type!r}")
    address = request.client.host if request.client else "unknown"
    await run_in_threadpool(throttle.check, username, address)
    identity = await run_in_threadpool(accounts.verify, username, password)
    if identity is None:
        await run_in_threadpool(throttle.failed, username, address)
        raise Unauthorized("wrong user name or password")
    token = issuer.issue(identity.name, identity.role)
    ttl = int(issuer.ttl_s)
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
async def list_users(svc: Svc):
    return [describe_user(u) for u in await run_in_threadpool(svc.db.users)]


@router.post("/users/", summary="Add an account (admin)", status_code=201)
async def add_user(svc: Svc, body: dict):
    accounts, _ = svc.auth.builtin()
    user = await run_in_threadpool(
        accounts.add, _body_text(body, "name"), _body_text(body, "password"), _body_text(body, "role")
    )
    return describe_user(user)


@router.put("/users/{name}", summary="Change an account's password or role (admin)")
async def update_user(svc: Svc, name: str, body: dict):
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
            await run_in_threadpool(_keep_an_admin, svc.db, name)
        if await run_in_threadpool(lambda: svc.db.update_user(name, role=role)) is None:
            raise NotFound(f"no user '{name}'")
    if "password" in body:
        await run_in_threadpool(svc.auth.builtin()[0].set_password, name, _body_text(body, "password"))
    user = await run_in_threadpool(svc.db.user, name)
    if user is None:
        raise NotFound(f"no user '{name}'")
    return describe_user(user)


@router.delete("/users/{name}", summary="Remove an account (admin)")
async def remove_user(svc: Svc, name: str):
    check_user_name(name)
    await run_in_threadpool(_keep_an_admin, svc.db, name)
    await run_in_threadpool(svc.auth.builtin()[0].remove, name)
    return {"removed": name}


def _keep_an_admin(db: Database, name: str) -> None:
    admins = [u.name for u in db.users() if u.role == "admin"]
    if admins == [name]:
        raise InvalidRequest(f"'{name}' is the only admin; make another admin first")
