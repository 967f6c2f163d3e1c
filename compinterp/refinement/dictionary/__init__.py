"""Dictionary refinements: sparse autoencoders, transcoders and bilinear autoencoders as rewrite passes.

See ``docs/dictionary.md``. The registry of dictionary passes by name (:data:`NAMES`,
:func:`make_pass`) lives here, above :mod:`~compinterp.refinement.dictionary.base` and
the passes themselves, so that the base class imports none of its subclasses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from compinterp.errors import InputError
from compinterp.refinement.dictionary.base import DictionaryPass
from compinterp.refinement.dictionary.bilinear_ae import BilinearAE, bilinear_ae
from compinterp.refinement.dictionary.core import Dictionary, box_activations, train
from compinterp.refinement.dictionary.sae import SAE, sae
from compinterp.refinement.dictionary.saelens import from_saelens, load_saelens, save_saelens
from compinterp.refinement.dictionary.sweep import SweepPoint, best, score, sweep
from compinterp.refinement.dictionary.transcoder import Transcoder, transcoder
from compinterp.refinement.dictionary.view import Feature, features

PASSES: dict[str, type[DictionaryPass]] = {cls.name: cls for cls in (SAE, Transcoder, BilinearAE)}
"""Each dictionary pass's class by its name."""

NAMES = tuple(PASSES)
"""The dictionary passes by name (``compinterp.refine(..., passes=["sae"])``, ``--passes sae``)."""


def make_pass(name: str, data: Any, boxes: Sequence[str] | None = None, *, widths: Sequence[int] | None = None,
              ks: Sequence[int] | None = None, **kwargs: Any) -> DictionaryPass:
    """The dictionary pass called ``name`` (``sae``, ``transcoder``, ``bilinear_ae``) on ``boxes``, trained on
    ``data`` (not ``"exact"``: a dictionary is fitted to activations); ``None`` settings keep the defaults."""
    if name not in PASSES:
        raise InputError(f"unknown dictionary pass {name!r}; choose one of {', '.join(NAMES)}")
    if isinstance(data, str) and data == "exact":
        raise InputError(f"the {name} pass trains on activations: give data (digits, gaussian:N or FILE.pt), "
                         "not 'exact'")
    chosen = {"widths": widths, "ks": ks}
    return PASSES[name](data, boxes, **{k: v for k, v in chosen.items() if v is not None}, **kwargs)


__all__ = ["NAMES", "SAE", "BilinearAE", "Dictionary", "DictionaryPass", "Feature", "SweepPoint", "Transcoder", "best",
           "bilinear_ae", "box_activations", "features", "from_saelens", "load_saelens", "make_pass", "sae",
           "save_saelens", "score", "sweep", "train", "transcoder"]
