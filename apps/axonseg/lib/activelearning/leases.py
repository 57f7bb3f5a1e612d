"""Annotator leases: a strategy only sees images nobody else is working on."""

from __future__ import annotations

from typing import Any

from monailabel.interfaces.datastore import Datastore


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
