"""The structures axonseg serves, by name."""

from __future__ import annotations

import os

from ..trainers.pretrain_task import PRETRAIN_TRAINER, PretrainTrainer
from ..trainers.task import StructureTrainer
from ..volumes.roots import volume_roots
from . import axon, membrane, mitochondria, synapse
from .spec import StructureSpec
from .task_config import StructureTaskConfig

TASK_CONFIGS: dict[str, type[StructureTaskConfig]] = {
    cfg.spec.name: cfg
    for cfg in (axon.AxonConfig, mitochondria.MitochondriaConfig, synapse.SynapseConfig, membrane.MembraneConfig)
}
SPECS: dict[str, StructureSpec] = {name: cfg.spec for name, cfg in TASK_CONFIGS.items()}
# Shipped weights and model cards.
MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "model")


def init_task_configs(workdir: str, model_dir: str = MODEL_DIR) -> dict[str, StructureTaskConfig]:
    """One initialised TaskConfig per structure: the API server and every worker build the same ones."""
    configs = {}
    for name, config_class in TASK_CONFIGS.items():
        config = config_class()
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
