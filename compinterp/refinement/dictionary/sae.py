"""The ``sae`` pass: a sparse autoencoder on a box's output wire, ``A -> enc -> features -> dec -> A``.

>>> import torch
>>> threads = torch.get_num_threads(); torch.set_num_threads(1)  # small kernels: one thread
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Linear
>>> x, y = Space("x", 6), Space("y", 2)
>>> model = Model(Linear("f", x, x) >> Linear("out", x, y), seed=0)
>>> p = SAE(torch.randn(512, 6), boxes=["f"], widths=[12], ks=[3], steps=50, progress=False)
>>> [str(r) for r in p.candidates(model)]
['sae(f, width=12, k=3)']
>>> refined = p.apply(model, p.candidates(model)[0])
>>> [box.name for box in refined.diagram.boxes]
['f', 'f_enc', 'f_relu', 'f_topk', 'f_dec', 'out']
>>> str(refined.diagram.boxes[1].cod)
'features:12'
>>> torch.set_num_threads(threads)
"""

from __future__ import annotations

from typing import Any

from compinterp.model import Model
from compinterp.refinement.dictionary.base import DictionaryPass


class SAE(DictionaryPass):
    """Sparse autoencoders (``kind="topk"``, default, ``"batchtopk"``, or ``"relu"`` with an L1 penalty) on box
    outputs."""

    name = "sae"
    kind = "topk"


def sae(model: Model, box: str, data: Any, width: int, k: int | None = None, **kwargs: Any) -> Model:
    """``model`` with a sparse autoencoder of ``width`` features (TopK ``k``, or ReLU+L1 without ``k``)
    on the output of ``box``, trained on ``data``; ``kwargs`` go to :class:`SAE`."""
    kind = kwargs.pop("kind", "topk" if k else "relu")
    p = SAE(data, [box], widths=[width], ks=[k or 1], kind=kind, **kwargs)
    return p.apply(model, p.candidates(model)[0])
