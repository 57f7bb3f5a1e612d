"""Active-learning strategies and scoring methods as MONAI Label sees them.

Scores are computed by queue jobs (``lib.jobs.tasks.score``) and stored per image and model version;
a strategy only reads them. A score of an older model version is stale: it is not used, and asking
for the next sample queues the images without a fresh score for scoring.
"""

from __future__ import annotations

import random
import time
from typing import Any

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

from .scores import Scores


class ScoreRanked(Strategy):
    """The unlabelled image with the highest fresh ``method`` score under the model's active version.

    The reply lists the ``top_k`` best candidates with their scores (Slicer shows the first; scripts
    can use the rest). Unscored images rank last and are queued for scoring.
    """

    def __init__(self, method: str, scores: Scores, default_model: str):
        super().__init__(f"Highest '{method}' score first (scored per model version on the job queue)")
        self.method = method
        self.scores = scores
        self.default_model = default_model

    def config(self) -> dict[str, Any]:
        return {"model": self.default_model, "top_k": 5}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        model = str(request.get("model") or self.default_model)
        candidates = datastore.get_unlabeled_images(structure=model)  # images that may carry its structure
        if not candidates:
            return None
        _, scores = self.scores.fresh(model, self.method)
        unscored = [image for image in candidates if image not in scores]
        # Highest first; ties (and unscored images, last) in datastore order so the pick is repeatable.
        ranked = sorted(candidates, key=lambda image: (image not in scores, -scores.get(image, 0.0)))
        top_k = [{"id": image, "score": scores.get(image)} for image in ranked[: int(request.get("top_k", 5))]]
        result: dict[str, Any] = {"id": ranked[0], "score": scores.get(ranked[0]), "top_k": top_k, "model": model}
        if unscored:
            result["scoring_job"] = self.scores.submit(model, self.method)
            result["unscored"] = len(unscored)
        return result


class RecentlyServedLast(Strategy):
    """MONAI Label's ``random`` strategy, with its weighting (the longer since a region was last handed
    out, the likelier), reading every region's last hand-out in one query instead of one per region."""

    def __init__(self, seed: int | None = None):
        super().__init__("Random region, those not handed out for longest most likely")
        self.rng = random.Random(seed)

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any] | None:
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        strategy = request.get("strategy", "random")
        served = datastore.last_served(strategy)
        now = int(time.time())
        weights = [max(now - served.get(image, 0), 1) for image in images]
        image = self.rng.choices(images, weights=weights)[0]
        return {"id": image, "weight": weights[images.index(image)]}


class QueuedScoring(ScoringMethod):
    """A scoring method listed in ``/info/``; calling it queues the scoring job (``POST /scoring/{method}``)."""

    def __init__(self, method: str, description: str, scores: Scores, default_model: str):
        super().__init__(description)
        self.method = method
        self.scores = scores
        self.default_model = default_model

    def config(self) -> dict[str, Any]:
        return {"model": self.default_model}

    def __call__(self, request: dict[str, Any], datastore: Datastore) -> dict[str, Any]:
        model = str(request.get("model") or self.default_model)
        return {"job_id": self.scores.submit(model, self.method, request.get("images"))}
