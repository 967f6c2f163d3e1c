"""The rewrite passes: each sends one kind of box to a simpler sub-diagram and every other box to itself.

Every pass follows :class:`~compinterp.refinement.base.Pass`: ``name``,
``candidates(model)`` (rewrites of every box it applies to, mildest setting first),
``apply(model, rewrite)`` (a fresh model with the same input and output spaces) and
``lossless(model)`` (the settings at which the output equals the input to float
precision). Each also has a function form for direct use. The maths of each is in
``docs/refinement.md``.

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Linear, Bilinear, residual, chain
>>> x, y = Space("x", 8), Space("y", 3)
>>> model = Model(chain(residual(Bilinear("mlp", x, x, hidden=8)), Linear("out", x, y)), seed=0)
>>> sorted(PASSES)
['cp', 'eigen', 'fuse', 'lowrank', 'odt', 'prune']
>>> [str(r) for r in Prune().candidates(model)][:2]
['prune(mlp, keep=6)', 'prune(mlp, keep=4)']
>>> rewrite = Eigen().lossless(model)[0]
>>> exact = Eigen().apply(model, rewrite)
>>> inputs = torch.randn(5, 8)
>>> torch.allclose(exact(inputs), model(inputs), atol=1e-5)
True
"""

from __future__ import annotations

from compinterp.refinement.base import Pass
from compinterp.refinement.passes.cp import CP, cp
from compinterp.refinement.passes.eigen import Eigen, Spectra, eigen
from compinterp.refinement.passes.fuse import Fuse, fuse
from compinterp.refinement.passes.lowrank import LowRank, lowrank
from compinterp.refinement.passes.odt import ODT, odt
from compinterp.refinement.passes.prune import Prune, prune, scores

PASSES: dict[str, type] = {cls.name: cls for cls in (Eigen, LowRank, CP, Prune, Fuse, ODT)}
"""Every pass class by its name."""


def default_passes() -> list[Pass]:
    """The passes a search tries by default, cheapest first: fuse, eigen (by a global ``|lambda|``
    threshold, folding neighbouring linear maps in), lowrank, prune, odt, then cp (a fit per setting); eigen
    and cp share their spectra."""
    spectra = Spectra()
    return [Fuse(), Eigen(mode="threshold", fold="auto", spectra=spectra), LowRank(), Prune(), ODT(),
            CP(spectra=spectra)]


__all__ = ["CP", "ODT", "PASSES", "Eigen", "Fuse", "LowRank", "Prune", "Spectra", "cp", "default_passes", "eigen",
           "fuse", "lowrank", "odt", "prune", "scores"]
