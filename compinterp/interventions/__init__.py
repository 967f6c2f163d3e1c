"""Interventions: read and edit a model's values by name, at sites as fine as positions, heads and
subspaces; patching sweeps, exact and by attribution."""

from compinterp.interventions.cache import Cache, attention_patterns, cache_batches, run_with_cache, stacked
from compinterp.interventions.edits import Intervention, intervene, patch, mean, resample, steer, zero
from compinterp.interventions.patching import Sweep, attribution_patching, every_head, grid, patching
from compinterp.interventions.run import Edited, run_edited
from compinterp.interventions.sites import Rotation, Site

__all__ = ["Cache", "Edited", "attention_patterns", "Intervention", "Rotation", "Site", "Sweep", "attribution_patching", "cache_batches",
           "every_head", "grid", "intervene", "patch", "mean", "patching", "resample", "run_edited", "run_with_cache",
           "stacked", "steer", "zero"]
