"""The MONAI Label train task: retrain a structure on the labels annotators submitted."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.train import TrainTask

from ..configs.spec import StructureSpec
from ..errors import InvalidRequest
from ..infers.segmentation import ModelWeights
from .data import load_pair
from .supervised import EpochStats, train_segmentation

logger = logging.getLogger(__name__)
_CURVE_FIELDS = ("epoch", "loss", "validation", "total_time")


class SegmentationTrainer(TrainTask):
    """Fine-tunes the served weights on the datastore's final labels, then publishes them.

    Progress is written to ``stats_path`` after every epoch, which ``/info/`` shows as
    ``train_stats``: the fields 3D Slicer reads (epoch, total_epochs, total_time, best_metric), the
    epoch's loss and validation scores, and ``history`` (every epoch so far), which
    ``/train/{model}/learning_curve.png`` draws.
    """

    def __init__(self, spec: StructureSpec, weights: ModelWeights, stats_path: str):
        super().__init__(f"Retrain '{spec.name}' on submitted labels")
        self.spec = spec
        self.weights = weights
        self.stats_path = stats_path

    def config(self) -> dict[str, Any]:
        return {
            "max_epochs": 10,
            "iterations_per_epoch": 20,
            "learning_rate": 1e-3,
            "batch_size": self.spec.recipe.batch_size,
            "device": "auto",
        }

    def stats(self) -> dict[str, Any]:
        try:
            with open(self.stats_path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def _write_stats(self, stats: dict[str, Any]) -> None:
        tmp = f"{self.stats_path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(stats, f)
        os.replace(tmp, self.stats_path)

    def __call__(
        self,
        request: dict[str, Any],
        datastore: Datastore,
        should_stop: Callable[[], bool] | None = None,
        on_epoch: Callable[[EpochStats], None] | None = None,
    ) -> dict[str, Any]:
        """Train, then publish the best weights atomically; returns the final stats.

        ``should_stop`` is polled every iteration (a worker's cancel flag); ``on_epoch`` sees every
        epoch's stats after they are written to ``stats_path``.
        """
        params = {
            **self.config(),
            **{k: v for k, v in request.items() if k in self.config()},
        }
        items = datastore.datalist()
        if not items:
            raise InvalidRequest(f"no submitted labels to train '{self.spec.name}' on; save a label first")
        volumes = [load_pair(item["image"], item["label"], self.spec) for item in items]
        # Hold one volume out when there are enough; otherwise validation reuses the training set.
        train, val = (volumes[:-1], volumes[-1:]) if len(volumes) >= 4 else (volumes, volumes)
        device = params["device"] if params["device"] != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        candidate = f"{self.weights.trained_path}.candidate"
        if os.path.exists(candidate):  # left by a run that was stopped: never published, safe to drop
            os.remove(candidate)
        started = time.time()
        history: list[dict[str, Any]] = []  # every epoch so far: the learning curve

        def report(stats: EpochStats) -> None:
            logger.info(f"{self.spec.name} epoch {stats.epoch}/{stats.total_epochs} loss {stats.loss:.4f}")
            history.append({k: v for k, v in stats.to_dict().items() if k in _CURVE_FIELDS})
            self._write_stats(
                {
                    **stats.to_dict(),
                    "name": self.spec.name,
                    "start_ts": started,
                    "status": "RUNNING",
                    "history": history,
                }
            )
            if on_epoch:
                on_epoch(stats)

        final = train_segmentation(
            self.spec,
            train,
            val,
            candidate,
            epochs=int(params["max_epochs"]),
            iterations_per_epoch=int(params["iterations_per_epoch"]),
            batch_size=int(params["batch_size"]),
            learning_rate=float(params["learning_rate"]),
            foreground_fraction=self.spec.recipe.foreground_fraction,
            init_weights=self.weights.path(),
            device=device,
            meta={
                "name": self.spec.name,
                "recipe": "retrain",
                "images": [os.path.basename(i["image"]) for i in items],
            },
            on_epoch=report,
            should_stop=should_stop,
        )
        os.replace(candidate, self.weights.trained_path)  # publish: readers see old or new weights
        result = {
            **final.to_dict(),
            "name": self.spec.name,
            "start_ts": started,
            "status": "DONE",
            "images": len(items),
            "history": history,
        }
        self._write_stats(result)
        return result
