"""Front ends: import networks written in other libraries as diagrams of our boxes."""

from compinterp.frontend.fx import from_torch

__all__ = ["from_torch"]
