"""The ``transcoder`` pass: a box ``f : A -> B`` replaced by ``A -> enc -> features -> dec -> B``, trained to imitate ``f``.

>>> import torch
>>> threads = torch.get_num_threads(); torch.set_num_threads(1)  # small kernels: one thread
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Bilinear, Linear
>>> x, y = Space("x", 6), Space("y", 2)
>>> model = Model(Bilinear("mlp", x, x, hidden=4) >> Linear("out", x, y), seed=0)
>>> p = Transcoder(torch.randn(512, 6), boxes=["mlp"], widths=[16], ks=[4], steps=50, progress=False)
>>> refined = p.apply(model, p.candidates(model)[0])
>>> [box.name for box in refined.diagram.boxes]
['mlp_enc', 'mlp_relu', 'mlp_topk', 'mlp_dec', 'out']
>>> torch.set_num_threads(threads)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from compinterp.model import Model
from compinterp.refinement.dictionary.base import DictionaryPass
from compinterp.refinement.dictionary.core import Dictionary, box_activations
from compinterp.syntax import Box, Diagram


class Transcoder(DictionaryPass):
    """Transcoders: a box replaced by a sparse feature layer from its input wire to its output wire."""

    name = "transcoder"
    kind = "topk"
    centre = False

    def dims(self, box: Box) -> tuple[int, int]:
        """The box's input and output dimensions."""
        return box.dom.dim, box.cod.dim

    def pairs(self, model: Model, box: Box, data: Any) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The box's inputs and outputs on ``data``."""
        yield from box_activations(model, box.name, data, batch_size=self.batch_size, device=self.device)

    def image(self, box: Box, dictionary: Dictionary) -> Diagram:
        """The dictionary in place of the box."""
        return dictionary.diagram(box.name, box.dom, box.cod)


def transcoder(model: Model, box: str, data: Any, width: int, k: int | None = None, **kwargs: Any) -> Model:
    """``model`` with box ``box`` replaced by a transcoder of ``width`` features (TopK ``k``, or ReLU+L1
    without ``k``), trained on ``data``; ``kwargs`` go to :class:`Transcoder`."""
    p = Transcoder(data, [box], widths=[width], ks=[k or 1], kind="topk" if k else "relu", **kwargs)
    return p.apply(model, p.candidates(model)[0])
