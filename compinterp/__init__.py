"""compinterp: compositional interpretability, explaining neural networks with string diagrams.

The names below are loaded on first use, so ``import compinterp`` (and the
command line's start-up) stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Model": "compinterp.model",
    "from_torch": "compinterp.frontend",
    "from_hf": "compinterp.frontend",
    "from_transformer_lens": "compinterp.frontend",
    "load": "compinterp.model",
    "save": "compinterp.files",
    "draw": "compinterp.drawing",
    **{name: "compinterp.interventions" for name in (
        "Site", "Rotation", "run_with_cache", "intervene", "patch", "zero", "mean", "resample", "steer",
        "patching", "attribution_patching", "grid", "every_head", "attention_patterns")},
    **{name: "compinterp.syntax" for name in (
        "Space", "Wire", "Diagram", "Box", "Id", "Swap", "Embed", "PosEmbed", "Linear", "Unembed", "Bilinear", "Gated",
        "Norm", "Elementwise", "TopK", "JumpReLU", "Copy", "Add", "Mul", "Attention", "Opaque", "residual", "chain")},
    **{name: "compinterp.errors" for name in (
        "CompinterpError", "CompositionError", "BoxError", "ParameterError", "InputError", "FormatError",
        "ImportTraceError")},
    **{name: "compinterp.syntax" for name in ("diagram_to_json", "diagram_from_json")},
    "read_diagram": "compinterp.files",
    **{name: "compinterp.interpretation" for name in ("Interpretation", "maps")},
    **{name: "compinterp.interpretation.hypotheses" for name in ("heads_follow", "only_through")},
    **{name: "compinterp.faithfulness" for name in ("check", "interchange", "fit", "FitResult", "FaithfulnessReport",
                                                    "data")},
    **{name: "compinterp.semantics.tensor" for name in (
        "tensor_semantics", "PolyNet", "NotPolynomialError", "why_not_polynomial")},
    "symbolic": "compinterp.semantics.symbolic",
    **{name: "compinterp.faithfulness.exact" for name in (
        "exact_compare", "ExactResult", "fit_gaussian", "frobenius_cosine", "gaussian_inner")},
    **{name: "compinterp.complexity" for name in ("description_length", "Bits", "quantise", "min_bits")},
    **{name: "compinterp.refinement" for name in (
        "refine", "RefineResult", "Frontier", "eigen", "lowrank", "cp", "prune", "fuse", "odt")},
    **{name: "compinterp.refinement.spectra" for name in ("spectrum", "Spectrum")},
    **{name: "compinterp.refinement.dictionary" for name in (
        "SAE", "Transcoder", "BilinearAE", "sae", "transcoder", "bilinear_ae")},
    **{name: "compinterp.tasks.train" for name in ("train", "TrainResult")},
    **{name: "compinterp.models" for name in ("bilinear_mlp", "chi_net", "transformer")},
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    """An export, imported on first use and then bound in this module (later lookups skip this hook)."""
    if name in _EXPORTS:
        value = globals()[name] = getattr(import_module(_EXPORTS[name]), name)
        return value
    raise AttributeError(f"module 'compinterp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
