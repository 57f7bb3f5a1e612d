"""The structures axonseg serves, by name, and the folder of their shipped weights."""

from __future__ import annotations

import os

from . import axon, membrane, mitochondria, synapse
from .spec import StructureSpec

SPECS: dict[str, StructureSpec] = {
    spec.name: spec for spec in (axon.SPEC, mitochondria.SPEC, synapse.SPEC, membrane.SPEC)
}
# Shipped weights and model cards.
MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "model")
