"""The search for shorter explanations: sequences of rewrites scored by faithfulness and bits.

:func:`refine` explores sequences of rewrites (greedy, or a beam), scoring every
candidate against the *original* model (exactly from the weights when ``data="exact"``,
else on the search data) and by its description length; it keeps the Pareto frontier of
(bits, faithfulness) over every model it evaluated, and returns the shortest model that
keeps the faithfulness bar, quantised to the fewest bits that still keep it, checked once
more on held-out data when given (``test_data`` or ``holdout``). The strategy is written
out in ``docs/search.md``.

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Bilinear
>>> model = Model(Bilinear("mlp", Space("x", 8), Space("y", 3), hidden=16), seed=0)
>>> result = refine(model, 0.99, data="exact", passes=[], progress=False)
>>> [str(rewrite) for rewrite in result.history], result.faithfulness >= 0.99
(['quantise(*, bits=5)'], True)
>>> round(result.ratio, 1)
5.8
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from compinterp.complexity import Bits, Reference, description_length
from compinterp.complexity.length import diagram_length
from compinterp.complexity.parameters import WIDTHS
from compinterp.complexity.quantise import quantise as quantised, quantise_tensor
from compinterp.complexity.sparse import sparse_layers
from compinterp.data import Tensors, as_source
from compinterp.errors import InputError
from compinterp.faithfulness import check, default_data
from compinterp.faithfulness.exact.closed_form import Quadratic, form_inner
from compinterp.faithfulness.report import Metrics
from compinterp.model import Model
from compinterp.refinement.base import Pass, Rewrite
from compinterp.refinement.frontier import Frontier, Point, RefineResult

METRICS = ("faithfulness", "loss_recovered")
"""What a search's bar can be on (:func:`refine`'s ``metric``)."""
QUANTISE = "quantise"
"""The name of the last step of a refinement: every parameter quantised to one width."""
GUESS = 15
"""A costly group is first tried at its harshest rewrite whose start (scored in closed form) has at most this many
times the FVU the bar allows: CP fits cut their eigen start's FVU by about 10-20x at the rank a search chooses
(digits bilinear MLPs, hidden 64-4096). Only the order of the fits depends on it, not what is found."""


def refine(model: Model, min_faithfulness: float = 0.99, data: Any = None,
           passes: Sequence[Pass | str] | None = None, budget: int = 500, beam: int = 1, seed: int = 0,
           progress: bool = True, *, quantise: bool = True, precision: int = 32, batch_size: int = 256,
           device: str | torch.device | None = None, test_data: Any = None,
           holdout: float | None = None, metric: str = "faithfulness") -> RefineResult:
    """Search for the shortest model that keeps ``min_faithfulness`` to ``model``.

    Args:
        model: the model to refine; every candidate is compared with it.
        min_faithfulness: the bar, ``1 - FVU`` end to end; nothing below it is returned.
        metric: what the bar is on (:data:`METRICS`): ``"faithfulness"``, or ``"loss_recovered"``,
            ``(CE_ablated - CE_candidate) / (CE_ablated - CE_model)`` against the data's labels (``1 - KL /
            KL_ablated`` without labels), the ablation the mean logits, as :func:`compinterp.check` reports it;
            it needs data (not ``"exact"``) and a model with one output wire of logits.
        data: the search data: ``"exact"`` (from the weights, for polynomial models) or anything
            :func:`compinterp.check` takes; it is read once and kept in memory. Default:
            :func:`compinterp.faithfulness.default_data` (exact for a polynomial model, else
            generated data fitting its input wires), as :func:`compinterp.check` uses.
        passes: rewrite passes (objects with ``name``, ``candidates`` and ``apply``) or
            their names: those of ``PASSES``, and ``sae``, ``transcoder``, ``bilinear_ae``
            (dictionaries with their defaults, trained on the search data, which must not be
            ``"exact"``); default ``compinterp.refinement.passes.default_passes()``.
        budget: the most models evaluated (each rewritten or quantised candidate is one).
        beam: 1 for greedy; more keeps that many sequences at every step.
        seed: seeds torch's random numbers for the passes (the caller's state is restored).
        progress: show a progress bar.
        quantise: end with the fewest uniform bits (2..16) that keep the bar; candidates
            are scored by their bits once quantised so.
        precision: bits per stored number that is not quantised.
        batch_size, device: how the data is run (the model is moved to ``device``, as :func:`check` does).
        test_data: held-out data: the refined model is checked on it once the search is done
            (``result.held_out``), so the reported figure was not used to choose the model.
        holdout: instead of ``test_data``, hold out this fraction of ``data``'s samples (see
            :func:`split_data`); the search runs on the rest.
    """
    if not isinstance(model, Model):
        raise InputError(f"refine() takes a compinterp Model, got {type(model).__name__}")
    if isinstance(min_faithfulness, bool) or not isinstance(min_faithfulness, (int, float)) \
            or not 0 <= min_faithfulness <= 1:
        raise InputError(f"min_faithfulness must be a number from 0 to 1, got {min_faithfulness!r}")
    for name, value in (("budget", budget), ("beam", beam)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if metric not in METRICS:
        raise InputError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    data, test_data, note = split_data(default_data(model) if data is None else data, holdout, test_data)
    if metric == "loss_recovered" and len(model.cod) != 1:
        raise InputError(f"a loss-recovered bar needs one output wire of logits; the model outputs {model.cod}")
    chosen = _passes(passes, data, batch_size=batch_size, device=device, progress=progress)
    reference = Reference(model, data, batch_size=batch_size, device=device,
                          logits=0 if metric == "loss_recovered" else None)
    with torch.random.fork_rng(devices=_cuda(reference.device)):
        torch.manual_seed(seed)
        with tqdm(total=budget, desc="refine", unit="model", disable=not progress, leave=False) as bar:
            search = _Search(reference, chosen, float(min_faithfulness), budget, quantise, precision, bar, metric)
            final = search.run(beam)
    faithfulness = final.faithfulness
    if final.history and reference.exact:      # as check reports it (closed forms agree to round-off)
        faithfulness = reference.verify(final.model).faithfulness
    held_out = None if test_data is None else check(model, final.model, test_data, batch_size=batch_size,
                                                    device=reference.device, progress=False)
    return RefineResult(model=final.model, frontier=Frontier(search.points, float(min_faithfulness)),
                        history=final.history, original_bits=search.root_bits, refined_bits=final.bits,
                        faithfulness=faithfulness, min_faithfulness=float(min_faithfulness),
                        exact=reference.exact, evaluated=search.evaluated, bits=search.bits(final.model),
                        checks=search.checks, held_out=held_out, held_out_note=note, metric=metric,
                        search_data="exact" if reference.exact else _samples(reference.samples, data))


def split_data(data: Any, holdout: float | None = None, test_data: Any = None) -> tuple[Any, Any, str]:
    """The search data, the held-out data (``None`` when there is none) and a note on how they were chosen.

    ``test_data`` is used as given; else ``holdout`` (a fraction, from 0 to 1) of ``data``'s samples is
    held out (:meth:`compinterp.data.Source.split`: a fixed random order for tensors, disjoint draws
    for generated data). ``"exact"`` needs no held-out data: its faithfulness is the population value.

    >>> import torch
    >>> search, test, note = split_data(torch.randn(10, 2), 0.3)
    >>> search.n, test.n, note
    (7, 3, '3 of the 10 samples held out (a fixed random order); the search ran on the other 7')
    >>> split_data("exact", 0.5)[1:]
    (None, 'exact: the faithfulness is the population value under the exact measure, so nothing is held out')
    """
    if test_data is not None:
        if holdout:
            raise InputError("give a held-out fraction (holdout, --holdout) or held-out data (test_data, "
                             "--test-data), not both")
        return data, test_data, "the held-out data was given apart from the search data"
    exact = isinstance(data, str) and data == "exact"
    if exact:
        return data, None, "exact: the faithfulness is the population value under the exact measure, so nothing " \
                           "is held out"
    if not holdout:
        return data, None, "not held out: the faithfulness is measured on the search data (give holdout or test_data)"
    source = as_source(data)
    search, test = source.split(holdout)
    if isinstance(source, Tensors):
        return search, test, (f"{test.n:,} of the {source.n:,} samples held out (a fixed random order); the search "
                              f"ran on the other {search.n:,}")
    return search, test, "the held-out samples are generated apart from the search's (disjoint sample indices)"


@dataclass
class _Scored:
    """A model with its history, bits (structure, parameters, code) and faithfulness."""

    model: Model
    history: tuple[Rewrite, ...]
    bits: float
    faithfulness: float


@dataclass
class _Node:
    """A float candidate and, once scored, its best quantised form: the search's unit."""

    own: _Scored
    quantised: _Scored | None = None

    def final(self) -> _Scored:
        """The quantised form when it is shorter, else the candidate itself."""
        if self.quantised is not None and self.quantised.bits < self.own.bits:
            return self.quantised
        return self.own

    @property
    def score(self) -> float:
        """The bits of :meth:`final`."""
        return self.final().bits

    @property
    def key(self) -> tuple[str, ...]:
        """The rewrites as a multiset: two orders of the same rewrites are one candidate."""
        return tuple(sorted(json.dumps(r.to_json(), sort_keys=True) for r in self.own.history))


class _Exhausted(Exception):
    """The budget of evaluations is spent."""


class _Search:
    """The state of one search: the reference, the passes, and every point evaluated."""

    def __init__(self, reference: Reference, passes: list[Pass], bar: float, budget: int, quantise: bool,
                 precision: int, progress: Any, metric: str = "faithfulness") -> None:
        self.reference, self.passes, self.bar, self.budget = reference, passes, bar, budget
        self.metric = metric
        """What the bar is on: each model's ``faithfulness`` below holds that metric (see :func:`refine`)."""
        self.quantise, self.precision, self.progress = quantise, precision, progress
        self.points: list[Point] = []
        self.evaluated = 0
        self.checks = 0
        self.root_bits = math.nan
        self.best: _Scored | None = None
        self.known: dict[int, tuple[Model, Bits]] = {}
        """The bits of every model measured, by identity (the model kept, so that its id is not reused)."""
        self.widths: dict[tuple[int, int], tuple[Model, Bits]] = {}
        """The bits of every model quantised, by the identity of the model quantised and the width."""
        self.quadratics: dict[int, tuple[Model, Quadratic | None]] = {}
        """The quadratic forms of models (``Reference.forms``), by identity, once asked for."""
        self.variance: float | None = None
        """The reference's variance under the exact measure (the denominator of FVU), once asked for."""
        self.width = WIDTHS[len(WIDTHS) // 2]
        """Where the next search for a quantisation width starts: the last width found."""
        self.scores: dict[tuple[str, ...], float] = {}
        """The faithfulness of every history measured (its rewrites in order, as JSON)."""

    def bits(self, model: Model) -> Bits:
        """The description length of ``model`` at the search's precision, with the code of its sparse
        layers measured on the reference's inputs (none when exact); measured once per model."""
        if id(model) not in self.known:
            self.known[id(model)] = (model, description_length(model, self.precision)
                                     .with_codes(self.reference.codes(model)))
        return self.known[id(model)][1]

    def at_width(self, model: Model, width: int) -> Bits:
        """:meth:`bits` of ``quantise(model, width)``; for a plain model (no Opaque box, tie or sparse layer: its bits
        are those of its tensors) from the quantised tensors alone, so that a width the search only prices builds
        no model. Measured once per model and width."""
        key = (id(model), width)
        if key not in self.widths:
            if model.ties or sparse_layers(model.diagram) or any(box.opaque for box in model.boxes.values()):
                bits = self.bits(self.to_width(model, width))
            else:
                bits = diagram_length(model.diagram, {f"{name}.{role}": quantise_tensor(value, width)
                                                      for name in model.params
                                                      for role, value in model.box_params(name).items()},
                                      self.precision)
            self.widths[key] = (model, bits)
        return self.widths[key][1]

    def to_width(self, model: Model, width: int) -> Model:
        """``quantise(model, width)``, its bits known when :meth:`at_width` has measured them."""
        made = quantised(model, width)
        if (id(model), width) in self.widths:
            self.known[id(made)] = (made, self.widths[id(model), width][1])
        return made

    def forms(self, model: Model) -> Quadratic | None:
        """``model``'s quadratic forms (``Reference.forms``: ``None`` when it has none), computed once per model."""
        if id(model) not in self.quadratics:
            self.quadratics[id(model)] = (model, self.reference.forms(model))
        return self.quadratics[id(model)][1]

    def measure(self, model: Model, history: tuple[Rewrite, ...], faithfulness: float | None = None) -> _Scored:
        """Score one model (one unit of the budget) and record its point; ``faithfulness``, when already
        known in closed form, spares the check."""
        if self.evaluated >= self.budget:
            raise _Exhausted
        self.evaluated += 1
        self.progress.update(1)
        if faithfulness is None:
            self.checks += 1
            forms = self.forms(model) if self.reference.own is not None else None
            faithfulness = score(self.reference.compare(model, forms), self.metric)
        scored = _Scored(model, history, self.bits(model).model, faithfulness)
        self.points.append(Point(scored.bits, faithfulness, history))
        self.scores[_key(history)] = faithfulness
        if faithfulness >= self.bar and (self.best is None or scored.bits < self.best.bits):
            self.best = scored
        return scored

    def floor(self, model: Model) -> float:
        """The fewest bits ``model`` could score once quantised: its own, or at the narrowest width (bits
        never grow as the width shrinks). Costs no check."""
        return min(self.bits(model).model, self.at_width(model, WIDTHS[0]).model)

    def finish(self, node: _Node, bound: float = math.inf) -> _Node:
        """Find the node's quantised form (when it keeps the bar and quantisation is on): the smallest width
        in 2..16 that keeps the bar among the widths whose bits stay under ``bound`` (a wider one could not
        change the search's choices, so it is not checked). The last width found is checked first (widths
        seldom move far), then each next width by :meth:`interpolate` within those not yet ruled in or out."""
        if not self.quantise or node.own.faithfulness < self.bar or node.quantised is not None:
            return node
        history = node.own.history

        def under(width: int) -> bool:
            return self.at_width(node.own.model, width).model < bound

        def keeps(width: int) -> bool:
            rewrite = Rewrite(QUANTISE, "*", {"bits": width})
            found[width] = self.measure(self.to_width(node.own.model, width), (*history, rewrite))
            return found[width].faithfulness >= self.bar

        def widest(cheap: int) -> int:
            """The widest width from ``cheap`` (whose bits stay under the bound) up whose bits do, by bisection."""
            high = WIDTHS[-1]
            if under(high):
                return high
            while high - cheap > 1:
                middle = (cheap + high) // 2
                cheap, high = (middle, high) if under(middle) else (cheap, middle)
            return cheap

        found: dict[int, _Scored] = {}
        if not under(WIDTHS[0]):
            return node
        probe = max(self.width, WIDTHS[0])
        top = None if under(probe) else widest(WIDTHS[0])  # the widest width under the bound, found only when needed
        probe = probe if top is None else top
        low, high = WIDTHS[0] - 1, None
        while True:
            if keeps(probe):
                high = probe
            else:
                low = probe
            if high is None and top is None:
                top = widest(probe)
            ceiling = high if high is not None else top + 1     # the widths left to try: low + 1 .. ceiling - 1
            if ceiling - low <= 1:
                break
            probe = self.interpolate(node.own.faithfulness, found, low, ceiling)
        if high is None:
            return node
        node.quantised = found[high]
        self.width = high
        return node

    def interpolate(self, own: float, found: dict[int, _Scored], low: int, ceiling: int) -> int:
        """The next width to check in ``low + 1 .. ceiling - 1``: the narrowest at which the score, falling from the
        unquantised model's ``own`` by ``kappa (2^(w - 1) - 1)^-2`` (the rounding noise's variance, the square of
        the step ``max|w| / (2^(w - 1) - 1)``), keeps the bar, ``kappa`` read off the width ``low`` when it was
        checked (it failed: the most telling), else off the narrowest that kept; the middle where that reading says
        nothing (no fall). Only the order of the checks depends on it: the width found is the same."""
        width = low if low in found else min(found)
        fall, room = own - found[width].faithfulness, own - self.bar
        if fall <= 0 or room <= 0:
            return (low + ceiling) // 2
        kappa = fall * (2 ** (width - 1) - 1) ** 2
        return next((w for w in range(low + 1, ceiling - 1) if kappa <= room * (2 ** (w - 1) - 1) ** 2), ceiling - 1)

    def run(self, beam: int) -> _Scored:
        """Greedy (``beam == 1``) or beam search from the original; the model with the fewest bits
        that keeps the bar among all those evaluated (the original when none does better)."""
        root = _Node(self.measure(self.reference.model, ()))
        self.root_bits = root.own.bits
        root.own.faithfulness = max(root.own.faithfulness, self.bar)     # the original is its own reference
        self.best = self.best or root.own
        try:
            frontier, seen = [self.finish(root)], {root.key}
            while frontier:
                children = []
                for parent in frontier:
                    for child in self.expand(parent, beam, seen):
                        if child.score < parent.score and child.key not in seen:
                            seen.add(child.key)
                            children.append(child)
                children.sort(key=lambda n: (n.score, -n.final().faithfulness))
                frontier = children[:beam]
                self.progress.set_postfix(bits=f"{self.best.bits:,.0f}", faithful=f"{self.best.faithfulness:.4f}")
        except _Exhausted:
            pass
        return self.best

    def expand(self, parent: _Node, beam: int = 1, seen: set[tuple[str, ...]] | None = None) -> list[_Node]:
        """The best child of each group of rewrites the passes offer on ``parent``. A group's child must beat the
        parent's score and, once ``beam`` children shorter than the parent and not ``seen`` are known, the
        ``beam``-th shortest of them (:meth:`best_in_group`'s ``bound``): one that does not could not be kept."""
        children, kept = [], []
        for p in self.passes:
            for group in _groups(p.candidates(parent.own.model)):
                bound = parent.score if len(kept) < beam else sorted(kept)[beam - 1]
                child = self.best_in_group(parent, p, group, bound)
                if child is not None:
                    children.append(child)
                    if child.score < parent.score and child.key not in (seen or ()):
                        kept.append(child.score)
        return children

    def closed_form(self, parent: _Node, p: Pass, group: list[Rewrite], how: str = "truncations"
                    ) -> list[float] | None:
        """The faithfulness of each rewrite of ``group`` in closed form, when the pass can say which
        eigencomponents each drops (``truncations``; ``starts`` for the eigen starts of fits) and the
        reference and parent are exact and of one Hadamard stage (see ``Reference.truncated``); else ``None``."""
        spectra = getattr(p, how, None)
        if spectra is None or self.reference.own is None:
            return None
        forms = self.forms(parent.own.model)
        found = spectra(parent.own.model, group) if forms is not None else None
        if found is None:
            return None
        spec, keep = found
        metrics = self.reference.truncated(forms, spec.values, spec.vectors, spec.directions, keep)
        return [m.faithfulness for m in metrics]

    def give_up(self, parent: _Node, p: Pass, group: list[Rewrite]) -> float | None:
        """For a pass that ``gives_up`` (a fit), on a box that reads the model's inputs and writes its outputs
        (``starts`` answers) against an exact reference of one stage: the error ``||B_sym - C_sym||_F^2`` of
        the box's fit past which the rewrite cannot keep the bar; else ``None``.

        Under ``z ~ N(0, I)`` a change ``delta`` of the box changes the outputs by the forms of its error
        ``E``, whose mean square is at least ``2 (||E||_F^2 - sum_c E_c00^2)``; the child's distance to the
        reference is at least its distance to the parent less the parent's to the reference (both norms of
        the outputs), so a fit whose error exceeds ``(sqrt(FVU_max Var) + sqrt(FVU_parent Var))^2 / 2`` fails.
        """
        own = self.reference.own
        if own is None or not getattr(p, "gives_up", False) or getattr(p, "starts", None) is None \
                or p.starts(parent.own.model, group[:1]) is None:   # type: ignore[attr-defined]
            return None
        if self.variance is None:               # the reference's variance, the denominator of every FVU
            self.variance = (form_inner(own, own) - own[0] ** 2).clamp_min(0).sum().item()
        fvu = max(0.0, 1 - parent.own.faithfulness)
        return self.variance * (math.sqrt(max(0.0, 1 - self.bar)) + math.sqrt(fvu)) ** 2 / 2

    def may_pay(self, parent: _Node, p: Pass, rewrite: Rewrite, bound: float) -> bool:
        """Whether a costly rewrite, not yet made, may score under ``bound`` bits once quantised: judged from the
        pass's ``sketch`` (the rewritten model unfitted, of the same shapes and so about the same bits) quantised at
        the width its parent needed, on the rule that a rewrite does not keep the bar at a width narrower than its
        parent needed (its own error leaves less room for the quantisation's); ``True`` when the pass has no sketch
        or the parent was not quantised."""
        sketch = getattr(p, "sketch", None)
        if sketch is None or not self.quantise or parent.quantised is None:
            return True
        width = parent.quantised.history[-1].settings["bits"]
        return self.at_width(sketch(parent.own.model, rewrite), width).model < bound

    def best_in_group(self, parent: _Node, p: Pass, group: list[Rewrite], bound: float = math.inf) -> _Node | None:
        """The best rewrite of one group (one pass on one box in one mode, mildest first), worth quantising only
        under ``bound`` bits (at most the parent's score: :meth:`expand` passes its siblings' bound).

        With quantisation on, only rewrites whose :meth:`floor` is under the bound can
        make a child, so the group starts at the first of them (the mildest first, then galloping
        and bisection on floors, which fall along the group; not for ``costly`` passes, whose floor
        would cost a fit). Bisection then finds the strongest rewrite that keeps the bar (assuming
        faithfulness falls along the group; when the mildest does not keep it, the group ends there:
        checked first, or last for a pass whose ``costly`` rewrites are dearest at their mildest, such
        as a CP fit, unless the pass refits the box it has just made, whose mildest rewrite seldom
        keeps what the fit before it could not: not tried at all when the same rewrite of the box it
        was made from failed); then the search walks back towards milder rewrites, 1, 2, 4 ... steps,
        while the score (bits once quantised) improves (to a costly one only when it :meth:`may_pay`).

        A costly rewrite whose start keeps the bar in closed form (``starts``: a fit is never worse
        than its start) counts as keeping it without a fit, unless it is the one chosen, and the
        bisection starts from the harshest of them; one whose least possible error (the pass's
        ``least_errors``) is past the error at which it cannot keep the bar (:meth:`give_up`) fails
        without a fit, and the others' fits are given that error and may stop there. The first fit is
        the harshest whose start is within :data:`GUESS` times the FVU the bar allows; from a fit that
        keeps the bar, the next 1, 2, 4 ... harsher rewrites are tried (from the first, if it fails, the
        milder ones) before bisecting on: a fit that fails gives up early, one that keeps runs to the end.
        """
        costly = getattr(p, "costly", False)
        made = parent.own.history               # a costly pass refitting the box it just made
        refit = costly and bool(made) and made[-1].pass_name == p.name \
            and group[0].box not in self.reference.model.boxes
        if refit:                               # the same rewrite of the box it was made from failed: so will this
            source = Rewrite(p.name, made[-1].box, group[0].settings)
            if self.scores.get(_key((*made[:-1], source)), self.bar) < self.bar:
                return None
        bound = min(bound, parent.score)
        nodes: dict[int, _Node] = {}
        applied: dict[int, Model] = {}
        floors: dict[int, bool] = {}

        give_up = self.give_up(parent, p, group)

        def model(i: int) -> Model:
            if i not in applied:
                applied[i] = p.apply(parent.own.model, group[i]) if give_up is None else \
                    p.apply(parent.own.model, group[i], give_up=give_up)    # type: ignore[call-arg]
            return applied[i]

        closed: list[float] | None = None

        def at(i: int) -> _Node:
            nonlocal closed
            if i in nodes:
                return nodes[i]
            if not nodes:
                closed = self.closed_form(parent, p, group)
            history = (*parent.own.history, group[i])
            nodes[i] = _Node(self.measure(model(i), history, None if closed is None else closed[i]))
            return nodes[i]

        vouched: set[int] = set()               # costly rewrites whose start (no fit) already keeps the bar
        doomed = len(group)                     # the first rewrite that provably cannot keep it, nor any after it
        starts: list[float] | None = None
        if costly:
            starts = self.closed_form(parent, p, group, "starts")
            vouched = {i for i, f in enumerate(starts or ()) if f >= self.bar}
            least = getattr(p, "least_errors", None)
            errors = None if give_up is None or least is None else least(parent.own.model, group)
            doomed = next((i for i, e in enumerate(errors or ()) if e > give_up), doomed)

        def keeps(i: int) -> bool:
            return i < doomed and (i in vouched or at(i).own.faithfulness >= self.bar)

        def needed(i: int) -> bool:
            if not self.quantise or costly:     # unquantised, every point is measured; a costly floor is a fit
                return True
            if i not in floors:
                floors[i] = self.floor(model(i)) < bound
            return floors[i]

        first, step = 0, 1                      # the first rewrite that could beat the parent: gallop, then bisect
        while not needed(first):
            if first == len(group) - 1:
                return None
            low, first, step = first, min(first + step, len(group) - 1), 2 * step
            if needed(first):
                while first - low > 1:
                    middle = (low + first) // 2
                    low, first = (low, middle) if needed(middle) else (middle, first)
                break
        if first >= doomed or ((refit or not costly) and not keeps(first)):
            return None
        low, high = max(first, max((i for i in vouched if i < doomed), default=first)), doomed
        guess = max((i for i, f in enumerate(starts or ()) if low < i < high and 1 - f <= GUESS * (1 - self.bar)),
                    default=(low + high) // 2)
        step, middle = 0, guess                 # galloping from a fit: harsher after a keep, milder after a miss
        while high - low > 1:
            if keeps(middle):
                low, step = middle, (2 * step if step > 0 else int(costly and step == 0 and middle not in vouched))
            else:
                high, step = middle, (2 * step if step < 0 else -int(costly and middle == guess))
            half = (low + high) // 2
            middle = min(low + step, half) if step > 0 else max(high + step, half) if step < 0 else half
        if costly and at(low).own.faithfulness < self.bar:
            return None
        best = self.finish(at(low), bound)
        step = 1
        while low - step >= first:
            if costly and low - step not in nodes \
                    and not self.may_pay(parent, p, group[low - step], min(bound, best.score)):
                break
            node = at(low - step)
            if node.own.faithfulness >= self.bar:
                node = self.finish(node, min(bound, best.score))
                if node.score >= best.score:
                    break
                best = node
            step *= 2
        return best


def score(metrics: Metrics, metric: str) -> float:
    """The number a bar on ``metric`` reads from ``metrics``: its faithfulness, or its loss recovered (``-inf``
    where there is none: no reference loss to recover)."""
    if metric == "faithfulness":
        return metrics.faithfulness
    value = metrics.loss_recovered
    return -math.inf if value is None else value


def _key(history: Sequence[Rewrite]) -> tuple[str, ...]:
    """A history's rewrites, in order, as JSON: the key of :attr:`_Search.scores`."""
    return tuple(json.dumps(r.to_json(), sort_keys=True) for r in history)


def _groups(rewrites: Sequence[Rewrite]) -> list[list[Rewrite]]:
    """Rewrites grouped by pass, box and their non-numeric settings (the mode), in order of first
    appearance; within a group the numeric settings are the strength, mildest first."""
    groups: dict[tuple[str, ...], list[Rewrite]] = {}
    for rewrite in rewrites:
        mode = tuple(f"{k}={json.dumps(v, sort_keys=True)}" for k, v in sorted(rewrite.settings.items())
                     if isinstance(v, bool) or not isinstance(v, (int, float)))
        groups.setdefault((rewrite.pass_name, rewrite.box, *mode), []).append(rewrite)
    return list(groups.values())


def _passes(passes: Sequence[Pass | str] | None, data: Any, *, batch_size: int, device: str | torch.device | None,
            progress: bool) -> list[Pass]:
    """The passes to search with: the defaults, or each given pass (or pass name) checked; a dictionary
    pass named (``sae``, ``transcoder``, ``bilinear_ae``) is built with its defaults, trained on ``data``."""
    if passes is None:
        from compinterp.refinement.passes import default_passes
        return list(default_passes())
    if isinstance(passes, str):
        raise InputError(f"passes must be a list of passes or pass names, got the string {passes!r}")
    chosen: list[Pass] = []
    for p in passes:
        if isinstance(p, str):
            from compinterp.refinement.dictionary import NAMES, make_pass
            from compinterp.refinement.passes import PASSES
            if p in NAMES:
                p = make_pass(p, data, batch_size=batch_size, device=device, progress=progress)
            elif p in PASSES:
                p = PASSES[p]()
            else:
                raise InputError(f"unknown pass {p!r}; the passes are {', '.join([*PASSES, *NAMES])}")
        if not all(hasattr(p, attr) for attr in ("name", "candidates", "apply")):
            raise InputError(f"{p!r} is not a rewrite pass: it needs name, candidates(model) and apply(model, rewrite)")
        chosen.append(p)
    return chosen


def _samples(n: int, data: Any) -> str:
    """``n`` samples of ``data``, in words."""
    origin = as_source(data).describe()
    return f"{n:,} samples" + (f" of {origin}" if origin else "")


def _cuda(device: torch.device) -> list[int]:
    """The CUDA devices whose random state the search forks (none on other devices)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]
