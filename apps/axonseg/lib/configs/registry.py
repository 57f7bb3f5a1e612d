"""The structures axonseg serves, by name."""

from __future__ import annotations

import os

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
