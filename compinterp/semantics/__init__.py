"""Semantics: functors from diagrams to computations (torch functions, later tensors)."""

from compinterp.semantics.functor import Interpreter, Plan, Step, TorchFunctor, compile_plan
from compinterp.semantics.init import init_params
from compinterp.semantics.inputs import inputs
from compinterp.semantics.kernels import POINTWISE

__all__ = ["POINTWISE", "Interpreter", "Plan", "Step", "TorchFunctor", "compile_plan", "init_params", "inputs"]
