"""Exact, data-free faithfulness for polynomial diagrams, from the weights alone.

Two polynomial diagrams with the same input and output spaces are compared through
their tensor semantics (:mod:`compinterp.semantics.tensor`), never by sampling:

* the Frobenius inner product of their symmetrised coefficient tensors
  (:func:`frobenius_inner`, :func:`frobenius_cosine`);
* the functional inner product ``E_x[f_c(x) g_c(x)]`` for ``x ~ N(mean, cov)``
  (:func:`gaussian_inner`), by Isserlis/Wick moments (for networks of one Hadamard stage, in
  closed form on each output's quadratic form where that is cheaper);
* from these, relative L2 error, FVU and faithfulness (:func:`exact_compare`); for
  diagrams whose inputs are token ids (``Embed`` first), the measure is the uniform
  one over all tokens, averaged exactly; ``mean`` and ``cov`` fitted to data by
  :func:`fit_gaussian` or, streamed, :func:`fit_source` (what ``check(..., "exact", fit=data)`` uses);
* past two stages, a Monte-Carlo estimate, or with ``closure=True`` the Gaussian closure
  (:mod:`~compinterp.faithfulness.exact.closure`), both marked ``exact=False``.

The maths, with every formula a reader needs to check it, is in ``docs/exact.md``.

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Bilinear
>>> x, y = Space("x", 4), Space("y", 2)
>>> model = Model(Bilinear("mlp", x, y, hidden=6), seed=0)
>>> result = exact_compare(model, model)
>>> result.exact, result.fvu, round(result.cosine, 12)
(True, 0.0, 1.0)
>>> A = torch.tensor([[1.0, 2.0], [0.0, 3.0]])
>>> quad = Model(Bilinear("q", Space("x", 2), Space("y", 1), hidden=2),
...              {"q": {"L": A, "R": torch.eye(2), "D": torch.ones(1, 2)}})
>>> gaussian_inner(quad, quad)      # E[(x^T A x)^2] = tr(A)^2 + 2 ||A_sym||_F^2
tensor([40.], dtype=torch.float64)
"""

from __future__ import annotations

from compinterp.faithfulness.exact.closed_form import MAX_QUADRATIC
from compinterp.faithfulness.exact.compare import MAX_TOKEN_TUPLES, MC_SAMPLES, ExactResult, exact_compare, exact_report
from compinterp.faithfulness.exact.measures import (MAX_DEPTH, ExactError, GaussianFit, fit_gaussian, fit_source,
                                                    frobenius_cosine, frobenius_inner, frobenius_norm, gaussian_inner,
                                                    gaussian_mean)
from compinterp.semantics.tensor import NotPolynomialError, why_not_polynomial

__all__ = ["ExactError", "ExactResult", "GaussianFit", "NotPolynomialError", "exact_compare", "fit_gaussian",
           "fit_source", "frobenius_cosine", "frobenius_inner", "frobenius_norm", "gaussian_inner", "gaussian_mean",
           "why_not_polynomial"]
