"""Wiring: the structures' specs (plain data, ``lib.configs``) become MONAI Label task configs, infers and
trainers here, and only here. The API server and every worker build the same ones through this module."""

from __future__ import annotations

import os
from typing import Any

from monailabel.interfaces.config import TaskConfig

from .configs.registry import MODEL_DIR, SPECS
from .configs.spec import StructureSpec
from .infers.segmentation import ModelWeights, SegmentationInfer
from .trainers.pretrain_task import PRETRAIN_TRAINER, PretrainTrainer
from .trainers.task import SegmentationTrainer, StructureTrainer
from .volumes.roots import volume_roots


class StructureTaskConfig(TaskConfig):
    """One model: its shipped weights in ``model_dir``, retrained weights and stats in ``workdir``."""

    def __init__(self, spec: StructureSpec):
        super().__init__()
        self.spec = spec

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner: Any, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        trained_dir = os.path.join(conf["workdir"], "models")
        os.makedirs(trained_dir, exist_ok=True)
        self.path = os.path.join(model_dir, f"{name}.pt")
        self.labels = self.spec.labels
        self.weights = ModelWeights(self.path, os.path.join(trained_dir, f"{name}.pt"))
        self.stats_path = os.path.join(trained_dir, f"{name}.train_stats.json")

    def infer(self) -> SegmentationInfer:
        return SegmentationInfer(self.spec, self.weights)

    def trainer(self) -> SegmentationTrainer:
        return SegmentationTrainer(self.spec, self.weights, self.stats_path)


def init_task_configs(workdir: str, model_dir: str = MODEL_DIR) -> dict[str, StructureTaskConfig]:
    """One initialised TaskConfig per structure: the API server and every worker build the same ones."""
    configs = {}
    for name, spec in SPECS.items():
        config = StructureTaskConfig(spec)
        config.init(name, model_dir, {"workdir": workdir}, None)
        configs[name] = config
    return configs


def init_trainers(configs: dict[str, StructureTaskConfig], workdir: str, studies: str) -> dict[str, StructureTrainer]:
    """Every trainer by name: one per model (retraining on labels) plus ``ssl_pretrain``.

    ``ssl_pretrain`` may read volumes inside the datastore folder and the folders listed in
    ``AXONSEG_VOLUME_ROOTS`` (``os.pathsep``-separated; API and workers must see the same paths).
    """
    trainers: dict[str, StructureTrainer] = {name: config.trainer() for name, config in configs.items()}
    roots = [studies, *volume_roots()]
    trainers[PRETRAIN_TRAINER] = PretrainTrainer(
        {name: config.spec for name, config in configs.items()},
        os.path.join(workdir, "encoders"),
        os.path.join(workdir, "models", f"{PRETRAIN_TRAINER}.train_stats.json"),
        roots,
    )
    return trainers
