"""Dictionaries across the border: the SAELens on-disk format (``cfg.json`` + ``sae_weights.safetensors``).

SAELens stores ``W_enc`` (``d_in x d_sae``), ``b_enc``, ``W_dec`` (``d_sae x d_in``) and ``b_dec``, and
encodes ``z = act((x - b_dec) W_enc + b_enc)`` (``- b_dec`` when ``apply_b_dec_to_input``), decodes
``x_hat = z W_dec + b_dec``; ``act`` is ``relu`` (architecture ``standard``), ``TopK_k`` then ``relu``
(``topk``), which equals our ``TopK_k(relu(.))``, or ``relu(p) H(p - threshold)`` (``jumprelu``, with a
``threshold`` tensor), which equals our ``p H(p - theta)`` for ``theta >= 0`` (a negative threshold is read as
zero, the same function); with ``rescale_acts_by_decoder_norm`` the decoder's row norms are folded into the
encoder on loading (same outputs, unit decoder columns). So ``E = W_enc^T``, ``D = W_dec^T``, and our
normalising scale ``s`` folds into the weights (``W_enc = (E s)^T``, ``W_dec = (D / s)^T``, ``b_dec / s``; the
threshold compares pre-activations, which the fold leaves alone), which SAELens reads with
``normalize_activations="none"``; free decoder norms are folded into the encoder on saving. These three
architectures cross; a trained ``batchtopk`` dictionary is saved as the ``jumprelu`` it runs as (its one
threshold repeated for every feature, as SAELens saves a BatchTopK SAE).

>>> import tempfile
>>> import torch
>>> from compinterp.refinement.dictionary import Dictionary
>>> d = Dictionary("topk", 6, 6, width=12, k=3, seed=0)
>>> with tempfile.TemporaryDirectory() as tmp:
...     _ = save_saelens(d, tmp)
...     back = load_saelens(tmp)
>>> x = torch.randn(4, 6)
>>> torch.allclose(back(x)[0], d(x)[0], atol=1e-6), back.kind, back.k
(True, 'topk', 3)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from compinterp.errors import FormatError, InputError
from compinterp.interpretation import Interpretation
from compinterp.model import Model
from compinterp.refinement.base import Rewrite
from compinterp.refinement.dictionary.core import Dictionary
from compinterp.refinement.dictionary.sae import SAE

CONFIG, WEIGHTS = "cfg.json", "sae_weights.safetensors"
"""The two files of a SAELens SAE directory."""
ARCHITECTURES = {"topk": "topk", "batchtopk": "jumprelu", "relu": "standard", "jumprelu": "jumprelu"}
"""Our encoder kinds and the SAELens architecture each is saved as (a trained ``batchtopk`` runs as a JumpReLU
with one threshold for every feature, as SAELens saves its BatchTopK SAEs; untrained, as the ``topk`` it is)."""


def save_saelens(dictionary: Dictionary, path: str | os.PathLike[str], **metadata: Any) -> Path:
    """Write ``dictionary`` (an autoencoder: ``topk``, ``batchtopk``, ``relu`` or ``jumprelu``) as a SAELens SAE
    directory; ``metadata`` (``hook_name``, ``model_name`` ...) goes into the config's ``metadata``. Returns the
    path."""
    if dictionary.kind not in ARCHITECTURES:
        raise InputError(f"a {dictionary.kind} dictionary has no SAELens architecture; "
                         f"these do: {', '.join(ARCHITECTURES)}")
    if dictionary.decoder.shape[0] != (dictionary.encoder.shape[1]):
        raise InputError(f"SAELens stores autoencoders: this dictionary maps {dictionary.encoder.shape[1]} to "
                         f"{dictionary.decoder.shape[0]} dimensions")
    s_in, s_out = dictionary.in_scale.detach(), dictionary.out_scale.detach()
    if not torch.allclose(s_in, s_out):
        raise InputError(f"the dictionary's input and output scales differ ({s_in.item():.6g}, {s_out.item():.6g}); "
                         "SAELens folds one scale")
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    encoder, bias, decoder = dictionary._unit()
    weights = {"W_enc": (encoder * s_in).T.contiguous(), "b_enc": bias.clone(),
               "W_dec": (decoder / s_out).T.contiguous(), "b_dec": (dictionary.b_dec.detach() / s_out).clone()}
    architecture = ARCHITECTURES[dictionary.kind]
    thresholds = dictionary.thresholds()
    if thresholds is not None:
        weights["threshold"] = thresholds.clamp_min(0)
    elif architecture == "jumprelu":                            # a batchtopk dictionary not yet trained
        architecture = "topk"
    config: dict[str, Any] = {"architecture": architecture, "d_in": dictionary.decoder.shape[0],
                              "d_sae": dictionary.width, "dtype": str(dictionary.decoder.dtype).removeprefix("torch."),
                              "device": "cpu", "apply_b_dec_to_input": dictionary.centre,
                              "normalize_activations": "none", "reshape_activations": "none",
                              "metadata": dict(metadata)}
    if architecture == "topk":
        config |= {"k": dictionary.k, "rescale_acts_by_decoder_norm": False}
    save_file({name: t.cpu() for name, t in weights.items()}, str(folder / WEIGHTS))
    (folder / CONFIG).write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    return folder


def load_saelens(path: str | os.PathLike[str]) -> Dictionary:
    """The dictionary of a SAELens SAE directory (architectures ``standard``, ``topk`` and ``jumprelu``, no
    activation normalisation at run time)."""
    folder = Path(path)
    for name in (CONFIG, WEIGHTS):
        if not (folder / name).is_file():
            raise FormatError(f"{folder} is not a SAELens SAE directory: it has no {name}")
    config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    architecture = config.get("architecture", "standard")
    if architecture not in ("standard", "topk", "jumprelu"):
        raise FormatError(f"{folder / CONFIG}: architecture {architecture!r} does not load as a dictionary; "
                          "standard, topk and jumprelu do")
    if config.get("normalize_activations", "none") != "none":
        raise FormatError(f"{folder / CONFIG}: normalize_activations={config.get('normalize_activations')!r}: fold "
                          "the scaling into the weights first (SAELens: fold_activation_norm_scaling_factor)")
    w = load_file(str(folder / WEIGHTS))
    needed = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if architecture == "jumprelu" else set())
    missing = needed - set(w)
    if missing:
        raise FormatError(f"{folder / WEIGHTS} lacks {', '.join(sorted(missing))}")
    if config.get("rescale_acts_by_decoder_norm"):     # pre * |W_dec_f|, then acts / |W_dec_f|: fold the norms
        norms = w["W_dec"].norm(dim=1)
        w["W_enc"], w["b_enc"], w["W_dec"] = w["W_enc"] * norms, w["b_enc"] * norms, w["W_dec"] / norms[:, None]
    d_in, width = w["W_enc"].shape
    kind, k = ("topk", int(config["k"])) if architecture == "topk" else (architecture.replace("standard", "relu"), None)
    dictionary = Dictionary(kind, d_in, d_in, width, k, centre=bool(config.get("apply_b_dec_to_input", True)),
                            decoder_norm="unit")        # the decoder as it is: TopK chooses on the file's p
    with torch.no_grad():
        dictionary.encoder.copy_(w["W_enc"].T)
        dictionary.b_enc.copy_(w["b_enc"])
        dictionary.decoder.copy_(w["W_dec"].T)
        dictionary.b_dec.copy_(w["b_dec"])
        if kind == "jumprelu":
            dictionary.threshold.copy_(w["threshold"].clamp_min(0))
    return dictionary.eval()


def from_saelens(model: Model, box: str, path: str | os.PathLike[str]) -> Interpretation:
    """The SAELens SAE at ``path`` as a dictionary refinement of ``model``'s box ``box`` (on its output wire,
    as the ``sae`` pass places one); ``.explanation`` is the refined model."""
    target = model.boxes.get(box)
    if target is None:
        raise InputError(f"no box named '{box}' in the model; boxes: {', '.join(model.boxes)}")
    dictionary = load_saelens(path)
    if len(target.cod) != 1 or target.cod.dim != dictionary.decoder.shape[0]:
        raise InputError(f"the SAE at {path} reads {dictionary.decoder.shape[0]} dimensions but box '{box}' "
                         f"writes {target.cod}")
    p = SAE(None, [box], widths=[dictionary.width], ks=[dictionary.k or 1], kind=dictionary.kind, progress=False)
    penalty = {"l0": p.l0} if dictionary.kind == "jumprelu" else {"l1": p.l1}
    settings = {"width": dictionary.width} | ({"k": dictionary.k} if dictionary.k else penalty)
    return p.interpret(model, Rewrite(p.name, box, settings), dictionary)
