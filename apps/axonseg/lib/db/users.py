"""Who works here: accounts, what they uploaded, and the regions annotators hold (leases)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError

from .models import Image, Lease, User, utcnow
from .transactions import Sessions, rows_changed


class UserRecords(Sessions):
    """Users, uploads and annotator leases (``Database`` is one of these)."""

    # annotator leases -----------------------------------------------------------------------
    def acquire_lease(self, image_id: str, client_id: str, seconds: float, max_leases: int | None = None) -> bool:
        """Claim ``image_id`` for ``client_id``; False if another client holds a live lease.

        The image's primary key in ``leases`` makes the claim atomic across API processes. With
        ``max_leases``, the holder's oldest leases beyond that many are released (an annotator who asks for
        another sample has moved on), so no one holds more of the pool than that.
        """
        now = utcnow()
        expires = now + timedelta(seconds=seconds)
        try:
            with self.session() as s, s.begin():
                s.execute(delete(Lease).where(Lease.image_id == image_id, Lease.expires_at <= now))
                held = s.get(Lease, image_id)
                if held is not None:
                    if held.client_id != client_id:
                        return False
                    held.expires_at = expires  # renew our own lease
                else:
                    s.add(Lease(image_id=image_id, client_id=client_id, acquired_at=now, expires_at=expires))
                if max_leases is not None:
                    s.flush()
                    mine = s.scalars(
                        select(Lease.image_id)
                        .where(Lease.client_id == client_id, Lease.expires_at > now, Lease.image_id != image_id)
                        .order_by(Lease.acquired_at.desc())
                    ).all()
                    surplus = mine[max(max_leases - 1, 0) :]
                    if surplus:
                        s.execute(delete(Lease).where(Lease.image_id.in_(surplus)))
            return True
        except IntegrityError:
            return False  # another process claimed it between our check and insert

    def release_lease(self, image_id: str, client_id: str | None = None) -> None:
        with self.session() as s, s.begin():
            query = delete(Lease).where(Lease.image_id == image_id)
            if client_id is not None:
                query = query.where(Lease.client_id == client_id)
            s.execute(query)

    def lease_holder(self, image_id: str) -> str | None:
        """Who holds a live lease on ``image_id``, if anyone."""
        with self.session() as s:
            query = select(Lease.client_id).where(Lease.image_id == image_id, Lease.expires_at > utcnow())
            return s.scalar(query)

    def leased_by_others(self, client_id: str) -> set[str]:
        """Images with a live lease held by anyone but ``client_id``."""
        with self.session() as s:
            query = select(Lease.image_id).where(Lease.client_id != client_id, Lease.expires_at > utcnow())
            return set(s.scalars(query))

    def leases(self) -> list[Lease]:
        """Live leases."""
        with self.session() as s:
            return list(s.scalars(select(Lease).where(Lease.expires_at > utcnow())))

    # users and uploads ----------------------------------------------------------------------
    def add_user(self, name: str, role: str, password_hash: str) -> User:
        """A new account; IntegrityError if ``name`` is taken."""
        with self.session() as s, s.begin():
            user = User(name=name, role=role, password_hash=password_hash, created_at=utcnow(), tokens_after=utcnow())
            s.add(user)
        return user

    def update_user(self, name: str, **values: Any) -> User | None:
        with self.session() as s, s.begin():
            user = s.get(User, name)
            if user is None:
                return None
            for key, value in values.items():
                setattr(user, key, value)
        return user

    def user(self, name: str) -> User | None:
        with self.session() as s:
            return s.get(User, name)

    def users(self) -> list[User]:
        with self.session() as s:
            return list(s.scalars(select(User).order_by(User.name)))

    def remove_user(self, name: str) -> bool:
        with self.session() as s, s.begin():
            return rows_changed(s.execute(delete(User).where(User.name == name))) > 0

    def record_upload(self, image_id: str, owner: str, size: int) -> None:
        with self.session() as s, s.begin():
            s.execute(update(Image).where(Image.id == image_id).values(owner=owner, upload_bytes=size))

    def uploaded_bytes(self, owner: str) -> int:
        """What ``owner``'s images still in the datastore took to upload (their quota's use)."""
        with self.session() as s:
            return int(s.scalar(select(func.sum(Image.upload_bytes)).where(Image.owner == owner)) or 0)
