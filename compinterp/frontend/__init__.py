"""Front ends: import networks written in other libraries as diagrams of our boxes."""

from compinterp.frontend.fx import from_torch
from compinterp.frontend.hf import from_hf

__all__ = ["from_hf", "from_torch"]
