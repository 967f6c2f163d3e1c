"""The commutation checker: both paths of every square, per box and end to end, on streamed data.

For each batch the model runs once through its compiled plan; after each box
``f : A -> B`` the checker compares ``sigma_B([[f]]_M(a))`` with
``[[S(f)]]_E(sigma_A(a))`` on the model's own activations ``a`` (the local square),
and carries the explanation's own run ``[[S(diagram)]]_E(sigma(x))`` along, box by
box, for the square of the whole diagram. Registers are freed as the plan frees
them, so one batch of activations per wire (and side) is held at a time.

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.interpretation import Interpretation
>>> from compinterp.syntax import Space, Bilinear, Linear, residual
>>> x, y = Space("x", 4), Space("y", 3)
>>> model = Model(residual(Bilinear("mlp", x, x, hidden=8)) >> Linear("out", x, y))
>>> report = check(model, Interpretation(model), torch.randn(64, 4), progress=False)
>>> report.end_to_end.faithfulness, [row.metrics.fvu for row in report.boxes], report.worst_box
(1.0, [0.0, 0.0, 0.0], None)
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from tqdm.auto import tqdm

from compinterp.data import Batch, Input, Source, as_source, fit, gaussian, placement, resolve_device
from compinterp.errors import BoxError, CompositionError, InputError
from compinterp.faithfulness.distributed import all_reduce, world
from compinterp.faithfulness.exact import exact_report
from compinterp.faithfulness.exact.measures import GaussianFit, fit_source
from compinterp.faithfulness.metrics import IGNORE, LogitMoments, Moments
from compinterp.faithfulness.report import BoxRow, FaithfulnessReport
from compinterp.interpretation import Interpretation
from compinterp.interpretation.maps import Identity, Map
from compinterp.interventions import Site
from compinterp.model import Model
from compinterp.semantics import Interpreter, Plan, Step, inputs
from compinterp.semantics.tensor import NotPolynomialError, why_not_polynomial
from compinterp.syntax import Wire, describe


DEFAULT_SAMPLES = 10_000
"""How many input vectors the default generated data holds (for a model that reads sequences,
sequences of its context adding up to about as many positions)."""

GIVE_DATA = ("give data instead: gaussian:N (generated to fit the model's input wires), digits or modular "
             "(a task's held-out data), or FILE.pt")
"""What a message refusing an exact comparison tells the user to pass."""


def check(model: Model, explanation: Interpretation | Model, data: Any = None, *, batch_size: int = 256,
          device: str | torch.device | None = None, logits: bool | str | None = None,
          progress: bool = True, fit: Any = None) -> FaithfulnessReport:
    """How far each square of ``explanation`` is from commuting with ``model``, on ``data``.

    Args:
        model: the model explained.
        explanation: an :class:`~compinterp.Interpretation` of ``model``, or a second
            model with the same input and output spaces (a refinement: compared end
            to end, with identity maps on inputs and outputs).
        data: a tensor (one input), a tuple of tensors (inputs, then optionally
            labels), a ``DataLoader``, a :mod:`compinterp.data` source such as
            ``gaussian(n)``, a spec string (``"gaussian:1000"``, ``"file.pt"``), or
            ``"exact"``: compare end to end from the weights alone, when every box on
            both sides is polynomial (see :func:`compinterp.faithfulness.exact.exact_report`).
            Default: :func:`default_data`. Data must fit the model's input wires
            (:func:`compinterp.semantics.inputs`): token ids on token wires, a sequence
            axis where the model reads sequences.
        batch_size: batch size for tensors and generated data (a loader keeps its own).
        device: where to run; the model and the explanation are moved there.
            Default: where the model's parameters are.
        logits: whether the output is logits (adds KL, top-1 agreement, loss recovered and,
            with labels, accuracy), or the name of the output wire that holds them; default:
            one output wire labelled ``logits...`` or made by an ``Unembed`` box.
        progress: show a progress bar (on rank 0).
        fit: with ``data="exact"`` (implied when ``data`` is not given): data (the forms ``data`` takes)
            whose mean and covariance replace ``N(0, I)`` as the input measure of the exact check, or a
            :class:`~compinterp.faithfulness.exact.measures.GaussianFit`; the report names the Gaussian.

    Under ``torch.distributed``, each rank checks its shard of ``data`` and the
    sums are all-reduced, so every rank returns the report of the whole data.
    """
    if data is None:
        data = default_data(model, explanation) if fit is None else "exact"
    exact = isinstance(data, str) and data == "exact"
    if fit is not None and not exact:
        raise InputError("fit= sets the Gaussian of the exact check: give it with data='exact' (--data exact); "
                         "a check on data measures those samples themselves")
    if exact:
        reason = why_not_exact(model, explanation)
        if reason is not None:
            raise NotPolynomialError(f"no exact check: {reason}; {GIVE_DATA}")
        gauss = None if fit is None else _fitted(model, fit, batch_size)
        report = exact_report(model, explanation) if gauss is None else \
            exact_report(model, explanation, mean=gauss.mean, cov=gauss.cov, measure=gauss.describe())
        if logits:
            return replace(report, note=f"{report.note}; no logit metrics: the exact path compares the outputs as "
                                        "functions of the input, give data for KL, top-1 agreement and accuracy")
        return report
    return _Squares(model, explanation).evaluate(as_source(data), None, batch_size, device, logits, progress)


def _fitted(model: Model, fit: Any, batch_size: int) -> GaussianFit:
    """The Gaussian ``fit`` names for the exact check of ``model``: fitted to data, or given fitted (checked
    to cover the model's input wires)."""
    wires = inputs(model.plan)
    if isinstance(fit, str) and fit == "exact":
        raise InputError("fit= takes the data to fit the exact check's Gaussian to (a tensor, FILE.pt, a task's "
                         "name), not 'exact'")
    if not isinstance(fit, GaussianFit):
        return fit_source(fit, wires, batch_size)
    width = sum(wire.dim for wire in wires)
    if tuple(fit.mean.shape) != (width,) or tuple(fit.cov.shape) != (width, width):
        raise InputError(f"fit: the Gaussian has mean {tuple(fit.mean.shape)} and cov {tuple(fit.cov.shape)}; the "
                         f"inputs {' @ '.join(w.name for w in wires)} need ({width},) and ({width}, {width})")
    return fit


def why_not_exact(model: Model, explanation: Interpretation | Model | None = None) -> str | None:
    """Why ``model`` (and ``explanation``: a second model, or an interpretation's explanation)
    cannot be compared from the weights alone: the first box that is not polynomial; else ``None``."""
    other = explanation.explanation if isinstance(explanation, Interpretation) else explanation
    for side in (model, other):
        reason = None if side is None else why_not_polynomial(side)
        if reason is not None:
            return reason
    return None


def default_data(model: Model, explanation: Interpretation | Model | None = None) -> str | Source:
    """The data :func:`check` and :func:`~compinterp.refine` use when given none: ``"exact"`` for an
    end-to-end comparison (a second model, or none) where every box on both sides is polynomial; else
    :data:`DEFAULT_SAMPLES` generated samples fitting the model's input wires (Gaussian vectors,
    uniform token ids, sequences of the model's context). A model on images has no default.

    >>> from compinterp.syntax import Space, Bilinear, Norm
    >>> x = Space("x", 4)
    >>> default_data(Model(Bilinear("mlp", x, x, hidden=2)))
    'exact'
    >>> default_data(Model(Norm("ln", x))).describe()
    'data generated with seed 0 (Gaussian vectors, uniform token ids)'
    """
    if not isinstance(explanation, Interpretation) and why_not_exact(model, explanation) is None:
        return "exact"
    wires = inputs(model.plan)
    for wire in wires:
        if wire.kind == "images":
            raise InputError(f"no default data for a model on images (wire {wire.name}, {wire.box}): give data of "
                             f"shape {wire.shape()}, e.g. a FILE.pt")
    seq = next((wire.seq for wire in wires if wire.seq is not None), None)
    return gaussian(DEFAULT_SAMPLES if seq is None else -(-DEFAULT_SAMPLES // seq))


def interchange(model: Model, interpretation: Interpretation, base: Any, source: Any, wire: str | Site, *,
                output: int = 0, own_value: bool = False, batch_size: int = 256,
                device: str | torch.device | None = None, logits: bool | str | None = None,
                progress: bool = True) -> FaithfulnessReport:
    """The check under an interchange intervention on ``wire`` (output ``output`` of that box).

    For each pair of batches, the wire's value ``v`` on the ``source`` inputs is
    patched into the model's run on ``base``, and ``sigma`` of the patched value into the
    explanation's run on ``sigma(base)``; the report measures whether the two
    still agree (every downstream square, and end to end). With logits,
    ``end_to_end.top1`` is the interchange-intervention accuracy (IIA).
    ``wire`` is a box's row name in a report (``"mlp0"``, ``"add#2"``), or a
    :class:`~compinterp.Site` on it that narrows the patch to positions or a subspace (the
    model's value becomes ``v + P_S(source - v)``; with ``sigma`` the site's rotation, the
    explanation then reads exactly the source's variable). ``base`` and ``source`` take the
    forms ``check`` takes, with the same batch sizes.
    """
    squares = _Squares(model, interpretation)
    patch = squares.patch(wire, output, as_source(source))
    return squares.evaluate(as_source(base), patch, batch_size, device, logits, progress)


@dataclass(frozen=True)
class _Patch:
    """Set the part ``site`` of output ``output`` of step ``step`` to its value on the ``source`` batches."""

    step: int
    output: int
    source: Source | None
    wire: Wire
    site: Site
    own: bool = False
    """Whether the explanation takes its own value on the source (a high-level intervention, as in
    causal abstraction) instead of ``sigma`` of the model's patched value."""


class _Squares:
    """The two sides of every square of a model and its explanation, compiled once."""

    def __init__(self, model: Model, explanation: Interpretation | Model) -> None:
        if not isinstance(model, Model):
            raise BoxError(f"check() takes a compinterp Model first, got {type(model).__name__}")
        self.model, self.explanation = model, explanation
        self.plan: Plan = model.plan
        self.steps: tuple[Step, ...] = self.plan.steps
        self.labels: tuple[str, ...] = self.plan.labels
        self.sigma: list[Map | None] = [None] * self.plan.registers
        self.wires: tuple[Wire, ...] = self.plan.wires
        if isinstance(explanation, Model):
            if explanation.dom != model.dom or explanation.cod != model.cod:
                raise CompositionError(f"cannot compare the model ({model.dom} -> {model.cod}) with a second model "
                                       f"({explanation.dom} -> {explanation.cod}): a refinement must have the same "
                                       "input and output spaces")
            self.images: tuple[Interpreter, ...] | None = None
            self.cod_dims = model.cod.dims
            return
        if not isinstance(explanation, Interpretation):
            raise BoxError(f"check() compares a model with an Interpretation or a second Model, "
                           f"got {type(explanation).__name__}")
        if explanation.source != model.diagram:
            raise CompositionError(f"the interpretation explains another diagram ({describe(explanation.source)}) "
                                   f"than the model's ({describe(model.diagram)})")
        e_params = explanation.explanation.plan_params()
        self.images = tuple(Interpreter(explanation.plan(step.box), e_params, side=f"explanation of '{label}': ")
                            for step, label in zip(self.steps, self.labels))
        for r, w in enumerate(self.wires):
            sigma = explanation.map_of(w)
            self.sigma[r] = None if isinstance(sigma, Identity) else sigma
        self.out_dims = [explanation.space(step.box.cod).dims for step in self.steps]
        self.cod_dims = explanation.space(model.cod).dims

    def patch(self, wire: str | Site, output: int, source: Source | None, own: bool = False) -> _Patch:
        """The patch of an interchange on ``wire`` (a step label or a site on one), checked."""
        if self.images is None:
            raise BoxError("an interchange needs an Interpretation that maps each box; "
                           "a second model is compared only end to end")
        site = wire if isinstance(wire, Site) else Site(wire) if isinstance(wire, str) else None
        if site is None:
            raise BoxError(f"an interchange acts on a box's row name or a Site, got {type(wire).__name__}")
        if site.wire not in self.labels:
            raise BoxError(f"no box '{site.wire}' to intervene on; the model's boxes are {', '.join(self.labels)}")
        if site.heads is not None:
            raise BoxError(f"an interchange check patches wires; {site} narrows to heads, which the explanation "
                           "does not see: use compinterp.intervene for head patches")
        t = self.labels.index(site.wire)
        box = self.steps[t].box
        if isinstance(output, bool) or not isinstance(output, int) or not 0 <= output < len(box.cod):
            raise BoxError(f"box '{site.wire}' ({describe(box)}) has {len(box.cod)} output(s); "
                           f"output {output!r} does not exist")
        return _Patch(t, output, source, box.cod.wires[output], site, own)

    def evaluate(self, source: Source, patch: _Patch | None, batch_size: int, device: str | torch.device | None,
                 logits: bool | str | None, progress: bool) -> FaithfulnessReport:
        """Stream ``source`` (this rank's shard) through both sides, reduce the sums, build the report."""
        if device is not None:
            device = resolve_device(device)
            self.model.to(device)
            self.explanation.to(device)
        device, dtype = placement(self.model, device)
        out, why = self._logits(logits)
        wires = inputs(self.plan)
        local = [Moments(dims, device) for dims in self.out_dims] if self.images is not None else []
        whole = Moments(self.cod_dims, device)
        logit = LogitMoments(self.cod_dims[out], device) if out is not None else None
        count = torch.zeros(3, dtype=torch.float64, device=device)
        rank, size = world()
        batches: Iterator[Any] = source.batches(batch_size, wires, rank, size)
        if patch is not None:
            batches = _paired(batches, patch.source.batches(batch_size, wires, rank, size))
        bar = tqdm(batches, total=source.num_batches(batch_size, rank, size), desc="check", unit="batch",
                   disable=not progress or rank != 0, leave=False)
        with torch.inference_mode():
            for k, batch in enumerate(bar):
                base, other = batch if patch is not None else (batch, None)
                xs, labels = _inputs(base, wires, k, dtype, device)
                if xs[0].shape[0] == 0:
                    continue
                value = None
                if patch is not None:
                    value = self._capture(_inputs(other, wires, k, dtype, device)[0], patch)
                ys_m, ys_e = self._batch(xs, local, value, patch)
                whole.update(ys_m, ys_e)
                if logit is not None:
                    logit.update(ys_m[out], ys_e[out], checked_labels(labels, ys_m[out], k))
                count += torch.tensor([xs[0].shape[0], 1, labels is not None], dtype=torch.float64, device=device)
        buffers = [count, whole.buffer, *(m.buffer for m in local), *([logit.buffer] if logit else [])]
        all_reduce(buffers)
        note = why if count[2] == 0 or logit is not None else \
            f"labels were given but not scored: {why[len('no logit metrics: '):]}"
        return self._report(count, whole, local, logit, out, patch, note, source.describe() or None)

    def _batch(self, xs: Sequence[torch.Tensor], local: list[Moments], value: Any,
               patch: _Patch | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One batch through every square; returns ``sigma(M(x))`` and ``E(sigma(x))`` on the outputs."""
        if self.images is None:
            return _tuple(self.model(*xs)), _tuple(self.explanation(*xs))
        outs = _BothSides(self, local, patch, value).run(*xs)
        return [mapped for _, mapped, _ in outs], [expl for _, _, expl in outs]

    def _capture(self, xs: Sequence[torch.Tensor], patch: _Patch) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
        """The patched step's outputs on ``xs``: the model's, and with ``patch.own`` the explanation's
        own (its run on ``sigma(xs)``), each run only up to that step."""
        if patch.own:
            capture: Interpreter = _BothSides(self, None, None, None)
        else:
            capture = Interpreter(self.plan, self.model.plan_params(), side="model ")
        outs: list[tuple[Any, ...]] = []
        keep = _Keep(capture, patch.step, outs)
        keep.run(*xs, until=patch.step + 1)
        if patch.own:
            return tuple(m for m, _, _ in outs[0]), tuple(e for _, _, e in outs[0])
        return outs[0], None

    def map(self, r: int, x: torch.Tensor | None) -> torch.Tensor | None:
        """``sigma`` of register ``r``'s wire applied to ``x``."""
        sigma = self.sigma[r]
        if sigma is None or x is None:
            return x
        try:
            return sigma(x)
        except (RuntimeError, ValueError, TypeError, IndexError) as err:
            raise InputError(f"the {sigma.describe()} on wire {self.wires[r].name} failed on shape "
                             f"{tuple(x.shape)}: {err}") from err

    def _logits(self, logits: bool | str | None) -> tuple[int | None, str | None]:
        """Which output holds logits (as told: ``True`` or a wire's name; else one wire labelled ``logits*``
        or made by ``Unembed``), or ``None`` with the reason there are no logit metrics."""
        wires = self.model.cod.wires
        named = str(self.model.cod) if wires else "none"
        if isinstance(logits, str):
            found = [i for i, w in enumerate(wires) if logits in (w.name, w.label)]
            if not found:
                raise BoxError(f"no output wire {logits!r} to read logits from; the model's outputs are {named}")
            return found[0], None
        if logits is not None and not isinstance(logits, bool):
            raise BoxError(f"logits must be True, False, None or an output wire's name, got {logits!r}")
        if logits is False:
            return None, "no logit metrics: logits=False"
        if len(wires) != 1:
            if logits:
                raise BoxError(f"logit metrics need one output wire; the model outputs {named}: name the one "
                               "holding logits (logits='WIRE', --logits WIRE)")
            return None, (f"no logit metrics: the model has {len(wires)} output wires ({named}); if one holds "
                          "logits, name it with --logits WIRE (logits='WIRE')")
        made = [s.box.kind for s in self.steps if self.plan.outputs[0] in s.outs]
        if logits or wires[0].label.lower().startswith("logit") or made[-1:] == ["Unembed"]:
            return 0, None
        return None, (f"no logit metrics: the output {wires[0].name} is not labelled logits nor made by an Unembed "
                      f"box; if it holds logits, name it with --logits {wires[0].label} (logits='{wires[0].label}')")

    def _report(self, count: torch.Tensor, whole: Moments, local: list[Moments], logit: LogitMoments | None,
                out: int | None, patch: _Patch | None, note: str | None, data: str) -> FaithfulnessReport:
        """Metrics from the reduced sums; boxes sorted worst first."""
        samples = int(count[0].item())
        if samples == 0:
            raise InputError("the data holds no samples: nothing to check")
        for label, m in [*((f"box '{l}'", m) for l, m in zip(self.labels, local)), ("the whole diagram", whole)]:
            if not torch.isfinite(m.buffer).all():
                raise InputError(f"the square of {label} has NaN or infinite values on this data: "
                                 "the model or the explanation overflows there")
        end = whole.metrics()
        batches, labelled = int(count[1].item()), int(count[2].item())
        if logit is not None:
            if 0 < labelled < batches:
                raise InputError(f"labels came with {labelled} of {batches} batches: give labels with every batch "
                                 "or with none")
            end = logit.fill(end, whole.mean(out))
        rows = [BoxRow(label, step.box.kind, str(step.box.dom), str(step.box.cod), m.metrics())
                for label, step, m in zip(self.labels, self.steps, local)]
        rows.sort(key=lambda row: (-row.metrics.fvu, -row.metrics.rel_l2))
        info = None if patch is None else {"wire": self.labels[patch.step], "output": patch.output,
                                           "space": patch.wire.name}
        return FaithfulnessReport(end, tuple(rows), samples, exact=False, intervention=info, note=note, data=data)


def _paired(base: Iterator[Batch], source: Iterator[Batch]) -> Iterator[tuple[Batch, Batch]]:
    """Base and source batches in lockstep; one running out first is an error."""
    missing = object()
    for k, (b, s) in enumerate(itertools.zip_longest(base, source, fillvalue=missing)):
        if b is missing or s is missing:
            raise InputError(f"the base and source data have different numbers of batches (one ends at batch {k})")
        yield b, s


def _inputs(batch: Batch, wires: tuple[Input, ...], k: int, dtype: torch.dtype,
            device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor | None]:
    """One batch as the model's inputs (checked to fit the wires, cast, moved) and optional labels."""
    fit(batch, wires, k)
    n = len(wires)
    xs = [x.to(device=device, dtype=dtype) if wire.kind != "tokens" and wire.kind != "positions" else x.to(device)
          for x, wire in zip(batch, wires)]
    return xs, (batch[n].to(device) if len(batch) > n else None)


def checked_labels(labels: torch.Tensor | None, logits: torch.Tensor, k: int) -> torch.Tensor | None:
    """Labels checked against the logits they score (:data:`~compinterp.faithfulness.metrics.IGNORE` marks
    a position without one)."""
    if labels is None:
        return None
    classes = logits.shape[-1]
    if labels.is_floating_point() or labels.is_complex() or tuple(labels.shape) != tuple(logits.shape[:-1]):
        raise InputError(f"batch {k}: labels must be integer class ids of shape {tuple(logits.shape[:-1])}, "
                         f"got {labels.dtype} of shape {tuple(labels.shape)}")
    scored = labels[labels != IGNORE]
    if scored.numel() and (scored.min() < 0 or scored.max() >= classes):
        raise InputError(f"batch {k}: labels must lie in [0, {classes}), got values from {scored.min().item()} to "
                         f"{scored.max().item()} ({IGNORE} marks a position without a label)")
    return labels


def _same_shapes(want: list[torch.Tensor], got: list[torch.Tensor], label: str, step: Step) -> None:
    """The image's outputs have the shapes of the mapped model outputs."""
    for i, (w, g) in enumerate(zip(want, got)):
        if not isinstance(g, torch.Tensor) or g.shape != w.shape:
            shape = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
            raise InputError(f"the explanation of box '{label}' ({describe(step.box)}) gives output {i} of shape "
                             f"{shape}, but sigma of the model's output has shape {tuple(w.shape)}")


def _equal(a: Any, b: Any) -> bool:
    """Whether two registers hold the same values (then a box gives the same outputs on both)."""
    return a is b or (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                      and a.dtype == b.dtype and torch.equal(a, b))


def _tuple(y: torch.Tensor | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    return list(y) if isinstance(y, tuple) else [y]



class _BothSides(Interpreter):
    """The model's plan run with three values in each register: the model's activation ``a``,
    ``sigma(a)``, and the explanation's own value; each step also runs its image ``[[S(f)]]_E``
    on ``sigma`` of the model's inputs (the local square, accumulated in ``local``) and on the
    explanation's inputs (the square of the whole diagram, carried along). Without ``local``, only the
    explanation's own run is carried (for training, :mod:`compinterp.faithfulness.fit`)."""

    side = "model "

    def __init__(self, squares: _Squares, local: list[Moments] | None, patch: _Patch | None,
                 value: tuple[tuple[Any, ...], tuple[Any, ...] | None] | None) -> None:
        super().__init__(squares.plan, squares.model.plan_params())
        self.squares, self.local, self.patch, self.value = squares, local, patch, value

    def shape(self, value: Any) -> str:
        return super().shape(value[0]) if isinstance(value, tuple) else "?"

    def initial_env(self, xs: Sequence[Any], initial: Any) -> list[Any]:
        regs = super().initial_env(xs, initial)
        for r, x in enumerate(xs):
            mapped = self.squares.map(r, x)
            regs[r] = (x, mapped, mapped)
        return regs

    def run_step(self, t: int, step: Step, args: list[Any]) -> tuple[Any, ...]:
        squares = self.squares
        outs = super().run_step(t, step, [a for a, _, _ in args])
        if not isinstance(outs, tuple) or len(outs) != len(step.outs):
            return outs
        mapped = [squares.map(r, y) for r, y in zip(step.outs, outs)]
        image = squares.images[t]
        if self.local is None:
            expl = image.run(*[e for _, _, e in args])
        else:
            local = image.run(*[m for _, m, _ in args])
            _same_shapes(mapped, local, squares.labels[t], step)
            self.local[t].update(mapped, local)
            same = all(_equal(e, m) for _, m, e in args)
            expl = local if same else image.run(*[e for _, _, e in args])
        if self.patch is not None and self.patch.step == t:
            i, r = self.patch.output, step.outs[self.patch.output]
            value, own = self.value[0][i], self.value[1]
            if value.shape != outs[i].shape:
                raise InputError(f"the source batch gives {self.patch.wire.name} of shape {tuple(value.shape)} but "
                                 f"the base batch has {tuple(outs[i].shape)}: base and source batches "
                                 "must have the same shapes")
            outs, mapped, expl = list(outs), list(mapped), list(expl)
            outs[i] = self.patch.site.patched(outs[i], value)
            mapped[i] = squares.map(r, outs[i])
            expl[i] = mapped[i] if own is None else own[i]
        return tuple(zip(outs, mapped, expl))


class _Keep(Interpreter):
    """Runs another interpreter's steps as it would, keeping the outputs of step ``step``."""

    def __init__(self, inner: Interpreter, step: int, kept: list[tuple[Any, ...]]) -> None:
        super().__init__(inner.plan, inner.params, side=inner.side)
        self.inner, self.step, self.kept = inner, step, kept

    def shape(self, value: Any) -> str:
        return self.inner.shape(value)

    def initial_env(self, xs: Sequence[Any], initial: Any) -> list[Any]:
        return self.inner.initial_env(xs, initial)

    def run_step(self, t: int, step: Step, args: list[Any]) -> tuple[Any, ...]:
        outs = self.inner.run_step(t, step, args)
        if t == self.step:
            self.kept.append(outs)
        return outs
