"""Dictionary refinements: sparse autoencoders, transcoders and bilinear autoencoders as rewrite passes.

See ``docs/dictionary.md``.
"""

from compinterp.refinement.dictionary.base import NAMES, DictionaryPass, make_pass
from compinterp.refinement.dictionary.bilinear_ae import BilinearAE, bilinear_ae
from compinterp.refinement.dictionary.core import Dictionary, box_activations, train
from compinterp.refinement.dictionary.sae import SAE, sae
from compinterp.refinement.dictionary.sweep import SweepPoint, best, score, sweep
from compinterp.refinement.dictionary.transcoder import Transcoder, transcoder
from compinterp.refinement.dictionary.view import Feature, features

__all__ = ["NAMES", "SAE", "BilinearAE", "Dictionary", "DictionaryPass", "Feature", "SweepPoint", "Transcoder", "best",
           "bilinear_ae", "box_activations", "features", "make_pass", "sae", "score", "sweep", "train", "transcoder"]
