"""The MONAI Label train task: retrain a structure on the labels annotators submitted."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from monailabel.interfaces.tasks.train import TrainTask

from ..configs.spec import StructureSpec
from ..db.store import Database
from ..errors import InvalidRequest, NotFound
from ..infers.segmentation import ModelWeights
from ..machine import default_device
from ..volumes.roots import reference_data_dir
from .data import load_region
from .encoder import read_encoder
from .finetune import GATE_METRIC, TooFewLabels, fine_tune, original_test_scores
from .supervised import EpochStats

if TYPE_CHECKING:
    from ..datastore import MicroscopyDatastore

logger = logging.getLogger(__name__)
_CURVE_FIELDS = ("epoch", "loss", "validation", "total_time")


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
    """Fine-tunes the served weights on the datastore's final labels (``lib.trainers.finetune``), then
    publishes them if they pass the gate.

    Progress is written to ``stats_path`` after every epoch, which ``/info/`` shows as
    ``train_stats``: the fields 3D Slicer reads (epoch, total_epochs, total_time, best_metric), the
    epoch's loss and held-out scores, ``history`` (every epoch so far), which
    ``/train/{model}/learning_curve.png`` draws, and at the end the gate's figures (``gate``).
    """

    def __init__(self, spec: StructureSpec, weights: ModelWeights, stats_path: str):
        super().__init__(f"Fine-tune '{spec.name}' on submitted labels", stats_path)
        self.spec = spec
        self.weights = weights

    def config(self) -> dict[str, Any]:
        recipe = self.spec.recipe.fine_tune
        return {
            # "auto": so many per patch-worth of labelled voxels (the structure's fine-tuning recipe)
            "iterations": "auto",
            # epochs: the held-out labels are scored after each; the best epoch is kept
            "max_epochs": recipe.validations,
            "learning_rate": self.spec.recipe.learning_rate * recipe.learning_rate_factor,
            "batch_size": self.spec.recipe.batch_size,
            "replay_share": recipe.replay_share,
            "device": "auto",
            # "gate": publish only weights that score higher on held-out new labels and stay within the
            # tolerance on the recipe's test split; "always": publish whatever the run produced
            "publish": ["gate", "always"],
            # An ssl_pretrain encoder version id (GET /encoders/) or an encoder file: start from it
            # with a fresh decoder instead of from the served weights.
            "pretrained_encoder": "",
            # epochs (of max_epochs) in which the encoder stays fixed and only the decoder adapts
            "freeze_encoder_epochs": 0,
        }

    def resolve(self, request: dict[str, Any], db: Database | None = None) -> dict[str, Any]:
        params = super().resolve(request, db)
        if params["publish"] not in ("gate", "always"):
            raise InvalidRequest(f"publish must be 'gate' or 'always', not '{params['publish']}'")
        try:
            params["freeze_encoder_epochs"] = int(params["freeze_encoder_epochs"])
            params["max_epochs"] = max(1, int(params["max_epochs"]))
            params["batch_size"] = max(1, int(params["batch_size"]))
            params["learning_rate"] = float(params["learning_rate"])
            params["replay_share"] = float(params["replay_share"])
            if str(params["iterations"]).strip().lower() != "auto":
                params["iterations"] = max(1, int(params["iterations"]))
        except (TypeError, ValueError):
            raise InvalidRequest(
                "iterations ('auto' or a whole number), max_epochs, batch_size, freeze_encoder_epochs, "
                "learning_rate and replay_share must be numbers"
            ) from None
        if not 0.0 <= params["replay_share"] < 1.0:
            raise InvalidRequest(f"replay_share must be in [0, 1), not {params['replay_share']}")
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
        """A published run becomes the model's active version, with the gate's figures as its metrics."""
        if not result["published"]:  # the gate kept the served weights
            return {"model_version": None}
        metrics = {k: result.get(k) for k in ("best_metric", "baseline_metric", "validation_images", "gate", "trigger")}
        metrics["original_test"] = (result.get("gate") or {}).get("original_score")
        return {
            "model_version": db.register_model_version(self.spec.name, result["weights"], "trained", metrics=metrics).id
        }

    def _served_original_score(
        self, db: Database, served_path: str, served: torch.nn.Module, device: str
    ) -> float | None:
        """The served weights' F1 on the recipe's test split, measured once per version and kept with it."""
        version = db.model_version_of_file(self.spec.name, served_path)
        if version is not None and (version.metrics or {}).get("original_test") is not None:
            return float(version.metrics["original_test"])
        scores = original_test_scores(self.spec, served, reference_data_dir(), device)
        value = scores[GATE_METRIC] if scores else None
        if version is not None and value is not None:
            db.add_model_version_metrics(version.id, {"original_test": value})
        return value

    def __call__(
        self,
        request: dict[str, Any],
        datastore: MicroscopyDatastore,
        should_stop: Callable[[], bool] | None = None,
        on_epoch: Callable[[EpochStats], None] | None = None,
    ) -> dict[str, Any]:
        """Fine-tune the served weights on this structure's labelled regions and gate the result.

        Before training, part of the labels is held out (``finetune.split_hold_out``); the best epoch on it
        is kept. Publishing archives the weights under ``versions/`` and then replaces the served file by
        rename, so readers see the old or the new weights, never half. ``should_stop`` is polled every
        iteration (a worker's cancel flag); ``on_epoch`` sees every epoch's stats after they are written to
        ``stats_path``.

        Returns:
            the final stats, with ``published`` (bool), ``gate`` (:class:`~lib.trainers.finetune.GateDecision`
            as a dict), ``baseline_metric`` (the served weights' held-out F1) and, if published,
            ``weights`` (the archived file).
        """
        params = self.resolve(request)
        regions = datastore.training_regions(self.spec.name)  # this structure's labels only, in id order
        if not regions:
            raise InvalidRequest(
                f"no submitted {self.spec.name} labels to train '{self.spec.name}' on; save a label first"
            )
        volumes = [load_region(datastore, region, self.spec) for region in regions]
        device = params["device"] if params["device"] != "auto" else default_device()
        served, _, served_path = self.weights.load(device)
        candidate = f"{self.weights.trained_path}.candidate"
        if os.path.exists(candidate):  # left by a run that was stopped: never published, safe to drop
            os.remove(candidate)
        started = time.time()
        history: list[dict[str, Any]] = []  # every epoch so far: the learning curve
        try:
            run = fine_tune(
                self.spec,
                volumes,
                served_path,
                candidate,
                original_baseline=lambda: self._served_original_score(datastore.db, served_path, served, device),
                data_dir=reference_data_dir(),
                iterations=None if params["iterations"] == "auto" else params["iterations"],
                epochs=params["max_epochs"],
                learning_rate=params["learning_rate"],
                batch_size=params["batch_size"],
                replay_share=params["replay_share"],
                pretrained_encoder=params["pretrained_encoder"] or None,
                freeze_encoder_epochs=params["freeze_encoder_epochs"],
                device=device,
                meta={
                    "name": self.spec.name,
                    "images": regions,
                    "pretrained_encoder": params["pretrained_encoder"] or None,
                },
                on_epoch=self._epoch_reporter(self.spec.name, started, history, on_epoch),
                should_stop=should_stop,
            )
        except TooFewLabels as e:
            raise InvalidRequest(str(e)) from None
        final, gate = run.final, run.gate
        published = params["publish"] == "always" or gate.publish
        result = {
            **final.to_dict(),
            "name": self.spec.name,
            "start_ts": started,
            "status": "DONE",
            "images": len(regions),
            "iterations": run.iterations,
            "validation_images": run.held_out,
            "baseline_metric": gate.new_baseline,
            "gate": gate.to_dict(),
            "trigger": request.get("trigger"),
            "published": published,
            "history": history,
        }
        if published:
            result["weights"] = self.weights.publish(candidate)
        else:
            logger.info(f"{self.spec.name}: not published: {gate.reason}")
            os.remove(candidate)
        self._write_stats(result)
        return result
