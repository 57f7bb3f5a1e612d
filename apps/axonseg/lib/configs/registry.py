"""The structures axonseg serves, by name, the candidate recipes that may replace them, and the folders of their
weights."""

from __future__ import annotations

import os

from . import axon, membrane, membrane_em, mitochondria, mitochondria_em, synapse
from .spec import StructureSpec

SPECS: dict[str, StructureSpec] = {
    spec.name: spec for spec in (axon.SPEC, mitochondria.SPEC, synapse.SPEC, membrane.SPEC)
}
# Recipes trained and judged like the served ones (model card, leave-one-microscope-out runs) but not served: each
# would replace the served model of its ``spec.name`` once its figures beat it. Keyed by recipe name.
CANDIDATES: dict[str, StructureSpec] = {"mitochondria-em": mitochondria_em.SPEC, "membrane-em": membrane_em.SPEC}
# What the trainer takes: a served model's name or a candidate's.
RECIPES: dict[str, StructureSpec] = {**SPECS, **CANDIDATES}
# Shipped weights and model cards; candidates' in a folder of their own.
MODEL_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "model")
CANDIDATE_DIR = os.path.join(MODEL_DIR, "candidates")
