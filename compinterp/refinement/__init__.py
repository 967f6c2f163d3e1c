"""Refinement: rewrites of a model's own diagram into simpler diagrams with (nearly) the same semantics."""

from compinterp.refinement.base import Pass, Rewrite, substitute
from compinterp.refinement.passes import (
    CP,
    ODT,
    PASSES,
    Eigen,
    Fuse,
    LowRank,
    Prune,
    cp,
    default_passes,
    eigen,
    fuse,
    lowrank,
    odt,
    prune,
)
from compinterp.refinement.search import Frontier, Point, RefineResult, refine

__all__ = [
    "CP", "ODT", "PASSES", "Eigen", "Frontier", "Fuse", "LowRank", "Pass", "Point", "Prune", "RefineResult",
    "Rewrite", "cp", "default_passes", "eigen", "fuse", "lowrank", "odt", "prune", "refine", "substitute",
]
