"""A reference model with its outputs kept, so that many candidates are compared with it cheaply.

Comparing a candidate costs one forward pass of the candidate on the stored inputs
(the reference ran once, when the :class:`Reference` was made), or, with
``data="exact"``, one exact comparison from the weights. The metrics are those of
:func:`compinterp.check` end to end (the same streaming sums).

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Bilinear
>>> x, y = Space("x", 4), Space("y", 2)
>>> model = Model(Bilinear("mlp", x, y, hidden=6), seed=0)
>>> reference = Reference(model, torch.randn(100, 4))
>>> reference.compare(model).fvu, reference.samples, reference.exact
(0.0, 100, False)
>>> Reference(model, "exact").compare(Model(Bilinear("mlp", x, y, hidden=6), seed=1)).faithfulness < 0.5
True
"""

from __future__ import annotations

from typing import Any

import torch

from compinterp.complexity.sparse import Code, measure_codes
from compinterp.data import as_source, fit, placed, placement
from compinterp.errors import CompositionError, InputError
from compinterp.faithfulness.check import GIVE_DATA, checked_labels
from compinterp.faithfulness.exact import exact_compare, why_not_polynomial
from compinterp.faithfulness.exact.closed_form import MAX_QUADRATIC, Quadratic, form_inner, quadratic, truncation_mse
from compinterp.faithfulness.exact.compare import _result
from compinterp.faithfulness.metrics import LogitMoments, Moments
from compinterp.faithfulness.report import Metrics
from compinterp.model import Model
from compinterp.semantics import inputs
from compinterp.semantics.tensor import NotPolynomialError, PolyNet, tensor_semantics


class Reference:
    """The model every candidate is compared with, and the data (or ``"exact"``) to compare on.

    With data, the inputs and the reference's outputs are read once and kept on
    ``device`` (all of them: the data must fit in memory). With ``"exact"``, every
    box of the reference (and of each candidate) must be polynomial, and the
    reference's tensor semantics are built once. With ``logits`` (the index of the output wire that holds
    logits), the data's labels are kept too and :meth:`compare` adds the logit metrics (KL, top-1, loss
    recovered) as :func:`compinterp.check` computes them.
    """

    def __init__(self, model: Model, data: Any, *, batch_size: int = 256,
                 device: str | torch.device | None = None, logits: int | None = None) -> None:
        if not isinstance(model, Model):
            raise InputError(f"a reference must be a compinterp Model, got {type(model).__name__}")
        self.model = model
        self.exact = isinstance(data, str) and data == "exact"
        self.device, self.dtype = placement(model, device)
        self.batches: list[tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]] = []
        self.net: PolyNet | None = None
        self.own: Quadratic | None = None
        self.samples = 0
        self.logits = logits
        self.labels: list[torch.Tensor | None] = []
        """Each stored batch's labels (with ``logits``; ``None`` for a batch without)."""
        if self.exact and logits is not None:
            raise InputError("a loss-recovered bar needs data (inputs, with labels when there are): the exact measure "
                             "has no labels; give data (--data), or use metric='faithfulness' (--metric faithfulness)")
        if self.exact:
            reason = why_not_polynomial(model)
            if reason is not None:
                raise NotPolynomialError(f"no exact comparison with this model: {reason}; {GIVE_DATA}")
            self.net = tensor_semantics(model, torch.float64)
            self.own = self.forms(model)
            return
        model.to(self.device)
        n, wires = len(model.dom), inputs(model.plan)
        with torch.inference_mode():
            for k, batch in enumerate(as_source(data).batches(batch_size, wires)):
                fit(batch, wires, k)
                xs = placed(batch, n, self.device, self.dtype)
                if xs[0].shape[0] == 0:
                    continue
                ys = _outputs(model(*xs))
                self.batches.append((xs, ys))
                if logits is not None:
                    self.labels.append(checked_labels(batch[n].to(self.device) if len(batch) > n else None,
                                                      ys[logits], k))
                self.samples += xs[0].shape[0]
        if logits is not None and any(y is None for y in self.labels) and any(y is not None for y in self.labels):
            raise InputError("labels came with some batches of the data but not all: give labels with every batch "
                             "or with none")
        if self.samples == 0:
            raise InputError("the data holds no samples: nothing to compare on")

    def codes(self, candidate: Model) -> tuple[Code, ...]:
        """The codes of ``candidate``'s sparse layers measured on the stored inputs (none when exact:
        there are no examples to code)."""
        return () if self.exact else measure_codes(candidate.to(self.device), (xs for xs, _ in self.batches))

    def compare(self, candidate: Model, forms: Quadratic | None = None) -> Metrics:
        """End-to-end metrics of ``candidate`` against the reference (``n`` is 0 when exact); ``forms``: the
        candidate's :meth:`forms`, when already known."""
        if candidate.dom != self.model.dom or candidate.cod != self.model.cod:
            raise CompositionError(f"cannot compare a candidate ({candidate.dom} -> {candidate.cod}) with the "
                                   f"reference ({self.model.dom} -> {self.model.cod}): a refinement must keep the "
                                   "input and output spaces")
        if self.exact:
            if forms is None and self.own is not None:
                forms = self.forms(candidate)
            if forms is None or self.own is None:
                result = exact_compare(self.net, candidate)
            else:                               # the reference's forms are kept: one stage, in closed form
                own = self.own
                moments = (form_inner(own, own), form_inner(own, forms), form_inner(forms, forms), own[0])
                result = _result(moments, (), "N(0, I)", True, "")
            return Metrics(fvu=result.fvu, rel_l2=result.rel_l2, cosine=result.cosine, n=0)
        candidate.to(self.device)
        moments = Moments(self.model.cod.dims, self.device)
        out = self.logits
        logit = None if out is None else LogitMoments(self.model.cod.dims[out], self.device)
        with torch.inference_mode():
            for k, (xs, ys) in enumerate(self.batches):
                theirs = _outputs(candidate(*xs))
                moments.update(ys, theirs)
                if logit is not None:
                    logit.update(ys[out], theirs[out], self.labels[k])
        return moments.metrics() if logit is None else logit.fill(moments.metrics(), moments.mean(out))


    def verify(self, candidate: Model) -> Metrics:
        """:meth:`compare` as :func:`compinterp.check` computes it, never by the closed forms (which agree to
        round-off): for the number a search reports."""
        if not self.exact:
            return self.compare(candidate)
        result = exact_compare(self.net, candidate)
        return Metrics(fvu=result.fvu, rel_l2=result.rel_l2, cosine=result.cosine, n=0)

    def forms(self, model: Model) -> Quadratic | None:
        """The quadratic forms of ``model``'s outputs under the exact measure ``N(0, I)``, when it is a network
        of at most one Hadamard stage on real inputs (else ``None``: no closed form)."""
        if not self.exact:
            return None
        if model is self.model and self.own is not None:
            return self.own
        net = self.net if model is self.model else tensor_semantics(model, torch.float64)
        if net.depth > 1 or any(net.tokens) or net.out.shape[0] * (net.in_dim + 1) ** 2 > MAX_QUADRATIC:
            return None
        return quadratic(net)

    def truncated(self, parent: Quadratic, values: torch.Tensor, vectors: torch.Tensor, directions: torch.Tensor,
                  keep: list[torch.Tensor]) -> list[Metrics]:
        """End-to-end metrics, in closed form, of the candidates that drop eigencomponents from a one-stage
        ``parent`` (its :meth:`forms`): the components ``keep[i]`` does not keep (see
        :func:`~compinterp.faithfulness.exact.closed_form.truncation_mse`); equal to :meth:`compare` of the
        rewritten models, without building their semantics."""
        if self.own is None:
            raise InputError("closed-form scores need an exact reference of at most one Hadamard stage")
        delta = (self.own[0] - parent[0], self.own[1] - parent[1], self.own[2] - parent[2])
        ff = form_inner(self.own, self.own)
        var = (ff - self.own[0] ** 2).clamp_min(0)
        total = torch.where(var <= 1e-12 * ff, torch.zeros_like(var), var).sum().item()
        norm = ff.sum().item()
        out = []
        for mse in truncation_mse(delta, values, vectors, directions, keep):
            mse = max(mse, 0.0)
            fvu = mse / total if total > 0 else (0.0 if mse <= 0 else float("inf"))
            out.append(Metrics(fvu=fvu, rel_l2=(mse / norm) ** 0.5 if norm > 0 else 0.0, cosine=float("nan"), n=0))
        return out


def _outputs(y: torch.Tensor | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """A model's outputs as a list, one tensor per output wire."""
    return list(y) if isinstance(y, tuple) else [y]
