"""The worker runtime: what a worker keeps between jobs, built once at start-up by :func:`configure`.

The :class:`Runtime` keeps one ``SegmentationInfer`` per model, whose weights are cached and reloaded only
when the weights file changes, and the networks of archived weights files that volume jobs started with.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

import torch

from ..datastore import MicroscopyDatastore, RegisteredSources
from ..db.engine import database_url
from ..db.store import Database, file_checksum
from ..errors import NotFound, check_model
from ..infers.segmentation import SegmentationInfer
from ..networks import load_weights
from ..trainers.task import StructureTrainer
from ..wiring import StructureTaskConfig, init_task_configs, init_trainers


@dataclass
class Runtime:
    """What a worker keeps between jobs."""

    studies: str
    workdir: str
    configs: dict[str, StructureTaskConfig]
    trainers: dict[str, StructureTrainer]
    db: Database
    # Set by the worker when the API asks to stop the running job; polled by long jobs.
    stop_event: threading.Event = field(default_factory=threading.Event)
    # Networks of archived weights files (volume jobs name the exact version they started with).
    networks: dict[tuple[str, str], torch.nn.Module] = field(default_factory=dict)
    # Readers of registered Zarr/N5 volumes, opened once per worker (a datastore is built per job).
    sources: RegisteredSources = field(default_factory=RegisteredSources)

    def datastore(self) -> MicroscopyDatastore:
        """The datastore over the shared database and volume store (cheap: its only state is ``sources``)."""
        specs = {name: config.spec for name, config in self.configs.items()}
        return MicroscopyDatastore(self.studies, self.workdir, self.db, specs, sources=self.sources)

    def infer_task(self, model: str) -> SegmentationInfer:
        """The model's infer task; tasks of one model share its cached network (``config.weights``)."""
        return self.configs[check_model(model, self.configs)].infer()

    def network(self, path: str, checksum: str, device: str) -> torch.nn.Module:
        """The network of the weights file ``path``, loaded once per worker; NotFound if the file is gone or
        is no longer the version a job started with (``checksum``)."""
        key = (path, device)
        if key not in self.networks:
            if not os.path.isfile(path) or file_checksum(path) != checksum:
                raise NotFound(f"the weights this job started with ({os.path.basename(path)}) are gone or changed")
            self.networks[key] = load_weights(path, device)[0]
        return self.networks[key]

    def warm_up(self, device: str) -> None:
        for model in self.configs:
            self.infer_task(model).weights.load(device)


_runtime: Runtime | None = None


def configure(studies: str, workdir: str) -> Runtime:
    global _runtime
    configs = init_task_configs(workdir)
    _runtime = Runtime(
        studies, workdir, configs, init_trainers(configs, workdir, studies), Database(database_url(workdir))
    )
    return _runtime


def runtime() -> Runtime:
    if _runtime is None:
        raise RuntimeError("lib.jobs.runtime.configure() was not called: jobs run inside `python -m lib.jobs.worker`")
    return _runtime
