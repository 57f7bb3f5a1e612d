"""The structures axonseg serves, by name."""

from __future__ import annotations

from . import axon, membrane, mitochondria, synapse
from .spec import StructureSpec
from .task_config import StructureTaskConfig

TASK_CONFIGS: dict[str, type[StructureTaskConfig]] = {
    cfg.spec.name: cfg
    for cfg in (axon.AxonConfig, mitochondria.MitochondriaConfig, synapse.SynapseConfig, membrane.MembraneConfig)
}
SPECS: dict[str, StructureSpec] = {name: cfg.spec for name, cfg in TASK_CONFIGS.items()}
