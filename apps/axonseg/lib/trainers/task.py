"""The MONAI Label train task: retrain a structure on the labels annotators submitted."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from monailabel.interfaces.tasks.train import TrainTask

from ..configs.spec import StructureSpec
from ..db.store import Database
from ..errors import InvalidRequest, NotFound
from ..infers.segmentation import ModelWeights
from ..machine import default_device
from ..protocol import score_volumes
from .data import load_region
from .encoder import read_encoder
from .supervised import EpochStats, train_segmentation

if TYPE_CHECKING:
    from ..datastore import MicroscopyDatastore

logger = logging.getLogger(__name__)
_CURVE_FIELDS = ("epoch", "loss", "validation", "total_time")
_HOLD_OUT_EVERY = 4


class StructureTrainer(TrainTask):
    """What every axonseg trainer offers the API and the train worker besides MONAI Label's ``TrainTask``.

    - ``resolve(request, db)``: the request merged over ``config()`` and checked; the API calls it
      before queueing (a bad request is a 4xx, not a failed job) and the worker again before running.
    - ``__call__(params, datastore, should_stop, on_epoch)``: the run; progress goes to ``stats_path``
      (``/info/`` shows it as ``train_stats``).
    - ``record(result, db)``: what the run produced, recorded in the database (a model or encoder version).
    """

    def __init__(self, description: str, stats_path: str):
        super().__init__(description)
        self.stats_path = stats_path

    def resolve(self, request: dict[str, Any], db: Database | None = None) -> dict[str, Any]:
        config = self.config()
        # A list-valued option is a choice (Slicer shows a drop-down and sends the item); its default
        # is the first item.
        defaults = {k: v[0] if isinstance(v, list) and v else v for k, v in config.items()}
        return {**defaults, **{k: v for k, v in request.items() if k in config}}

    def record(self, result: dict[str, Any], db: Database) -> dict[str, Any]:
        return {}

    def _epoch_reporter(
        self, name: str, started: float, history: list[dict[str, Any]], on_epoch: Callable[[EpochStats], None] | None
    ) -> Callable[[EpochStats], None]:
        """Per epoch: log it, add it to ``history`` (the learning curve), write the RUNNING stats, pass it on."""

        def report(stats: EpochStats) -> None:
            logger.info(f"{name} epoch {stats.epoch}/{stats.total_epochs} loss {stats.loss:.4f} {stats.validation}")
            history.append({k: v for k, v in stats.to_dict().items() if k in _CURVE_FIELDS})
            self._write_stats(
                {**stats.to_dict(), "name": name, "start_ts": started, "status": "RUNNING", "history": history}
            )
            if on_epoch:
                on_epoch(stats)

        return report

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


class SegmentationTrainer(StructureTrainer):
    """Fine-tunes the served weights on the datastore's final labels, then publishes them.

    Progress is written to ``stats_path`` after every epoch, which ``/info/`` shows as
    ``train_stats``: the fields 3D Slicer reads (epoch, total_epochs, total_time, best_metric), the
    epoch's loss and validation scores, and ``history`` (every epoch so far), which
    ``/train/{model}/learning_curve.png`` draws.
    """

    def __init__(self, spec: StructureSpec, weights: ModelWeights, stats_path: str):
        super().__init__(f"Retrain '{spec.name}' on submitted labels", stats_path)
        self.spec = spec
        self.weights = weights

    def config(self) -> dict[str, Any]:
        return {
            "max_epochs": 10,
            "iterations_per_epoch": 20,
            "learning_rate": 1e-3,
            "batch_size": self.spec.recipe.batch_size,
            "device": "auto",
            # "if_not_worse": publish only weights that validate at least as well as the served ones
            "publish": "if_not_worse",
            # An ssl_pretrain encoder version id (GET /encoders/) or an encoder file: start from it
            # with a fresh decoder instead of from the served weights.
            "pretrained_encoder": "",
            "freeze_encoder_epochs": 0,
        }

    def resolve(self, request: dict[str, Any], db: Database | None = None) -> dict[str, Any]:
        params = super().resolve(request, db)
        if params["publish"] not in ("if_not_worse", "always"):
            raise InvalidRequest(f"publish must be 'if_not_worse' or 'always', not '{params['publish']}'")
        try:
            params["freeze_encoder_epochs"] = int(params["freeze_encoder_epochs"])
        except (TypeError, ValueError):
            raise InvalidRequest("freeze_encoder_epochs must be a whole number of epochs") from None
        encoder = str(params["pretrained_encoder"] or "").strip()
        if encoder.isdigit():
            if db is None:
                raise InvalidRequest("an encoder version id needs the database; give the encoder file's path")
            version = db.encoder_version(int(encoder))
            if version is None:
                raise NotFound(f"no encoder version {encoder}; GET /encoders/ lists them")
            if version.structure != self.spec.name:
                raise InvalidRequest(
                    f"encoder version {encoder} was pretrained for '{version.structure}', not '{self.spec.name}'"
                )
            encoder = version.path
        if encoder:
            read_encoder(encoder, self.spec.network_args())  # exists and fits this U-Net
        params["pretrained_encoder"] = encoder
        return params

    def record(self, result: dict[str, Any], db: Database) -> dict[str, Any]:
        """A published run becomes the model's active version."""
        if not result["published"]:  # validated worse than the served weights: those stay
            return {"model_version": None}
        metrics = {k: result.get(k) for k in ("best_metric", "baseline_metric", "validation_images")}
        return {
            "model_version": db.register_model_version(self.spec.name, result["weights"], "trained", metrics=metrics).id
        }

    def __call__(
        self,
        request: dict[str, Any],
        datastore: MicroscopyDatastore,
        should_stop: Callable[[], bool] | None = None,
        on_epoch: Callable[[EpochStats], None] | None = None,
    ) -> dict[str, Any]:
        """Fine-tune the served weights; publish the best epoch only if it validates no worse than them.

        Validation uses held-out labelled regions of this structure (every 4th by id, from 4 labelled images on; with
        fewer, the training images). Publishing archives the weights under ``versions/`` and then
        replaces the served file by rename, so readers see the old or the new weights, never half.
        ``should_stop`` is polled every iteration (a worker's cancel flag); ``on_epoch`` sees every
        epoch's stats after they are written to ``stats_path``.

        Returns:
            the final stats, with ``published`` (bool), ``baseline_metric`` (the served weights' F1
            on the same validation images) and, if published, ``weights`` (the archived file).
        """
        params = self.resolve(request)
        regions = datastore.training_regions(self.spec.name)  # this structure's labels only, in id order
        if not regions:
            raise InvalidRequest(
                f"no submitted {self.spec.name} labels to train '{self.spec.name}' on; save a label first"
            )
        volumes = [load_region(datastore, region, self.spec) for region in regions]
        held_out = set(range(_HOLD_OUT_EVERY - 1, len(volumes), _HOLD_OUT_EVERY))
        train = [v for i, v in enumerate(volumes) if i not in held_out]
        val = [v for i, v in enumerate(volumes) if i in held_out] or volumes
        device = params["device"] if params["device"] != "auto" else default_device()
        served, _, served_path = self.weights.load(device)
        baseline = score_volumes(served, val, self.spec, device)["f1"]
        candidate = f"{self.weights.trained_path}.candidate"
        if os.path.exists(candidate):  # left by a run that was stopped: never published, safe to drop
            os.remove(candidate)
        started = time.time()
        history: list[dict[str, Any]] = []  # every epoch so far: the learning curve

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
            # A pretrained encoder starts a fresh network: fine-tuning the served one would mix the two.
            init_weights=None if params["pretrained_encoder"] else served_path,
            pretrained_encoder=params["pretrained_encoder"] or None,
            freeze_encoder_epochs=params["freeze_encoder_epochs"],
            device=device,
            meta={
                "name": self.spec.name,
                "recipe": "retrain",
                "images": regions,
                "pretrained_encoder": params["pretrained_encoder"] or None,
            },
            on_epoch=self._epoch_reporter(self.spec.name, started, history, on_epoch),
            should_stop=should_stop,
        )
        published = params["publish"] == "always" or final.best_metric >= baseline
        result = {
            **final.to_dict(),
            "name": self.spec.name,
            "start_ts": started,
            "status": "DONE",
            "images": len(regions),
            "validation_images": [v.name for v in val],
            "baseline_metric": baseline,
            "published": published,
            "history": history,
        }
        if published:
            result["weights"] = self.weights.publish(candidate)
        else:
            logger.info(f"{self.spec.name}: not published, F1 {final.best_metric:.3f} < served {baseline:.3f}")
            os.remove(candidate)
        self._write_stats(result)
        return result
