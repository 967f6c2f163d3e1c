"""Comparing two models: :func:`exact_compare` and :func:`exact_report`, on a Gaussian measure or
uniform tokens, with a Monte-Carlo estimate past the exact limits."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch

from compinterp.errors import InputError
from compinterp.faithfulness.exact.closure import closure_moments, closure_note
from compinterp.faithfulness.exact.measures import (F64, MAX_DEPTH, ExactError, as_net, cosine, gaussian_moments,
                                                    gaussian_nets, same_spaces, whitening)
from compinterp.faithfulness.report import FaithfulnessReport, Metrics
from compinterp.semantics.tensor import NotPolynomialError, PolyNet, why_not_polynomial

MAX_TOKEN_TUPLES = 2 ** 20
"""Most token tuples averaged by enumeration; beyond, a Monte-Carlo estimate (and ``exact=False``)."""
MC_SAMPLES = 2 ** 17
"""Samples of the Monte-Carlo estimate used where the exact path is out of reach."""


@dataclass(frozen=True)
class ExactResult:
    """How close ``other`` is to ``model`` on a stated input measure, computed from the weights.

    ``mse = E||f - g||^2``, ``rel_l2 = sqrt(mse / E||f||^2)``, ``fvu = mse / sum_c Var f_c``,
    ``faithfulness = 1 - fvu``, ``cosine = E[f . g] / sqrt(E||f||^2 E||g||^2)`` (the cosine of
    the two functions in ``L2`` of the measure, not a mean of per-input cosines). Per-output
    values list the output dimensions of all output wires in order (``outputs`` names them).
    ``exact`` is ``False`` only when a Monte-Carlo estimate stood in; ``note`` says so.
    """

    rel_l2: float
    fvu: float
    faithfulness: float
    cosine: float
    mse: float
    outputs: tuple[str, ...]
    per_output_fvu: tuple[float, ...]
    per_output_rel_l2: tuple[float, ...]
    measure: str
    exact: bool
    note: str

    def to_json(self) -> dict[str, Any]:
        """The result as JSON (``inf`` written as ``null``)."""
        def num(v: float) -> float | None:
            return v if math.isfinite(v) else None
        return {"exact": self.exact, "measure": self.measure, "note": self.note,
                "end_to_end": {"faithfulness": num(self.faithfulness), "fvu": num(self.fvu),
                               "rel_l2": num(self.rel_l2), "cosine": num(self.cosine), "mse": num(self.mse)},
                "per_output": [{"output": o, "fvu": num(f), "rel_l2": num(r)}
                               for o, f, r in zip(self.outputs, self.per_output_fvu, self.per_output_rel_l2)]}

    def __str__(self) -> str:
        head = "exact" if self.exact else "estimated"
        return (f"{head} comparison under {self.measure}: faithfulness {self.faithfulness:.6g}, "
                f"FVU {self.fvu:.3g}, rel. L2 {self.rel_l2:.3g}, cosine {self.cosine:.6g}"
                + (f"\n{self.note}" if self.note else ""))


def exact_compare(model: Any, other: Any, *, mean: Any = None, cov: Any = None, samples: int = MC_SAMPLES,
                  measure: str | None = None, closure: bool = False) -> ExactResult:
    """Compare two polynomial models (or PolyNets) with the same spaces, exactly, without data.

    Inputs are ``N(mean, cov)`` (standard normal by default; estimate both from data with
    :func:`fit_gaussian` for a data-aware check), or, when the inputs are token ids feeding
    ``Embed`` boxes, uniform over all tokens (and token tuples). Past the exact limits
    (more than :data:`MAX_DEPTH` stages, more than :data:`MAX_TOKEN_TUPLES` token tuples)
    a Monte-Carlo estimate from ``samples`` inputs stands in, with ``exact=False`` and a note; past
    :data:`MAX_DEPTH` stages, ``closure=True`` takes the Gaussian closure instead
    (:mod:`~compinterp.faithfulness.exact.closure`: faster, but biased and without an error bar; see
    ``docs/exact.md`` for its measured error and why the checker keeps Monte Carlo).
    ``measure`` names the Gaussian in the result (default ``N(0, I)``, or ``N(mean, cov)``).
    Raises :class:`NotPolynomialError` naming the first non-polynomial box.
    """
    for m in (model, other):
        reason = why_not_polynomial(m) if hasattr(m, "diagram") else None
        if reason is not None:
            raise NotPolynomialError(f"no exact comparison: {reason}")
    f, g = as_net(model), as_net(other)
    same_spaces(f, g)
    outputs = tuple(f"{w.name}[{i}]" for w in f.cod.wires for i in range(w.dim))
    tokens = [a or b for a, b in zip(f.tokens, g.tokens)]
    if any(tokens):
        if not all(tokens):
            real = [w.name for w, t in zip(f.dom.wires, tokens) if not t]
            raise InputError(f"inputs {', '.join(real)} are real-valued while others are token ids; "
                             "an exact measure for mixed inputs is not implemented")
        if mean is not None or cov is not None:
            raise InputError("mean and cov describe real-valued inputs, but these inputs are token ids")
        moments, exact, note = _token_moments(f, g, samples)
        measure = "uniform tokens"
    else:
        measure = measure or ("N(0, I)" if mean is None and cov is None else "N(mean, cov)")
        if max(f.depth, g.depth) <= MAX_DEPTH:
            if model is other:
                (ff,), mf = gaussian_moments([f], [(0, 0)], mean, cov)
                moments = (ff, ff, ff, mf)
            else:
                (ff, fg, gg), mf = gaussian_moments([f, g], [(0, 0), (0, 1), (1, 1)], mean, cov)
                moments = (ff, fg, gg, mf)
            exact, note = True, "nothing approximated (Isserlis/Wick moments in float64)"
        elif closure:
            moments, exact, note = closure_moments(*gaussian_nets([f, g], mean, cov)), False, closure_note(f, g)
        else:
            C = whitening(f.in_dim, mean, cov, f.dom, torch.device("cpu"))

            def draw(gen: torch.Generator, n: int) -> torch.Tensor:
                z = torch.randn(n, f.in_dim, dtype=F64, generator=gen)
                return (torch.cat([torch.ones(n, 1, dtype=F64), z], 1) @ C.T).to(f.out.device)

            moments, se = _sampled(f, g, draw, samples)
            exact = False
            note = (f"degree {max(f.degree, g.degree)} is past the exact limit (degree {2 ** MAX_DEPTH}): "
                    f"Monte-Carlo estimate from {samples} samples, relative standard error of mse {se:.2g}")
    return _result(moments, outputs, measure, exact, note)


PairMoments = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""Per output ``c``: ``E f_c^2``, ``E f_c g_c``, ``E g_c^2``, ``E f_c``."""


def _token_moments(f: PolyNet, g: PolyNet, samples: int) -> tuple[PairMoments, bool, str]:
    """Moments under the uniform measure on token tuples: enumerated if there are few enough."""
    vocab = list(f.dom.dims)
    total = math.prod(vocab)
    offsets = list(itertools.accumulate([1, *vocab[:-1]]))

    def onehot(ids: torch.Tensor) -> torch.Tensor:
        rows = torch.zeros(ids.shape[0], f.in_dim + 1, dtype=F64)
        rows[:, 0] = 1
        rows.scatter_(1, ids + torch.tensor(offsets), 1.0)
        return rows.to(f.out.device)

    if total <= MAX_TOKEN_TUPLES:
        sums = [f.out.new_zeros(f.out.shape[0]) for _ in range(4)]
        for start in range(0, total, 2 ** 14):
            flat = torch.arange(start, min(start + 2 ** 14, total))
            ids = torch.stack(torch.unravel_index(flat, tuple(vocab)), 1) if vocab else flat[:, None]
            _accumulate(sums, f, g, onehot(ids))
        note = f"nothing approximated (exact average over all {total} token tuples)"
        return tuple(s / total for s in sums), True, note

    def draw(gen: torch.Generator, n: int) -> torch.Tensor:
        return onehot(torch.stack([torch.randint(v, (n,), generator=gen) for v in vocab], 1))

    moments, se = _sampled(f, g, draw, samples)
    note = (f"{total} token tuples are too many to enumerate (limit {MAX_TOKEN_TUPLES}): Monte-Carlo estimate "
            f"from {samples} uniform samples, relative standard error of mse {se:.2g}")
    return moments, False, note


def _accumulate(sums: list[torch.Tensor], f: PolyNet, g: PolyNet, padded: torch.Tensor) -> torch.Tensor:
    """Add one batch to the sums of ``f^2, f g, g^2, f``; the per-row squared errors."""
    a, b = f.apply(padded), g.apply(padded)
    for s, v in zip(sums, (a * a, a * b, b * b, a)):
        s += v.sum(0)
    return (a - b).square().sum(1)


def _sampled(f: PolyNet, g: PolyNet, draw: Any, n: int) -> tuple[PairMoments, float]:
    """Monte-Carlo moments from ``n`` padded samples made by ``draw``; the relative standard error of mse."""
    gen = torch.Generator().manual_seed(0)
    sums = [f.out.new_zeros(f.out.shape[0]) for _ in range(4)]
    err = f.out.new_zeros(2)
    for start in range(0, n, 2 ** 13):
        e = _accumulate(sums, f, g, draw(gen, min(2 ** 13, n - start)))
        err += torch.stack([e.sum(), e.square().sum()])
    mean = err[0] / n
    sd = (err[1] / n - mean ** 2).clamp_min(0).sqrt()
    se = (sd / math.sqrt(n) / mean).item() if mean > 0 else 0.0
    return tuple(s / n for s in sums), se


def _ratio(num: float, den: float) -> float:
    """``num / den`` with ``0/0 = 0`` and ``x/0 = inf``."""
    if den > 0:
        return num / den
    return 0.0 if num <= 0 else math.inf


def _result(moments: PairMoments, outputs: tuple[str, ...], measure: str, exact: bool, note: str) -> ExactResult:
    """The metrics from the per-output moments (negative round-off clipped to zero)."""
    ff, fg, gg, mf = moments
    mse = (ff - 2 * fg + gg).clamp_min(0)
    var = (ff - mf ** 2).clamp_min(0)
    var = torch.where(var <= 1e-12 * ff, torch.zeros_like(var), var)
    total_mse, total_var, total_ff = mse.sum().item(), var.sum().item(), ff.sum().item()
    fvu = _ratio(total_mse, total_var)
    return ExactResult(
        rel_l2=math.sqrt(_ratio(total_mse, total_ff)), fvu=fvu, faithfulness=1 - fvu,
        cosine=cosine(fg.sum().item(), total_ff, gg.sum().item()), mse=total_mse, outputs=outputs,
        per_output_fvu=tuple(_ratio(e, v) for e, v in zip(mse.tolist(), var.tolist())),
        per_output_rel_l2=tuple(math.sqrt(_ratio(e, v)) for e, v in zip(mse.tolist(), ff.tolist())),
        measure=measure, exact=exact, note=note)


def exact_report(model: Any, explanation: Any, *, mean: Any = None, cov: Any = None,
                 measure: str | None = None) -> FaithfulnessReport:
    """:func:`exact_compare` of ``model`` with a second model, or with an interpretation's
    explanation when its maps on the input and output wires are identities, as a
    :class:`~compinterp.faithfulness.FaithfulnessReport` marked ``exact`` (end to end only).

    Its ``cosine`` is the cosine of the two functions in ``L2`` of the input measure, and
    ``note`` (and ``data``) name the measure (``measure``, as :func:`exact_compare` takes it); ``note`` also
    says what was approximated.
    """
    from compinterp.interpretation import Interpretation
    from compinterp.interpretation.maps import Identity

    other = explanation
    if isinstance(explanation, Interpretation):
        for wire in (*model.dom.wires, *model.cod.wires):
            if not isinstance(explanation.map_of(wire), Identity):
                raise ExactError(f"no exact check: wire {wire.name} is mapped by {explanation.map_of(wire)!r}, "
                                 "and the exact path compares end to end, so it needs identity maps on "
                                 "the model's input and output wires; check on data instead")
        other = explanation.explanation
    result = exact_compare(model, other, mean=mean, cov=cov, measure=measure)
    metrics = Metrics(fvu=result.fvu, rel_l2=result.rel_l2, cosine=result.cosine, n=0)
    return FaithfulnessReport(metrics, (), samples=0, exact=result.exact,
                              note=f"{result.measure}; {result.note}", data=result.measure)
