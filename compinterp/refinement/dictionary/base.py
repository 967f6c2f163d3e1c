"""The rewrite pass all dictionary passes share: settings per candidate, training, and the rewritten model.

A dictionary pass trains a :class:`~compinterp.refinement.dictionary.core.Dictionary`
on activations streamed from the model and substitutes it into the model's diagram.
:meth:`DictionaryPass.interpret` returns the rewrite as an
:class:`~compinterp.Interpretation`, so that :func:`compinterp.check` reports the
local square (the dictionary's reconstruction) apart from the end-to-end square.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch

from compinterp.complexity.sparse import FEATURES
from compinterp.errors import InputError
from compinterp.interpretation import Interpretation
from compinterp.model import Model
from compinterp.refinement.base import Rewrite
from compinterp.refinement.dictionary.core import Dictionary, box_activations, train
from compinterp.syntax import Add, Box, Copy, Diagram, Elementwise, JumpReLU, Mul, Opaque, TopK

SKIP = (Copy, Add, Mul, Elementwise, TopK, JumpReLU, Opaque)
"""Box kinds a dictionary pass does not offer to rewrite by default (no wire of their own worth a dictionary)."""


class DictionaryPass:
    """A dictionary rewrite: ``kind`` (``topk``, ``batchtopk``, ``relu``, ``jumprelu`` or ``bilinear``) at each
    ``(width, k)`` of ``widths`` x ``ks`` (``l1`` instead of ``k`` for ``relu``, ``l0`` for ``jumprelu``), trained on
    ``data`` for ``steps`` steps;
    of ``restarts`` fits (seeds ``seed``, ``seed + 1`` ...) the one with the lowest final loss is kept.
    ``aux_k`` (the dead-feature loss), ``normalise``, ``warmup``, ``decay``, ``clip`` and ``b_dec`` are the
    training options of :class:`~compinterp.refinement.dictionary.core.Dictionary` and
    :func:`~compinterp.refinement.dictionary.core.train`."""

    name: ClassVar[str] = "dictionary"
    kind: ClassVar[str] = "topk"
    centre: ClassVar[bool] = True
    """Whether the input is centred by the decoder's bias before encoding (autoencoders: it is the same wire)."""

    def __init__(self, data: Any = "gaussian:4096", boxes: Sequence[str] | None = None, *,
                 widths: Sequence[int] = (64, 32, 16), ks: Sequence[int] = (8, 4, 2), l1: float = 1e-3,
                 steps: int = 1000, lr: float = 3e-3, batch_size: int = 256, seed: int = 0, restarts: int = 1,
                 device: str | torch.device | None = None, progress: bool = True,
                 kind: str | None = None, aux_k: int | str | None = "auto", normalise: bool = False, warmup: int = 0,
                 decay: float = 0.0, clip: float | None = 1.0, b_dec: str = "mean", l0: float = 1.0) -> None:
        self.data, self.boxes, self.widths, self.ks, self.l1 = data, boxes, tuple(widths), tuple(ks), float(l1)
        self.l0 = float(l0)
        self.aux_k, self.normalise, self.warmup, self.decay = aux_k, normalise, warmup, decay
        self.clip, self.b_dec = clip, b_dec
        if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 1:
            raise InputError(f"restarts must be a positive integer, got {restarts!r}")
        self.steps, self.lr, self.batch_size, self.seed, self.restarts = steps, lr, batch_size, seed, restarts
        self.device, self.progress = device, progress
        if kind is not None:
            self.kind = kind

    def targets(self, model: Model) -> list[str]:
        """The boxes this pass rewrites: the given ones, else every box with one input and one output
        wire whose kind is not in :data:`SKIP` and that is not part of a dictionary (a box reading or
        writing a ``features`` wire); either way, not a box a dictionary refines already (whose
        ``{box}_dec`` is in the model), so that a search does not stack dictionaries."""
        boxes = model.boxes
        if self.boxes is not None:
            for name in self.boxes:
                if name not in boxes and f"{name}_dec" not in boxes:
                    raise InputError(f"{self.name}: no box named '{name}' in the model; "
                                     f"boxes: {', '.join(boxes)}")
            return [name for name in self.boxes if name in boxes and f"{name}_dec" not in boxes]
        return [name for name, box in boxes.items()
                if not isinstance(box, SKIP) and len(box.dom) == 1 and len(box.cod) == 1 and f"{name}_dec" not in boxes
                and FEATURES not in (box.dom.wires[0].label, box.cod.wires[0].label)]

    def candidates(self, model: Model) -> Sequence[Rewrite]:
        """One rewrite per target box and setting, widest and densest (mildest) first."""
        widths = sorted(set(self.widths), reverse=True)
        if self.kind in ("relu", "jumprelu"):
            penalty = "l1" if self.kind == "relu" else "l0"
            settings = [{"width": w, penalty: getattr(self, penalty)} for w in widths]
        else:
            settings = [{"width": w, "k": k} for w in widths for k in sorted(set(self.ks), reverse=True) if k <= w]
        return [Rewrite(self.name, box, s) for box in self.targets(model) for s in settings]

    def apply(self, model: Model, rewrite: Rewrite) -> Model:
        """The model with ``rewrite``'s trained dictionary in place."""
        return self.interpret(model, rewrite).explanation

    def interpret(self, model: Model, rewrite: Rewrite, dictionary: Dictionary | None = None) -> Interpretation:
        """The rewrite as an interpretation of ``model`` (box ``rewrite.box`` sent to its image), with
        ``dictionary`` (else one trained by :meth:`fit`)."""
        box = model.boxes.get(rewrite.box)
        if box is None:
            raise InputError(f"{self.name}: no box named '{rewrite.box}' in the model")
        dictionary = dictionary if dictionary is not None else self.fit(model, rewrite)
        image = self.image(box, dictionary)
        own = {name: copy.deepcopy(model.params[name]) for name, b in model.boxes.items() if b.opaque}
        return Interpretation(model, boxes={box.name: image}, params=dictionary.params(box.name), modules=own,
                              rules=model.rules)

    def fit(self, model: Model, rewrite: Rewrite) -> Dictionary:
        """The dictionary of ``rewrite``, trained on the streamed activations of its box."""
        box = model.boxes[rewrite.box]
        if len(box.dom) != 1 or len(box.cod) != 1:
            raise InputError(f"{self.name}: box '{box.name}' ({box.dom} -> {box.cod}) must have one input "
                             "and one output wire")
        settings = dict(rewrite.settings)
        d_in, d_out = self.dims(box)
        fits = []
        for seed in range(self.seed, self.seed + self.restarts):
            aux_k = self.aux_k if self.aux_k in (None, "auto") else min(self.aux_k, settings["width"])
            dictionary = Dictionary(self.kind, d_in, d_out, settings["width"], settings.get("k"),
                                    l1=settings.get("l1", self.l1), l0=settings.get("l0", self.l0), centre=self.centre,
                                    seed=seed, aux_k=aux_k, normalise=self.normalise)
            losses = train(dictionary, lambda: self.pairs(model, box, self.data), steps=self.steps, lr=self.lr,
                           progress=self.progress, desc=str(rewrite), warmup=self.warmup, decay=self.decay,
                           clip=self.clip, b_dec=self.b_dec)
            tail = losses[-max(1, len(losses) // 10):]
            fits.append((sum(tail) / len(tail), seed - self.seed, dictionary))
        return min(fits, key=lambda fit: fit[:2])[2].eval()

    def dims(self, box: Box) -> tuple[int, int]:
        """The dictionary's input and output dimensions for ``box``."""
        return box.cod.dim, box.cod.dim

    def pairs(self, model: Model, box: Box, data: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The ``(input, target)`` batches of ``data`` the dictionary works on: the box's output, twice."""
        for _, y in box_activations(model, box.name, data, batch_size=self.batch_size, device=self.device):
            yield y, y

    def image(self, box: Box, dictionary: Dictionary) -> Diagram:
        """The box followed by the dictionary on its output wire."""
        return box >> dictionary.diagram(box.name, box.cod, box.cod)

