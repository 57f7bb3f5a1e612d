"""Stored active-learning scores and the jobs that compute them, for one app.

The API side of scoring: which images need a fresh score (none under the model's active version),
queueing the scoring job once per (model, method), and reading scores back highest first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monailabel.interfaces.datastore import Datastore

from ..db.store import Database
from ..errors import NotFound, check_model
from ..jobs.client import JobClient
from ..params import refuse_unknown, string_list
from .scoring import SCORING_METHODS, scoring_params


class Scores:
    def __init__(self, db: Database, jobs: JobClient, datastore: Callable[[], Datastore], models: list[str]):
        self.db = db
        self.jobs = jobs
        self.datastore = datastore
        self.models = models

    def _check(self, model: str, method: str) -> None:
        check_model(model, self.models)
        if method not in SCORING_METHODS:
            raise NotFound(f"unknown scoring method '{method}'; available: {', '.join(SCORING_METHODS)}")

    def fresh(self, model: str, method: str) -> tuple[int | None, dict[str, float]]:
        """``(active model version id, {image: score})`` of scores computed under that version."""
        self._check(model, method)
        version = self.db.active_model_version(model)
        version_id = version.id if version else None
        return version_id, self.db.scores(method, version_id)

    def fresh_features(self, model: str, method: str) -> dict[str, list[float]]:
        """``{image: encoder features}`` stored with the fresh ``method`` scores (``epistemic`` stores them)."""
        version_id, _ = self.fresh(model, method)
        return self.db.score_features(method, version_id)

    def needing_score(self, model: str, method: str) -> list[str]:
        """Regions without a fresh score: those without a final label of the model's structure for
        ``epistemic``/``tta``; for ``dice``, labelled ones that also have the model's original prediction."""
        _, fresh = self.fresh(model, method)
        datastore = self.datastore()
        if method == "dice":
            predicted = self.db.labelled_regions("original", model)
            images = [i for i in datastore.training_regions(model) if i in predicted]
        else:
            images = datastore.get_unlabeled_images(structure=model)
        if method == "epistemic":  # scored before features were stored: diversity-aware sampling needs them
            with_features = self.fresh_features(model, method)
            return [i for i in images if i not in fresh or i not in with_features]
        return [i for i in images if i not in fresh]

    def submit(
        self, model: str, method: str, images: list[str] | None = None, params: dict[str, Any] | None = None
    ) -> str | None:
        """Queue a scoring job and return its id. With ``images`` None: the images needing a score, and
        only if no such job for (model, method) is under way (that job's id is returned instead);
        None when every image has a fresh score. ``params`` are checked before anything is read or queued:
        bounds, and keys ``method`` does not take are refused (``client_id`` aside: clients add it)."""
        self._check(model, method)
        taken = scoring_params(method, None)  # the method's options, at their defaults
        hint = f"'{method}' scoring takes {', '.join(taken) or 'none'}"
        refuse_unknown(params or {}, (*taken, "client_id"), "scoring option", hint)
        kwargs: dict[str, Any] = {"model": model, "method": method, "params": scoring_params(method, params)}
        if images is not None:
            images = string_list("images", images)
            description = f"'{method}' scores of {len(images)} images under '{model}'"
            return self.jobs.submit("score", description=description, image_ids=list(images), **kwargs).id
        needed = self.needing_score(model, method)
        if not needed:
            return None
        description = f"'{method}' scores of {len(needed)} images under '{model}'"
        job, _ = self.jobs.submit_unique(
            "score", f"score:{model}:{method}", description=description, image_ids=needed, **kwargs
        )
        return job.id

    def report(self, model: str, method: str) -> dict[str, Any]:
        version_id, values = self.fresh(model, method)
        return {
            "model": model,
            "method": method,
            "model_version": version_id,
            "scores": dict(sorted(values.items(), key=lambda kv: -kv[1])),
            "needs_score": self.needing_score(model, method),
        }
