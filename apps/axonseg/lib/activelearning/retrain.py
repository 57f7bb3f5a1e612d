"""Retraining on submitted labels without anyone asking: after ``every`` newly labelled regions of a
structure since its model's last training run, a fine-tuning run of that model is queued. A region
counts once however often it is saved, and only for the structure its label belongs to.

Never a duplicate: while any training run is submitted or running, nothing is queued (the busy rule
of :class:`~lib.jobs.training.TrainingRuns`); the next saved label checks again. The run itself
publishes its weights only if they validate no worse than the served ones (``lib.trainers.task``).
"""

from __future__ import annotations

import logging
from typing import Any

from ..db.models import TrainingRun
from ..db.store import Database
from ..errors import Busy, ServiceUnavailable
from ..jobs.training import TrainingRuns

logger = logging.getLogger(__name__)

TRIGGER_CLIENT = "retrain-trigger"


class RetrainTrigger:
    """Args:
    every: newly labelled regions that trigger a run (0 turns automatic retraining off).
    models: the models that retrain on labels (not ``ssl_pretrain``, which needs no labels).
    params: the fine-tuning request (the trainer's config keys).
    """

    def __init__(
        self,
        db: Database,
        training: TrainingRuns,
        every: int,
        models: list[str],
        params: dict[str, Any] | None = None,
    ):
        self.db = db
        self.training = training
        self.every = every
        self.models = models
        self.params = dict(params or {})

    def new_labels(self, model: str) -> int:
        """Regions given a final ``model`` label since its last training run started (all if it never trained)."""
        last = self.db.training_runs(model=model, limit=1)
        return self.db.count_labelled_regions(model, "final", since=last[0].started_at if last else None)

    def label_saved(self, image_id: str, structure: str, label_info: dict[str, Any]) -> TrainingRun | None:
        """The datastore's ``on_final_label`` hook (once per saved structure); returns the run it queued, if any."""
        model = structure
        if self.every <= 0 or model not in self.models:
            return None
        count = self.new_labels(model)
        if count < self.every:
            return None
        params = {**self.params, "client_id": TRIGGER_CLIENT, "trigger": f"{count} new final labels"}
        try:
            run = self.training.submit([model], params, enqueue=False)[0]
        except (Busy, ServiceUnavailable) as e:
            logger.info(f"{count} new labels for '{model}', not retraining now: {e}")
            return None
        logger.info(f"{count} new final labels (latest '{image_id}'): queued retraining of '{model}' ({run.job_id})")
        return run
