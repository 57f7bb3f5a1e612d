"""Access tokens: HS256 JWTs (PyJWT) signed with a server secret that never enters the repository.

The secret is ``AXONSEG_AUTH_SECRET`` if set (several API processes behind one name must share it), else a
random one kept in ``<workdir>/auth_secret`` (mode 0600), made on first start.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

ALGORITHM = "HS256"
ISSUER = "axonseg"
SECRET_FILE = "auth_secret"


def load_secret(workdir: str, given: str | None = None) -> str:
    """``given`` (AXONSEG_AUTH_SECRET) if set, else the secret kept in ``workdir`` (made on first use)."""
    if given:
        return given
    path = os.path.join(workdir, SECRET_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        with open(path) as f:
            return f.read().strip()
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(48))
    with open(path) as f:  # another process may have won the race: everyone reads the file
        return f.read().strip()


class InvalidToken(Exception):
    """A token that is malformed, not ours, or expired (the message says which)."""


@dataclass(frozen=True)
class Claims:
    name: str
    issued_at: float


class TokenIssuer:
    def __init__(self, secret: str, ttl_s: float):
        self.secret = secret
        self.ttl_s = ttl_s

    def issue(self, name: str, role: str) -> str:
        now = time.time()
        payload: dict[str, Any] = {"sub": name, "role": role, "iss": ISSUER, "iat": now, "exp": now + self.ttl_s}
        return jwt.encode(payload, self.secret, algorithm=ALGORITHM)

    def decode(self, token: str) -> Claims:
        try:
            payload = jwt.decode(
                token, self.secret, algorithms=[ALGORITHM], issuer=ISSUER, options={"require": ["sub", "exp", "iat"]}
            )
        except jwt.ExpiredSignatureError as e:
            raise InvalidToken("the access token has expired; log in again") from e
        except jwt.InvalidTokenError as e:
            raise InvalidToken(f"the access token is not valid ({e}); log in again") from e
        return Claims(str(payload["sub"]), float(payload["iat"]))
