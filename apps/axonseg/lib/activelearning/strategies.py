"""Active-learning strategies and scoring methods as MONAI Label sees them.

Scores are computed by queue jobs (``lib.jobs.tasks.score``) and stored per image and model version;
a strategy only reads them. A score of an older model version is stale: it is not used, and asking
for the next sample queues the images without a fresh score for scoring.
"""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
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
        ranked, unscored = self.rank(request, datastore, model, candidates, scores)
        top_k = [{"id": image, "score": scores.get(image)} for image in ranked[: int(request.get("top_k", 5))]]
        result: dict[str, Any] = {"id": ranked[0], "score": scores.get(ranked[0]), "top_k": top_k, "model": model}
        if unscored:
            result["scoring_job"] = self.scores.submit(model, self.method)
            result["unscored"] = len(unscored)
        return result

    def rank(
        self, request: dict[str, Any], datastore: Datastore, model: str, candidates: list[str], scores: dict
    ) -> tuple[list[str], list[str]]:
        """``(candidates best first, at least ``top_k`` of them; those still needing a score)``: highest
        score first; ties (and unscored images, last) in datastore order so the pick is repeatable."""
        ranked = sorted(candidates, key=lambda image: (image not in scores, -scores.get(image, 0.0)))
        return ranked, [image for image in candidates if image not in scores]


class DiverseBatch(ScoreRanked):
    """Uncertainty-weighted k-center greedy (the core-set pick of Sener & Savarese 2018, each distance
    weighted by the region's BALD): the unlabelled region maximising ``BALD x distance`` to the nearest
    region already labelled or handed out to another annotator, in the model's encoder feature space
    (cosine distance of pooled bottleneck features, stored with the ``epistemic`` scores). Several
    annotators pressing Next sample get regions that are uncertain *and* unlike each other's, not a
    cluster of neighbours.

    ``top_k`` continues the greedy pass: each pick becomes a centre for the next. Regions without a
    fresh score or features rank last and are queued for scoring.
    """

    def __init__(self, scores: Scores, default_model: str):
        super().__init__("epistemic", scores, default_model)
        self.description = "Uncertain and unlike what others hold: BALD-weighted k-center greedy on encoder features"

    def rank(
        self, request: dict[str, Any], datastore: Datastore, model: str, candidates: list[str], scores: dict
    ) -> tuple[list[str], list[str]]:
        features = self.scores.fresh_features(model, self.method)
        vectors = {image: np.asarray(v, dtype=np.float64) for image, v in features.items()}
        held: set[str] = getattr(datastore, "leased_to_others", lambda: set())()
        labelled = set(datastore.get_labeled_images(labels=[model]))
        centres = [vectors[i] for i in (held | labelled) if i in vectors]
        ready = [i for i in candidates if i in scores and i in vectors]
        ranked = k_center_greedy(ready, scores, vectors, centres, max(1, int(request.get("top_k", 5))))
        unscored = [i for i in candidates if i not in scores or i not in vectors]
        return ranked + unscored, unscored  # unscored in datastore order, after every scored region


def k_center_greedy(
    candidates: list[str],
    scores: dict[str, float],
    features: dict[str, np.ndarray],
    centres: list[np.ndarray],
    k: int,
) -> list[str]:
    """``k`` of ``candidates``, each maximising ``score x cosine distance to the nearest centre`` (the
    highest score while there is no centre), each pick becoming a centre; ties go to the earlier candidate."""
    units = {i: _unit(np.asarray(features[i], dtype=np.float64)) for i in candidates}
    centres = [_unit(np.asarray(c, dtype=np.float64)) for c in centres]
    left, picked = list(candidates), list[str]()
    while left and len(picked) < k:

        def gain(image: str) -> float:
            if not centres:
                return scores[image]
            return scores[image] * max(min(1.0 - float(units[image] @ c) for c in centres), 0.0)

        best = max(left, key=lambda image: (gain(image), -left.index(image)))
        picked.append(best)
        left.remove(best)
        centres.append(units[best])
    return picked


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


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
        params: dict[str, Any] = {k: request[k] for k in ("samples", "rate") if k in request}  # MC dropout
        return {"job_id": self.scores.submit(model, self.method, request.get("images"), params)}
