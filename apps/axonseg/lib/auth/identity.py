"""Roles and the caller's identity.

Roles are ordered: each has every right of the ones before it. The guard sets :data:`CALLER` for the
request it lets through; handlers and the job client read it with :func:`caller`.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

ROLES = ("annotator", "trainer", "admin")
PUBLIC = "public"


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ValueError(f"unknown role '{role}'; roles are {', '.join(ROLES)}")
    return role


def rank(role: str) -> int:
    return ROLES.index(role)


@dataclass(frozen=True)
class Identity:
    """Who is calling. ``auth_on`` is False when auth is off: then everyone acts as a local admin and names
    itself with the ``client_id`` it sends, as MONAI Label does."""

    name: str
    role: str  # one of ROLES, or "none" (an anonymous caller of a public route)
    auth_on: bool = True
    external_roles: tuple[str, ...] = ()  # an OIDC token's own roles (MONAI Label's RBAC checks those)

    def may(self, role: str) -> bool:
        return role == PUBLIC or (self.role in ROLES and rank(self.role) >= rank(role))

    def owns(self, owner: str | None) -> bool:
        """May act on something ``owner`` submitted: its owner, an admin, or anyone when auth is off."""
        return not self.auth_on or self.role == "admin" or (owner is not None and owner == self.name)

    def client_id(self, claimed: object = None) -> str:
        """The name leases, labels and jobs record: the user's with auth on, else what the client claims."""
        if self.auth_on:
            return self.name
        return str(claimed) if claimed else "anonymous"


LOCAL = Identity("local", "admin", auth_on=False)
ANONYMOUS = Identity("anonymous", "none")  # auth on, no valid token (public routes only)
CALLER: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("axonseg_caller", default=None)


def caller() -> Identity:
    """The identity of the request being handled (:data:`LOCAL` outside requests, e.g. in workers)."""
    return CALLER.get() or LOCAL
