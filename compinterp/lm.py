"""The induction circuit of a language model, found from attention patterns and checked as an interpretation.

On a random sequence of length ``L`` repeated twice, a *previous-token head* (layer 0) writes
each position's previous token into the residual stream, and an *induction head* (layer 1)
attends from query ``i >= L`` to key ``i - L + 1``, the position right after the earlier copy of
the current token, and copies that token out. :func:`find_heads` scores every head on both
roles from :func:`compinterp.attention_patterns`; :func:`induction_hypothesis` states the circuit
as an interpretation (those heads follow the fixed patterns, every other head of their boxes is
mean-ablated); :func:`explain_induction` checks it, and a control with the wrong heads, per box
and end to end with :func:`compinterp.check`.

>>> induction_pattern(2)
[[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from compinterp.errors import BoxError
from compinterp.faithfulness import FaithfulnessReport, check
from compinterp.interpretation import Interpretation
from compinterp.interpretation.hypotheses import heads_follow
from compinterp.interventions import attention_patterns
from compinterp.model import Model
from compinterp.tasks import text

Head = tuple[str, int]
"""An attention head: ``(attention box, head index)``."""


def induction_pattern(length: int) -> list[list[float]]:
    """The induction head's pattern on a sequence of ``length`` tokens repeated twice (``2 length``
    square): query ``i >= length`` attends to key ``i - length + 1``; a query ``0 < i < length`` of the
    first copy has nothing to copy and attends evenly to the keys ``1..i`` that have a previous token
    (query 0 to itself)."""
    size = 2 * length
    rows = []
    for i in range(size):
        row = [0.0] * size
        if i >= length:
            row[i - length + 1] = 1.0
        elif i == 0:
            row[0] = 1.0
        else:
            row[1:i + 1] = [1.0 / i] * i
        rows.append(row)
    return rows


def head_scores(model: Model, data: tuple[torch.Tensor, ...], length: int) -> dict[str, dict[str, list[float]]]:
    """For every attention box, each head's mean attention to the previous token (queries ``i >= 1``)
    and to the induction target ``i - length + 1`` (queries ``i >= length``), on repeated sequences ``data``."""
    device = next(model.parameters()).device
    inputs = [x.to(device) for x in text.for_model(model, data)[:len(model.dom)]]
    queries = torch.arange(length, 2 * length)
    scores = {}
    for box in _attention_boxes(model):
        pattern = attention_patterns(model, *inputs, box=box).mean(0).cpu()      # heads, T, T
        steps = torch.arange(1, pattern.shape[-1])
        scores[box] = {"previous": pattern[:, steps, steps - 1].mean(-1).tolist(),
                       "induction": pattern[:, queries, queries - length + 1].mean(-1).tolist()}
    return scores


def find_heads(scores: Mapping[str, Mapping[str, list[float]]]) -> tuple[Head, Head]:
    """The previous-token head (best ``previous`` score in the first attention box) and the induction
    head (best ``induction`` score in a later box), from :func:`head_scores`."""
    boxes = list(scores)
    if len(boxes) < 2:
        raise BoxError(f"an induction circuit needs two attention boxes; the model has {', '.join(boxes) or 'none'}")
    previous = (boxes[0], _best(scores[boxes[0]]["previous"]))
    later = max(boxes[1:], key=lambda b: max(scores[b]["induction"]))
    return previous, (later, _best(scores[later]["induction"]))


def induction_hypothesis(model: Model, previous: Head, induction: Head, length: int, *,
                         data: Any = None, ablate_others: bool = True) -> Interpretation:
    """The induction circuit as an interpretation: head ``previous`` follows ``previous``, head
    ``induction`` follows :func:`induction_pattern`, and (``ablate_others``) every other head of those
    two boxes is replaced by its mean output over ``data`` (over examples and positions)."""
    fixed = {previous[0]: {previous[1]: "previous"}}
    fixed.setdefault(induction[0], {})[induction[1]] = induction_pattern(length)
    missing = [name for name in fixed if name not in model.boxes or not model.boxes[name].has_heads]
    if missing:
        raise BoxError(f"no attention box named {missing[0]!r}; the model's are {', '.join(_attention_boxes(model))}")
    return heads_follow(model, fixed, ablate_others=ablate_others, data=data)


@dataclass(frozen=True)
class InductionResult:
    """The induction explanation and its control, checked on repeated sequences."""

    scores: Mapping[str, Mapping[str, list[float]]]
    previous: Head
    induction: Head
    control: tuple[Head, Head]
    report: FaithfulnessReport
    control_report: FaithfulnessReport
    bits: Mapping[str, Mapping[str, float]]
    alone: FaithfulnessReport | None = None
    """The two heads' patterns fixed, every other head left as it is (a weaker claim than the circuit's)."""
    alone_control: FaithfulnessReport | None = None

    def to_json(self) -> dict[str, Any]:
        """The result as JSON."""
        return {"head_scores": self.scores, "previous_head": list(self.previous),
                "induction_head": list(self.induction), "control_heads": [list(h) for h in self.control],
                "explanation": self.report.to_json(), "control": self.control_report.to_json(), "bits": self.bits,
                **({"heads_alone": {"explanation": self.alone.to_json(), "control": self.alone_control.to_json()}}
                   if self.alone is not None and self.alone_control is not None else {})}

    def __str__(self) -> str:
        e, c = self.report.end_to_end, self.control_report.end_to_end
        return (f"previous-token head {self.previous[0]}.{self.previous[1]}, induction head "
                f"{self.induction[0]}.{self.induction[1]}: faithfulness {e.faithfulness:.3f} (loss recovered "
                f"{_fmt(e.loss_recovered)}); control {self.control[0][0]}.{self.control[0][1]} + "
                f"{self.control[1][0]}.{self.control[1][1]}: {c.faithfulness:.3f} "
                f"(loss recovered {_fmt(c.loss_recovered)})")


def explain_induction(model: Model, *, n: int = 64, length: int | None = None, seed: int = 2,
                      ablate_others: bool = True, alone: bool = False, progress: bool = False) -> InductionResult:
    """Find the two heads on repeated random sequences, then check the induction hypothesis and a
    control (the lowest-scoring head of each box in their place) on fresh sequences: per box, end to
    end, and the bits per byte of the model, explanation and control on each copy; ``alone``: also both
    with every other head left as it is (``InductionResult.alone``, ``alone_control``)."""
    alphabet, length = text.alphabet(model), length or text.context(model) // 2
    scores = head_scores(model, text.repeated(n, length, seed=seed, alphabet=alphabet), length)
    previous, induction = find_heads(scores)
    control = ((previous[0], _worst(scores[previous[0]]["previous"])),
               (induction[0], _worst(scores[induction[0]]["induction"])))
    data = text.repeated(n, length, seed=seed + 1, alphabet=alphabet)
    reports, bits = [], {"model": _copies(model, data, length)}
    inputs = text.for_model(model, data)
    for role, (p, i) in (("explanation", (previous, induction)), ("control", control)):
        interp = induction_hypothesis(model, p, i, length, data=inputs, ablate_others=ablate_others)
        reports.append(check(model, interp, inputs, batch_size=n, progress=progress))
        bits[role] = _copies(interp.explanation, data, length)
    if alone:
        reports += [check(model, induction_hypothesis(model, p, i, length, ablate_others=False), inputs, batch_size=n,
                          progress=progress) for p, i in ((previous, induction), control)]
    return InductionResult(scores, previous, induction, control, reports[0], reports[1], bits, *reports[2:])


def _copies(model: Model, data: tuple[torch.Tensor, ...], length: int) -> dict[str, float]:
    """Bits per byte on the first and second copy (each copy's first position not scored)."""
    per_position = text.bits_per_byte(model, data)
    return {"first": per_position[:length - 1].mean().item(),
            "second": per_position[length:2 * length - 1].mean().item()}


def _attention_boxes(model: Model) -> list[str]:
    return [name for name, box in model.boxes.items() if box.has_heads]


def _best(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def _worst(values: list[float]) -> int:
    return min(range(len(values)), key=values.__getitem__)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def byte_label(b: int) -> str:
    """A byte as a reader sees it: printable ASCII as itself, space as ``␣``, others escaped.

    >>> [byte_label(b) for b in (97, 32, 10, 200)]
    ['a', '␣', '\\\\n', '\\\\xc8']
    """
    if b == 32:
        return "␣"
    if 33 <= b < 127:
        return chr(b)
    return repr(bytes([b]))[2:-1]


def mlp_boxes(model: Model) -> list[str]:
    """The model's Bilinear boxes (its MLPs), in order."""
    return [name for name, box in model.boxes.items() if box.kind == "Bilinear"]


def alone(model: Model, box: str) -> Model:
    """Box ``box`` of ``model`` as a model of its own, with its parameters (for exact checks)."""
    return Model(model.boxes[box], {box: {k: v.detach().clone() for k, v in model.box_params(box).items()}})


def eigen_views(model: Model, box: str, k: int, *, norm: str, directions: int = 2, components: int = 4,
                top: int = 8) -> list[dict[str, Any]]:
    """What the top output directions of an eigen-layer ``box`` write and what their top eigenvectors read,
    as bytes along the direct path. ``box`` is made by ``eigen(..., mode="per_direction", k=k)``: its hidden
    units come ``k`` per output direction ``u_g``, largest ``|lambda|`` first (``L = R = V``,
    ``D[:, (g, m)] = u_g lambda_gm``). A direction goes through the final norm's weight and the
    unembedding (the bytes it promotes and suppresses); an eigenvector ``v`` meets each byte's embedding,
    RMS-normalised and scaled by Norm box ``norm``'s weight: the bytes ``t`` with the largest
    ``lambda (v . x_t)^2``."""
    p = {role: t.detach().double() for role, t in model.box_params(box).items()}
    V, D = p["L"], p["D"]
    unembed = model.box_params("unembed")["W"].detach().double()
    final = _norm_weight(model, "ln_final", unembed.shape[1])
    embed = model.box_params("embed")["W"].detach().double()
    read = embed / embed.square().mean(1, keepdim=True).sqrt() * _norm_weight(model, norm, embed.shape[1])
    views = []
    for g in range(min(directions, D.shape[1] // k)):
        columns = D[:, g * k:(g + 1) * k]
        u = columns[:, 0] / columns[:, 0].norm()
        lam = u @ columns
        order = (unembed @ (final * u)).argsort(descending=True)
        eigvecs = []
        for m in range(min(components, k)):
            contribution = lam[m] * (read @ V[g * k + m]).square()
            best = contribution.abs().argsort(descending=True)[:top]
            reads = [[byte_label(b), contribution[b].item()] for b in best.tolist()]
            eigvecs.append({"value": lam[m].item(), "reads": reads})
        views.append({"direction": g, "norm": lam.norm().item(),
                      "promotes": [byte_label(b) for b in order[:top].tolist()],
                      "suppresses": [byte_label(b) for b in order.flip(0)[:top].tolist()], "eigenvectors": eigvecs})
    return views


def _norm_weight(model: Model, name: str, d: int) -> torch.Tensor:
    """The weight of Norm box ``name`` (ones when it has none, or there is no such box)."""
    if name in model.boxes and "weight" in model.box_params(name):
        return model.box_params(name)["weight"].detach().double()
    return torch.ones(d, dtype=torch.float64)
