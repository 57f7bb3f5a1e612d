"""Annotator leases: a strategy only sees images nobody else is working on."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.datastore import Datastore

from ..auth.identity import caller
from ..db.store import Database
from ..errors import Conflict


def check_may_save(db: Database, region_id: str, client_id: str | None) -> None:
    """A final label on a region leased to another annotator is refused (409): it would drop their lease and
    replace their work as the latest. Trainers and admins (and everyone with auth off) may save anyway."""
    holder = db.lease_holder(region_id)
    if holder is None or holder == client_id or caller().may("trainer"):
        return
    raise Conflict(
        f"'{region_id}' is leased to '{holder}' until they save it or the lease ends; ask for another sample "
        "(POST /activelearning/random), or ask a trainer to save over it"
    )


class WithoutLeased:
    """A read-only view of a datastore whose unlabelled images exclude ``hidden`` (leased to others).

    Strategies written against MONAI Label's ``Datastore`` run unchanged on it.
    """

    def __init__(self, datastore: Datastore, hidden: set[str]):
        self._datastore = datastore
        self._hidden = hidden

    def leased_to_others(self) -> set[str]:
        """What other annotators hold now (diversity-aware strategies keep away from it)."""
        return set(self._hidden)

    def get_unlabeled_images(self, *args: Any, **kwargs: Any) -> list[str]:
        return [i for i in self._datastore.get_unlabeled_images(*args, **kwargs) if i not in self._hidden]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._datastore, name)
