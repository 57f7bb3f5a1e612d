"""Authenticate every request and apply its route's rule, before any handler (ours or MONAI Label's) runs.

Modes:
    off      no login; everyone is :data:`~.identity.LOCAL` (an admin naming itself by ``client_id``)
    builtin  axonseg's own users (:mod:`.accounts`) and tokens (:mod:`.tokens`)
    oidc     MONAI Label's Keycloak/OIDC settings (``MONAI_LABEL_AUTH_ENABLE``): its token check, its roles
             mapped onto ours
"""

from __future__ import annotations

import logging
from datetime import timezone
from http.cookies import SimpleCookie

from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import InvalidRequest
from ..identifiers import log_safe
from ..params import shown
from .accounts import Accounts
from .identity import ANONYMOUS, CALLER, LOCAL, PUBLIC, ROLES, Identity, rank
from .policy import rule_for
from .tokens import InvalidToken, TokenIssuer

logger = logging.getLogger(__name__)
COOKIE = "axonseg_token"  # set at login for browsers (the viewer's chunk requests carry no header)
MODES = ("off", "builtin", "oidc")


class Authenticator:
    def __init__(self, mode: str, accounts: Accounts | None = None, issuer: TokenIssuer | None = None):
        if mode not in MODES:
            raise ValueError(f"auth mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.mode = mode
        self.accounts = accounts
        self.issuer = issuer

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def builtin(self) -> tuple[Accounts, TokenIssuer]:
        """The built-in users and token issuer; 400 where this server does not keep its own users."""
        if self.accounts is None or self.issuer is None:
            raise InvalidRequest(f"auth is {self.mode} on this server: it keeps no users of its own")
        return self.accounts, self.issuer

    def identify(self, token: str) -> Identity:
        """The identity a token proves; :class:`InvalidToken` says why it proves none."""
        if self.mode == "oidc":
            return _oidc_identity(token)
        assert self.accounts is not None and self.issuer is not None
        claims = self.issuer.decode(token)
        user = self.accounts.db.user(claims.name)
        if user is None:
            raise InvalidToken(f"user '{claims.name}' no longer exists")
        after = user.tokens_after.replace(tzinfo=user.tokens_after.tzinfo or timezone.utc).timestamp()
        if claims.issued_at < after - 1:  # JWT times are whole seconds in some clients
            raise InvalidToken("the access token was issued before the password was changed; log in again")
        return Identity(user.name, user.role)


def _oidc_identity(token: str) -> Identity:
    """A Keycloak token checked against the realm's public key that MONAI Label's settings name, read as
    MONAI Label reads it (``MONAI_LABEL_AUTH_TOKEN_*``); its admin, reviewer and annotator/user roles
    become ours. (MONAI Label's own ``from_token`` no longer runs with PyJWT 2: it names no algorithm.)"""
    import jwt
    from monailabel.config import settings
    from monailabel.endpoints.user.auth import get_public_key

    try:
        key = get_public_key(settings.MONAI_LABEL_AUTH_REALM_URI)
        payload = jwt.decode(token, key, algorithms=["RS256", "RS384", "RS512"], options={"verify_aud": False})
    except jwt.ExpiredSignatureError as e:
        raise InvalidToken("the access token has expired; log in again") from e
    except jwt.InvalidTokenError as e:
        raise InvalidToken(f"the access token is not valid ({e}); log in again") from e
    roles: object = payload
    for part in settings.MONAI_LABEL_AUTH_TOKEN_ROLES.split("#"):  # e.g. realm_access#roles
        roles = roles.get(part) if isinstance(roles, dict) else None
    external = tuple(r for r in roles if isinstance(r, str)) if isinstance(roles, (list, tuple)) else ()
    mapping = {
        settings.MONAI_LABEL_AUTH_ROLE_ADMIN: "admin",
        settings.MONAI_LABEL_AUTH_ROLE_REVIEWER: "trainer",
        settings.MONAI_LABEL_AUTH_ROLE_ANNOTATOR: "annotator",
        settings.MONAI_LABEL_AUTH_ROLE_USER: "annotator",
    }
    name = str(payload.get(settings.MONAI_LABEL_AUTH_TOKEN_USERNAME) or "")
    ours = [mapping[r] for r in external if r in mapping]
    if not name or not ours:
        raise InvalidToken(f"user '{name}' has none of the roles {', '.join(mapping)}")
    return Identity(name, max(ours, key=rank), external_roles=external)


async def monai_label_user():
    """What MONAI Label's own RBAC checks on its routes see in OIDC mode: the caller the guard checked."""
    from monailabel.endpoints.user.auth import User

    identity = CALLER.get()
    return User(username=identity.name if identity else "", roles=list(identity.external_roles) if identity else [])


def _token(scope: Scope) -> str | None:
    headers = dict(scope["headers"])
    authorization = headers.get(b"authorization", b"").decode("latin-1").strip()
    if authorization:
        scheme, _, value = authorization.partition(" ")
        return value.strip() if scheme.lower() == "bearer" and value.strip() else authorization
    cookie = headers.get(b"cookie")
    if cookie:
        morsel = SimpleCookie(cookie.decode("latin-1")).get(COOKIE)
        return morsel.value if morsel else None
    return None


class AuthGuard:
    """ASGI middleware: 401 without a valid token, 403 outside the caller's role, 404 for a route without a
    rule (none is served)."""

    def __init__(self, app: ASGIApp, authenticator: Authenticator):
        self.app = app
        self.auth = authenticator

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not self.auth.enabled:
            await self._as(LOCAL, scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        rule = rule_for(method, path)
        if rule is None:  # every served route has a rule (tests/test_auth.py), so this one is not served
            await _reply(scope, receive, send, 404, f"{method} {shown(path)} is not served by this server")
            return
        token = _token(scope)
        identity, problem = None, "log in first (POST /auth/token); this server requires a user"
        if token:
            try:
                identity = await run_in_threadpool(self.auth.identify, token)
            except InvalidToken as e:
                problem = str(e)
        if rule == PUBLIC:
            await self._as(identity or ANONYMOUS, scope, receive, send)
            return
        if identity is None:
            await _reply(scope, receive, send, 401, problem, {"WWW-Authenticate": "Bearer"})
            return
        if not identity.may(rule):
            logger.info(f"refused {method} {log_safe(path)} to '{identity.name}' ({identity.role})")
            needed = ", ".join(r for r in ROLES if rank(r) >= rank(rule))
            await _reply(
                scope, receive, send, 403, f"'{identity.name}' is {identity.role}; {method} {path} needs {needed}"
            )
            return
        await self._as(identity, scope, receive, send)

    async def _as(self, identity: Identity, scope: Scope, receive: Receive, send: Send) -> None:
        reset = CALLER.set(identity)
        try:
            await self.app(scope, receive, send)
        finally:
            CALLER.reset(reset)


async def _reply(
    scope: Scope, receive: Receive, send: Send, status: int, detail: str, headers: dict[str, str] | None = None
) -> None:
    await JSONResponse(status_code=status, content={"detail": detail}, headers=headers)(scope, receive, send)
