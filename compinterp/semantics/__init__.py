"""Semantics: functors from diagrams to computations (torch functions, later tensors)."""

from compinterp.semantics.functor import Plan, Step, TorchFunctor, compile
from compinterp.semantics.init import init_params
from compinterp.semantics.kernels import POINTWISE

__all__ = ["POINTWISE", "Plan", "Step", "TorchFunctor", "compile", "init_params"]
