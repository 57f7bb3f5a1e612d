"""The ``ssl_pretrain`` train task: pretrain a structure's U-Net encoder on unlabelled volumes.

It trains on every datastore image (labels are not needed) or on the volumes a request names, and
writes a new encoder file per run under ``<workdir>/encoders/``; the train job records it as an
encoder version (``encoder_versions`` table, ``GET /encoders/``), which segmentation trainers take
as ``pretrained_encoder``.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from monailabel.interfaces.datastore import Datastore

from ..configs.spec import StructureSpec
from ..db.store import Database
from ..errors import InvalidRequest
from ..machine import default_device
from ..params import Range, choice, shown, string_list, text
from ..transforms.intensity import normalize, normalize_percentiles
from ..transforms.io import read_volume
from .pretext import PRETEXT_TASKS, make_pretext_task
from .pretrain import pretrain_encoder
from .supervised import EpochStats
from .task import BATCH_SIZE, EPOCHS, LEARNING_RATE, Parser, StructureTrainer, parse_device

PRETRAIN_TRAINER = "ssl_pretrain"
ITERATIONS_PER_EPOCH = Range(1, 100_000, integer=True)
SEED = Range(0, 2**32 - 1, integer=True)  # 32 bits: a seed every random generator takes
MAX_VOLUMES = 10_000  # files named in one request


def _volumes(name: str, value: Any, where: str = "") -> list[str]:
    """Volume files: a list of paths, or comma-separated text (what Slicer's option table sends); blanks dropped."""
    if isinstance(value, str):
        value = value.split(",")
    elif not isinstance(value, (list, tuple)):
        raise InvalidRequest(f"{name} must be a list of paths or comma-separated text{where}, not {shown(value)}")
    return [p.strip() for p in string_list(name, value, where, MAX_VOLUMES) if p.strip()]


class PretrainTrainer(StructureTrainer):
    """Self-supervised pretraining of one structure's encoder with one pretext task per run.

    Args:
        specs: the structures an encoder can be pretrained for (its U-Net geometry and normalisation).
        encoders_dir: where encoder files are written (one new file per run, never overwritten).
        volume_roots: folders a request's ``volumes`` may lie in; other paths are refused.
    """

    def __init__(self, specs: dict[str, StructureSpec], encoders_dir: str, stats_path: str, volume_roots: list[str]):
        super().__init__(
            PRETRAIN_TRAINER,
            "Self-supervised pretraining of a structure's U-Net encoder on unlabelled volumes "
            "(slice permutation, masked or edge reconstruction)",
            stats_path,
        )
        self.specs = specs
        self.encoders_dir = encoders_dir
        self.volume_roots = [os.path.realpath(r) for r in volume_roots]

    def options(self) -> dict[str, tuple[Any, Parser]]:
        return {
            "structure": (list(self.specs), partial(choice, allowed=tuple(self.specs))),
            "task": (list(PRETEXT_TASKS), partial(choice, allowed=PRETEXT_TASKS)),
            # Volume files to pretrain on, comma-separated or a JSON list (inside the allowed folders);
            # empty: every datastore image.
            "volumes": ("", _volumes),
            # HDF5/Zarr/N5 dataset inside those files (default: found automatically)
            "dataset": ("", text),
            "max_epochs": (10, EPOCHS.check),
            "iterations_per_epoch": (40, ITERATIONS_PER_EPOCH.check),
            "batch_size": (4, BATCH_SIZE.check),
            "learning_rate": (1e-3, LEARNING_RATE.check),
            "seed": (0, SEED.check),
            "device": ("auto", parse_device),
        }

    def resolve(self, request: dict[str, Any], db: Database | None = None) -> dict[str, Any]:
        params = super().resolve(request, db)
        params["volumes"] = [self._allowed(p) for p in params["volumes"]]
        return params

    def _allowed(self, path: str) -> str:
        real = os.path.realpath(path)
        if not any(os.path.commonpath([real, root]) == root for root in self.volume_roots):
            raise InvalidRequest(
                f"volume {path!r} is outside the folders pretraining may read ({', '.join(self.volume_roots)}); "
                "put it there or set AXONSEG_VOLUME_ROOTS"
            )
        if not os.path.isfile(real) and not os.path.isdir(real):  # Zarr/N5 are folders
            raise InvalidRequest(f"volume {path!r} does not exist")
        return real

    def _read_volumes(self, params: dict[str, Any], datastore: Datastore, spec: StructureSpec):
        if params["volumes"]:
            sources = [(p, params["dataset"] or None) for p in params["volumes"]]
        else:  # the regions of images that may carry this structure, each normalised by its image's statistics
            regions = datastore.get_unlabeled_images(structure=spec.name) + datastore.training_regions(spec.name)
            if not regions:
                raise InvalidRequest(
                    f"no volumes to pretrain on: the datastore has no {spec.modality_group} images and no "
                    "'volumes' were given"
                )
            arrays = []
            for region in sorted(regions):
                data = datastore.read_region(region)
                arrays.append(normalize(data.array, data.stats, spec.percentiles, spec.intensity_ceiling))
            return sorted(regions), arrays
        arrays = []
        for path, dataset in sources:
            array = read_volume(path, dataset).array  # VolumeError (422) for a file that is not a 3D volume
            arrays.append(normalize_percentiles(array, spec.percentiles, spec.intensity_ceiling))
        return [os.path.basename(p) for p, _ in sources], arrays

    def __call__(
        self,
        request: dict[str, Any],
        datastore: Datastore,
        should_stop: Callable[[], bool] | None = None,
        on_epoch: Callable[[EpochStats], None] | None = None,
    ) -> dict[str, Any]:
        """Pretrain and write a new encoder file; returns the stats with ``encoder`` (its path)."""
        params = self.resolve(request)
        spec = self.specs[params["structure"]]
        names, volumes = self._read_volumes(params, datastore, spec)
        device = params["device"] if params["device"] != "auto" else default_device()
        os.makedirs(self.encoders_dir, exist_ok=True)
        stamp = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
        output = os.path.join(self.encoders_dir, f"{spec.name}-{params['task']}-{stamp}.pt")
        started = time.time()
        history: list[dict[str, Any]] = []

        final = pretrain_encoder(
            spec,
            make_pretext_task(params["task"], seed=params["seed"]),
            volumes,
            output,
            epochs=params["max_epochs"],
            iterations_per_epoch=params["iterations_per_epoch"],
            batch_size=params["batch_size"],
            learning_rate=float(params["learning_rate"]),
            seed=params["seed"],
            device=device,
            meta={"volumes": names},
            on_epoch=self._epoch_reporter(PRETRAIN_TRAINER, started, history, on_epoch),
            should_stop=should_stop,
        )
        result = {
            **final.to_dict(),
            "name": PRETRAIN_TRAINER,
            "start_ts": started,
            "status": "DONE",
            "structure": spec.name,
            "modality": spec.modality,
            "task": params["task"],
            "volumes": names,
            "encoder": output,
            "history": history,
        }
        self._write_stats(result)
        return result

    def record(self, result: dict[str, Any], db: Database) -> dict[str, Any]:
        """The new encoder file becomes an encoder version of its structure."""
        params = {k: result[k] for k in ("volumes", "total_epochs")}
        version = db.register_encoder_version(
            result["structure"], result["modality"], result["task"], result["encoder"], result["validation"], params
        )
        return {"encoder_version": version.id}
