"""The ``bilinear_ae`` pass: quadratic features ``z_f = (l_f . x + l0_f)(r_f . x + r0_f)`` of a box's output, decoded linearly.

>>> import torch
>>> threads = torch.get_num_threads(); torch.set_num_threads(1)  # small kernels: one thread
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Linear
>>> x = Space("x", 6)
>>> model = Model(Linear("f", x, x), seed=0)
>>> p = BilinearAE(torch.randn(512, 6), boxes=["f"], widths=[8], ks=[8], steps=50, progress=False)
>>> refined = p.apply(model, p.candidates(model)[0])
>>> [box.kind for box in refined.diagram.boxes]
['Linear', 'Copy', 'Linear', 'Linear', 'Mul', 'Linear']
>>> torch.set_num_threads(threads)
"""

from __future__ import annotations

from typing import Any

from compinterp.model import Model
from compinterp.refinement.dictionary.base import DictionaryPass


class BilinearAE(DictionaryPass):
    """Bilinear autoencoders on box outputs: quadratic latents, the ``k`` of largest magnitude kept."""

    name = "bilinear_ae"
    kind = "bilinear"


def bilinear_ae(model: Model, box: str, data: Any, width: int, k: int | None = None, **kwargs: Any) -> Model:
    """``model`` with a bilinear autoencoder of ``width`` quadratic features (``k`` kept, default all)
    on the output of ``box``, trained on ``data``; ``kwargs`` go to :class:`BilinearAE`."""
    p = BilinearAE(data, [box], widths=[width], ks=[k or width], **kwargs)
    return p.apply(model, p.candidates(model)[0])
