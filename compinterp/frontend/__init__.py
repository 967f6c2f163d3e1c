"""Front ends: import networks written in other libraries as diagrams of our boxes."""

from compinterp.frontend.fx import from_torch
from compinterp.frontend.hf import from_hf
from compinterp.frontend.tl import from_transformer_lens

__all__ = ["from_hf", "from_torch", "from_transformer_lens"]
