"""Streaming sums for the faithfulness metrics: float64, one flat buffer each, summable across ranks.

Only sums are kept (counts, sums and sums of squares per output dimension, summed
errors and cosines), so a metric is the same whatever the batches, and the
buffers of several processes add up to the buffer of one.

>>> import torch
>>> acc = Moments([2], torch.device("cpu"))
>>> y = torch.tensor([[1.0, 0.0], [3.0, 0.0]])
>>> acc.update([y], [y + torch.tensor([0.0, 1.0])])
>>> m = acc.metrics()
>>> m.fvu, round(m.rel_l2 ** 2, 12), m.n
(1.0, 0.2, 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F

from compinterp.errors import InputError
from compinterp.faithfulness.report import Metrics

F64 = torch.float64

IGNORE = -100
"""A label that scores nothing (cross-entropy's ``ignore_index``): a position without a target."""


class Moments:
    """Sums comparing model outputs ``y_M`` with explanation outputs ``y_E`` on wires of dimensions ``dims``.

    Per wire: ``[rows, sum ||y_M - y_E||^2, sum y_M (per dim), sum y_M^2 (per dim)]``; then
    ``[vectors, sum cos]``, where a vector joins the wires' rows when they have as many.
    The per-dimension sums (whose difference is the variance) are taken in float64;
    errors and cosines are reduced per batch in the outputs' own dtype, then added in float64.
    """

    max_numbers = 1 << 27
    """The most numbers the sums may hold (1 GiB of float64): output wires wider than that are refused."""

    def __init__(self, dims: Sequence[int], device: torch.device) -> None:
        self.dims = tuple(dims)
        if sum(2 + 2 * d for d in self.dims) > self.max_numbers:
            raise InputError(f"output wires of dimensions {', '.join(f'{d:,}' for d in self.dims)} are too wide to "
                             f"compare: their sums would hold over {self.max_numbers:,} numbers")
        self.buffer = torch.zeros(sum(2 + 2 * d for d in self.dims) + 2, dtype=F64, device=device)

    def _wires(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Views of each wire's ``(rows, err, sum, sum of squares)``."""
        views, at = [], 0
        for d in self.dims:
            b = self.buffer
            views.append((b[at:at + 1], b[at + 1:at + 2], b[at + 2:at + 2 + d], b[at + 2 + d:at + 2 + 2 * d]))
            at += 2 + 2 * d
        return views

    def update(self, model: Sequence[torch.Tensor], explanation: Sequence[torch.Tensor]) -> None:
        """Add one batch: ``model[i]`` and ``explanation[i]`` hold wire ``i``, shape ``(..., dims[i])``."""
        if not self.dims:
            return
        dots, mms, ees = [], [], []
        for (rows, err, s1, s2), m, e, d in zip(self._wires(), model, explanation, self.dims):
            m, e = m.reshape(-1, d), e.reshape(-1, d)
            m64 = m.to(F64)
            rows += m.shape[0]
            s1 += m64.sum(0)
            s2 += m64.square().sum(0)
            err += (m - e).square().sum().to(F64)
            dots.append((m * e).sum(1).to(F64))
            mms.append(m.square().sum(1).to(F64))
            ees.append(e.square().sum(1).to(F64))
        if len({len(x) for x in dots}) == 1:
            dot, mm, ee = (torch.stack(x).sum(0) for x in (dots, mms, ees))
        else:
            dot, mm, ee = (torch.cat(x) for x in (dots, mms, ees))
        norms = (mm * ee).sqrt()
        cos = torch.where(norms > 0, dot / norms.clamp_min(1e-300), ((mm == 0) & (ee == 0)).to(F64))
        self.buffer[-2] += cos.numel()
        self.buffer[-1] += cos.sum()

    def metrics(self) -> Metrics:
        """FVU, relative L2 error and mean cosine from the sums."""
        err = var = total = 0.0
        for rows, e, s1, s2 in self._wires():
            n = rows.item()
            err += e.item()
            total += s2.sum().item()
            var += (s2 - s1.square() / n).sum().item() if n else 0.0
        vectors = int(self.buffer[-2].item())
        if var <= 1e-12 * total:
            var = 0.0
        return Metrics(fvu=_ratio(err, var), rel_l2=math.sqrt(_ratio(err, total)),
                       cosine=self.buffer[-1].item() / vectors if vectors else 1.0, n=vectors)

    def mean(self, wire: int = 0) -> torch.Tensor:
        """The mean of ``y_M`` on wire ``wire``."""
        rows, _, s1, _ = self._wires()[wire]
        return s1 / rows


class LogitMoments:
    """Sums for logit outputs over ``classes``: ``[vectors, KL, top-1 hits, sum p log p, CE_M, CE_E, labelled,
    hits_M, hits_E, sum p_M (per class), label counts (per class)]``; ``hits`` count argmaxes equal to the label."""

    def __init__(self, classes: int, device: torch.device) -> None:
        self.classes = classes
        self.buffer = torch.zeros(9 + 2 * classes, dtype=F64, device=device)

    def update(self, model: torch.Tensor, explanation: torch.Tensor, labels: torch.Tensor | None) -> None:
        """Add one batch of logits ``(..., classes)`` and optional integer labels ``(...)``; a label
        :data:`IGNORE` scores nothing."""
        c, b = self.classes, self.buffer
        lm = F.log_softmax(model.reshape(-1, c).to(F64), -1)
        le = F.log_softmax(explanation.reshape(-1, c).to(F64), -1)
        pm = lm.exp()
        b[0] += lm.shape[0]
        b[1] += (pm * (lm - le)).sum()
        b[2] += (lm.argmax(-1) == le.argmax(-1)).sum()
        b[3] += (pm * lm).sum()
        b[9:9 + c] += pm.sum(0)
        if labels is not None:
            y = labels.reshape(-1).long()
            kept = y != IGNORE
            y, lm, le = y[kept].unsqueeze(1), lm[kept], le[kept]
            b[4] -= lm.gather(1, y).sum()
            b[5] -= le.gather(1, y).sum()
            b[6] += y.shape[0]
            b[7] += (lm.argmax(-1) == y[:, 0]).sum()
            b[8] += (le.argmax(-1) == y[:, 0]).sum()
            b[9 + c:] += torch.bincount(y.flatten(), minlength=c).to(F64)

    def fill(self, metrics: Metrics, mean_logits: torch.Tensor) -> Metrics:
        """``metrics`` with the logit metrics added; the ablated prediction is ``softmax(mean_logits)``."""
        c, b, n = self.classes, self.buffer, self.vectors
        log_q = F.log_softmax(mean_logits.to(F64), -1)
        kl = b[1].item() / n
        kl_ablated = b[3].item() / n - (b[9:9 + c] / n * log_q).sum().item()
        fields: dict[str, float | None] = {"kl": kl, "top1": b[2].item() / n}
        labelled = b[6].item()
        if labelled:
            ce_m, ce_e = b[4].item() / labelled, b[5].item() / labelled
            ce_a = -(b[9 + c:] / labelled * log_q).sum().item()
            fields |= {"ce_model": ce_m, "ce_explanation": ce_e, "ce_ablated": ce_a,
                       "loss_recovered": (ce_a - ce_e) / (ce_a - ce_m) if ce_a != ce_m else None,
                       "accuracy_model": b[7].item() / labelled, "accuracy_explanation": b[8].item() / labelled}
        else:
            fields["loss_recovered"] = 1.0 - kl / kl_ablated if kl_ablated > 0 else None
        return replace(metrics, **fields)

    @property
    def vectors(self) -> int:
        """How many logit vectors were added."""
        return int(self.buffer[0].item())

    @property
    def labelled(self) -> int:
        """How many vectors came with a label (not :data:`IGNORE`)."""
        return int(self.buffer[6].item())


def _ratio(num: float, den: float) -> float:
    """``num / den``, with ``0/0 = 0`` and ``x/0 = inf``."""
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.inf
