"""The MONAI Label train task: retrain a structure on the labels annotators submitted."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from monailabel.interfaces.tasks.train import TrainTask

from ..configs.spec import StructureSpec
from ..db.store import Database
from ..errors import InvalidRequest, NotFound
from ..infers.segmentation import ModelWeights
from ..machine import check_device, default_device
from ..params import Range, choice, refuse_unknown, text
from ..volumes.roots import reference_data_dir
from .data import TrainingVolume, load_region
from .encoder import read_encoder
from .finetune import GATE_METRIC, TooFewLabels, fine_tune, original_test_scores
from .supervised import EpochStats

if TYPE_CHECKING:
    from ..datastore import MicroscopyDatastore

logger = logging.getLogger(__name__)
_CURVE_FIELDS = ("epoch", "loss", "validation", "total_time")

# A trainer option's parser: ``parse(name, value, where="")`` is the value checked against its bounds (lib.params),
# or InvalidRequest naming the option, its bounds and the value.
Parser = Callable[..., Any]
# Bounds shared by the trainers' options (past them a request is a mistake, not a longer or bolder run):
EPOCHS = Range(1, 10_000, integer=True)
# AdamW's step size: 0 trains nothing; up to 10 so that a run can still be made to fail on purpose (a test
# wrecks weights with 5 to see the gate refuse them).
LEARNING_RATE = Range(0.0, 10.0, low_open=True)
# 3D patches per step: more than this do not fit in a GPU's memory at any structure's patch size.
BATCH_SIZE = Range(1, 256, integer=True)


def parse_device(name: str, value: Any, where: str = "") -> str:
    """``auto`` or a torch device (:func:`~lib.machine.check_device`)."""
    return check_device(value)


class StructureTrainer(TrainTask):
    """What every axonseg trainer offers the API and the train worker besides MONAI Label's ``TrainTask``.

    - ``options()``: every option with its default and its bounds; ``config()`` (what ``/info/`` shows and
      Slicer sends back) is their defaults.
    - ``resolve(request, db)``: the request merged over the defaults and checked, unknown keys refused; the
      API calls it before queueing (a bad request is a 4xx, not a failed job) and the worker again before
      running.
    - ``__call__(params, datastore, should_stop, on_epoch)``: the run; progress goes to ``stats_path``
      (``/info/`` shows it as ``train_stats``).
    - ``record(result, db)``: what the run produced, recorded in the database (a model or encoder version).
    """

    # Keys of a train request that are no option, passed on to the run: who sent it (``client_id``: every
    # MONAI Label client adds it, Slicer's train_start too), the trainer (``model``: MONAI Label's train
    # request names it) and why it was queued (``trigger``: lib.activelearning.retrain).
    REQUEST_KEYS = ("client_id", "model", "trigger")

    def __init__(self, name: str, description: str, stats_path: str):
        super().__init__(description)
        self.name = name
        self.stats_path = stats_path

    def options(self) -> dict[str, tuple[Any, Parser]]:
        """``{option: (default, parser)}``. A list default is a choice (Slicer shows a drop-down and sends
        the item); its default is the first item."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {name: default for name, (default, _) in self.options().items()}

    def resolve(self, request: dict[str, Any], db: Database | None = None) -> dict[str, Any]:
        options = self.options()
        hint = f"options of '{self.name}' are: {', '.join(options)}"
        refuse_unknown(request, (*options, *self.REQUEST_KEYS), "training option", hint)
        where = f" for '{self.name}' training"
        params = {}
        for name, (default, parse) in options.items():  # defaults too: each is inside its own bounds
            value = request.get(name, default[0] if isinstance(default, list) else default)
            params[name] = parse(name, value, where=where)
        return {**params, **{k: request[k] for k in self.REQUEST_KEYS if k in request}}

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


PUBLISH = ("gate", "always")
# Iterations of a fine-tuning run in all ("auto" chooses at most the recipe's max_iterations, hundreds).
ITERATIONS = Range(1, 1_000_000, integer=True)


def _iterations(name: str, value: Any, where: str = "") -> str | int:
    """``auto`` (any case) or a whole number in :data:`ITERATIONS`."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    return ITERATIONS.check(name, value, f" or auto{where}")


ENCODER_ID = Range(1, 2**31 - 1, integer=True)


def _encoder(name: str, value: Any, where: str = "") -> str:
    """An encoder version id (GET /encoders/; a whole number, also as text) or an encoder file's path; ""
    or null: none."""
    if value is None:
        return ""
    if isinstance(value, str) and not value.strip().isdigit():
        return text(name, value, where).strip()
    return str(ENCODER_ID.check(name, value, f" (an encoder version id) or a file's path{where}"))


class SegmentationTrainer(StructureTrainer):
    """Fine-tunes the served weights on the datastore's final labels (``lib.trainers.finetune``), then
    publishes them if they pass the gate.

    Progress is written to ``stats_path`` after every epoch, which ``/info/`` shows as
    ``train_stats``: the fields 3D Slicer reads (epoch, total_epochs, total_time, best_metric), the
    epoch's loss and held-out scores, ``history`` (every epoch so far), which
    ``/train/{model}/learning_curve.png`` draws, and at the end the gate's figures (``gate``).
    """

    def __init__(self, spec: StructureSpec, weights: ModelWeights, stats_path: str):
        super().__init__(spec.name, f"Fine-tune '{spec.name}' on submitted labels", stats_path)
        self.spec = spec
        self.weights = weights

    def options(self) -> dict[str, tuple[Any, Parser]]:
        recipe = self.spec.recipe.fine_tune
        return {
            # "auto": so many per patch-worth of labelled voxels (the structure's fine-tuning recipe)
            "iterations": ("auto", _iterations),
            # epochs: the held-out labels are scored after each; the best epoch is kept
            "max_epochs": (recipe.validations, EPOCHS.check),
            "learning_rate": (self.spec.recipe.learning_rate * recipe.learning_rate_factor, LEARNING_RATE.check),
            "batch_size": (self.spec.recipe.batch_size, BATCH_SIZE.check),
            # the share of patches drawn from the recipe's reference data; 1 would leave no new labels
            "replay_share": (recipe.replay_share, Range(0.0, 1.0, high_open=True).check),
            "device": ("auto", parse_device),
            # "gate": publish only weights that score higher on held-out new labels and stay within the
            # tolerance on the recipe's test split; "always": publish whatever the run produced
            "publish": (list(PUBLISH), partial(choice, allowed=PUBLISH)),
            # An ssl_pretrain encoder version id (GET /encoders/) or an encoder file: start from it
            # with a fresh decoder instead of from the served weights.
            "pretrained_encoder": ("", _encoder),
            # epochs (of max_epochs) in which the encoder stays fixed and only the decoder adapts
            "freeze_encoder_epochs": (0, Range(0, EPOCHS.high, integer=True).check),
        }

    def resolve(self, request: dict[str, Any], db: Database | None = None) -> dict[str, Any]:
        params = super().resolve(request, db)
        encoder = params["pretrained_encoder"]
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
        stored = (version.metrics or {}).get("original_test") if version is not None else None
        if stored is not None:
            return float(stored)
        scores = original_test_scores(self.spec, served, reference_data_dir(), device)
        value = scores[GATE_METRIC] if scores else None
        if version is not None and value is not None:
            db.add_model_version_metrics(version.id, {"original_test": value})
        return value

    def _labelled_volumes(self, datastore: MicroscopyDatastore) -> tuple[list[str], list[TrainingVolume]]:
        """This structure's labelled regions (in id order) and their volumes on the model's grid."""
        regions = datastore.training_regions(self.spec.name)
        if not regions:
            raise InvalidRequest(
                f"no submitted {self.spec.name} labels to train '{self.spec.name}' on; save a label first"
            )
        return regions, [load_region(datastore, region, self.spec) for region in regions]

    def _fresh_candidate_path(self) -> str:
        candidate = f"{self.weights.trained_path}.candidate"
        if os.path.exists(candidate):  # left by a run that was stopped: never published, safe to drop
            os.remove(candidate)
        return candidate

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
        regions, volumes = self._labelled_volumes(datastore)
        device = params["device"] if params["device"] != "auto" else default_device()
        served, _, served_path = self.weights.load(device)
        candidate = self._fresh_candidate_path()
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
