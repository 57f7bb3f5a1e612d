"""MONAI Label TaskConfig shared by the four structures; each structure module subclasses it."""

from __future__ import annotations

import os
from typing import Any

from monailabel.interfaces.config import TaskConfig

from ..infers.segmentation import ModelWeights, SegmentationInfer
from ..trainers.task import SegmentationTrainer
from .spec import StructureSpec


class StructureTaskConfig(TaskConfig):
    """One model: its shipped weights in ``model_dir``, retrained weights and stats in ``workdir``."""

    spec: StructureSpec

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
