"""Built-in user accounts: names, roles and argon2id password hashes in the SQL database."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.exc import IntegrityError

from ..db.models import User, utcnow
from ..db.store import Database
from ..errors import InvalidRequest, NotFound
from ..identifiers import check_user_name, same_name
from .identity import Identity, check_role

MIN_PASSWORD_LENGTH = 8
_hasher = PasswordHasher()  # argon2id with the library's current parameters
# Verifying against this when the user does not exist costs the same time as a real check, so response
# times do not tell which names exist.
_DUMMY_HASH = _hasher.hash("not a password of anyone")


class Accounts:
    def __init__(self, db: Database):
        self.db = db

    def add(self, name: str, password: str, role: str) -> User:
        check_user_name(name)
        confusable = [u.name for u in self.db.users() if same_name(u.name, name)]
        if confusable:  # 'ADMIN' beside 'admin' would let one pass for the other in logs and lists
            raise InvalidRequest(f"user '{confusable[0]}' exists already (names are compared ignoring case)")
        try:
            check_role(role)
        except ValueError as e:
            raise InvalidRequest(str(e)) from e
        try:
            return self.db.add_user(name, role, _hasher.hash(_checked_password(password)))
        except IntegrityError as e:
            raise InvalidRequest(f"user '{name}' exists already") from e

    def set_password(self, name: str, password: str) -> User:
        """A new password; tokens issued before it stop working."""
        user = self.db.update_user(name, password_hash=_hasher.hash(_checked_password(password)), tokens_after=utcnow())
        if user is None:
            raise NotFound(f"no user '{name}'")
        return user

    def remove(self, name: str) -> None:
        if not self.db.remove_user(name):
            raise NotFound(f"no user '{name}'")

    def verify(self, name: str, password: str) -> Identity | None:
        """The user's identity if ``password`` is theirs, else None (unknown name or wrong password alike)."""
        try:
            user = self.db.user(check_user_name(name))
        except InvalidRequest:
            user = None
        try:
            _hasher.verify(user.password_hash if user else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        if user is None:
            return None
        if _hasher.check_needs_rehash(user.password_hash):
            self.db.update_user(name, password_hash=_hasher.hash(password))
        return Identity(user.name, user.role)

    def ensure_admin(self, password: str | None) -> bool:
        """First start: create ``admin`` with ``password`` unless it exists. Returns whether it was created."""
        if not password or self.db.user("admin") is not None:
            return False
        self.add("admin", password, "admin")
        return True


def _checked_password(password: str) -> str:
    if len(password or "") < MIN_PASSWORD_LENGTH:
        raise InvalidRequest(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return password


def describe_user(user: User) -> dict[str, str]:
    """What the API shows of an account (never its hash)."""
    return {"name": user.name, "role": user.role, "created_at": user.created_at.isoformat()}
