"""Interpretations (explanations) of a model: box images ``S(f)`` and wire maps ``sigma``."""

from compinterp.interpretation import maps
from compinterp.interpretation.interpretation import Interpretation, WireSpec

__all__ = ["Interpretation", "WireSpec", "maps"]
