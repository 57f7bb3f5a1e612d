"""Retraining on submitted labels without anyone asking: after ``every`` newly labelled regions of a
structure since its model's last training run, a fine-tuning run of that model is queued. A region
counts once however often it is saved, and only for the structure its label belongs to; and a run
starts only once the structure's labels hold enough voxels (on the model's grid) to hold a part out
for the publish gate (``lib.trainers.finetune``).

Never a duplicate: while any training run is submitted or running, nothing is queued (the busy rule
of :class:`~lib.jobs.training.TrainingRuns`); the next saved label checks again. The run itself
publishes its weights only if they pass the gate (``lib.trainers.task``).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ..configs.spec import StructureSpec
from ..db.models import TrainingRun
from ..db.store import Database
from ..errors import Busy, ServiceUnavailable
from ..infers.predict import model_grid_shape
from ..jobs.training import TrainingRuns

logger = logging.getLogger(__name__)

TRIGGER_CLIENT = "retrain-trigger"


class RetrainTrigger:
    """Args:
    every: newly labelled regions that trigger a run (0 turns automatic retraining off).
    specs: the models that retrain on labels (not ``ssl_pretrain``, which needs no labels), by name.
    params: the fine-tuning request (the trainer's config keys).
    """

    def __init__(
        self,
        db: Database,
        training: TrainingRuns,
        every: int,
        specs: dict[str, StructureSpec],
        params: dict[str, Any] | None = None,
    ):
        self.db = db
        self.training = training
        self.every = every
        self.specs = specs
        self.params = dict(params or {})

    def new_labels(self, model: str) -> int:
        """Regions given a final ``model`` label since its last training run started (all if it never trained)."""
        last = self.db.training_runs(model=model, limit=1)
        return self.db.count_labelled_regions(model, "final", since=last[0].started_at if last else None)

    def labelled_voxels(self, model: str) -> int:
        """Voxels of every region with a final ``model`` label on an image that may carry it (what a run
        trains and holds out on), counted on the model's voxel grid."""
        spec = self.specs[model]
        labelled = self.db.labelled_regions("final", model)
        images = {i.id: i for i in self.db.images() if model in (i.structures or [])}
        total = 0
        for region in self.db.regions():
            image = images.get(region.image_id)
            if region.id in labelled and image is not None:
                spacing = image.voxel_size_um
                voxel_size_nm = tuple(1000.0 * v for v in spacing) if spacing else None
                total += math.prod(model_grid_shape(tuple(region.shape), spec, voxel_size_nm))
        return total

    def label_saved(self, image_id: str, structure: str, label_info: dict[str, Any]) -> TrainingRun | None:
        """The datastore's ``on_final_label`` hook (once per saved structure); returns the run it queued, if any."""
        model = structure
        if self.every <= 0 or model not in self.specs:
            return None
        count = self.new_labels(model)
        if count < self.every:
            return None
        voxels, needed = self.labelled_voxels(model), self.specs[model].recipe.fine_tune.min_labelled_voxels
        if voxels < needed:
            logger.info(f"{count} new labels for '{model}', but {voxels:,} voxels < {needed:,} to hold a part out")
            return None
        params = {**self.params, "client_id": TRIGGER_CLIENT, "trigger": f"{count} new final labels"}
        try:
            run = self.training.submit([model], params, enqueue=False)[0]
        except (Busy, ServiceUnavailable) as e:
            logger.info(f"{count} new labels for '{model}', not retraining now: {e}")
            return None
        logger.info(f"{count} new final labels (latest '{image_id}'): queued retraining of '{model}' ({run.job_id})")
        return run
