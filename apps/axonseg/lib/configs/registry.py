"""The structures axonseg serves, by name."""

from __future__ import annotations

from . import axon, membrane, mitochondria, synapse
from .spec import StructureSpec
from .task_config import StructureTaskConfig

TASK_CONFIGS: dict[str, type[StructureTaskConfig]] = {
    m.SPEC.name: cfg
    for m, cfg in (
        (axon, axon.AxonConfig),
        (mitochondria, mitochondria.MitochondriaConfig),
        (synapse, synapse.SynapseConfig),
        (membrane, membrane.MembraneConfig),
    )
}
SPECS: dict[str, StructureSpec] = {name: cfg.spec for name, cfg in TASK_CONFIGS.items()}
