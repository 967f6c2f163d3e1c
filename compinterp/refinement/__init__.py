"""Refinement: rewrites of a model's own diagram into simpler diagrams with (nearly) the same semantics."""

from compinterp.refinement.base import Pass, Rewrite, substitute

__all__ = ["Pass", "Rewrite", "substitute"]
