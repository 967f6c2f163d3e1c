"""eigen: a Bilinear box into a symmetric eigen-layer, keeping its largest eigencomponents.

A Bilinear box computes ``y_c = x^T B_c x^ + d_c`` on the padded input ``x^ = (1, x)``
(no padding when it has no biases), with ``B[c] = sum_h D[c, h] L^_h R^_h^T``. Only the
symmetric part acts, ``B_sym[c] = (B_c + B_c^T) / 2``, so in an orthonormal basis ``u_g``
of the outputs (``g`` a *group*)

    Q_g = sum_c u_g[c] B_sym[c] = sum_m lambda_gm v_gm v_gm^T,    y = sum_g u_g sum_m lambda_gm (v_gm . x^)^2 + d.

Keeping some components gives a Bilinear box with ``L^ = R^ = V`` (one hidden unit per kept
component, so ``l = r = v[0]`` when padded), ``D[c, (g, m)] = u_g[c] lambda_gm``, and the
same output bias ``d`` (the degree-0 part is not touched). Because the ``u_g`` are
orthonormal and the ``v_gm`` of a group too, the Frobenius error is exactly

    ||B_sym - B_sym^(kept)||_F = sqrt(sum of the dropped lambda^2).

Modes: ``per_output`` (``u_g = e_c``, top-``k`` by ``|lambda|`` in each output),
``per_direction`` (``u_g`` the output directions of an SVD of the outputs, most important
first: eigenvectors of ``G = D K D^T``, ``K`` the units' symmetrised Gram matrix; keep the
top ``directions`` of them and the top-``k`` components of each), ``threshold`` (the same
directions, keeping every component with ``|lambda| >= threshold``). ``fold=`` first folds
the Linear/Unembed boxes named (e.g. the embedding and the unembedding, across a residual
stream) into the box, so the eigenvectors live in input space and the directions in
logit space. Lossless at ``k = min(2 * hidden, inputs)`` (each ``B_c`` has rank at most ``2 hidden``).

>>> import torch
>>> from compinterp.model import Model
>>> from compinterp.syntax import Space, Bilinear
>>> x, y = Space("x", 6), Space("y", 2)
>>> model = Model(Bilinear("mlp", x, y, hidden=8), seed=0, dtype=torch.float64)
>>> small = eigen(model, "mlp", k=2)
>>> small.boxes["mlp_eig"].data["hidden"]
4
>>> full = eigen(model, "mlp", k=6)
>>> inputs = torch.randn(3, 6, dtype=torch.float64)
>>> torch.allclose(full(inputs), model(inputs))
True
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compinterp.errors import BoxError
from compinterp.model import Model
from compinterp.refinement.base import Rewrite
from compinterp.refinement.passes._common import (Factors, find_box, fresh, grid, in_range, output_gram, params64,
                                                  replace)
from compinterp.refinement.passes.fuse import Work, fold, foldable
from compinterp.refinement.passes.graph import Net
from compinterp.syntax import Bilinear, Box

MODES = ("per_output", "per_direction", "threshold")
"""How components are chosen: top-k per output, top-k per output direction, or by a global ``|lambda|``."""
_CHUNK = 2 ** 22
"""Most numbers of the groups' matrices built at once."""
_RANK_TOL = 1e-12
"""A direction whose ``||Q_g||_F`` is below this fraction of ``||B_sym||_F`` counts as zero."""


@dataclass(frozen=True)
class Spectrum:
    """The eigenvalues of a Bilinear box's ``B_sym``, group by group (outputs or output directions).

    ``values[g]`` are the eigenvalues of ``Q_g`` sorted by ``|lambda|``, largest first;
    ``directions[:, g]`` is the output direction ``u_g``. The eigenvectors are recomputed
    for the groups a selection keeps (so no ``groups x inputs x inputs`` tensor is held).
    """

    values: torch.Tensor
    directions: torch.Tensor
    factors: Factors
    vectors: torch.Tensor | None = None
    """Every group's eigenvectors (``groups x in^ x in^``, columns in the order of ``values``) when they are
    few enough to keep (at most :data:`_CHUNK` numbers); else recomputed for the groups a selection keeps."""

    @property
    def rank(self) -> int:
        """The number of groups whose matrix is not zero (up to round-off)."""
        norms = self.values.square().sum(1).sqrt()
        return int((norms > _RANK_TOL * norms.square().sum().sqrt()).sum())

    def eigh(self, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues and eigenvectors (columns) of ``Q_g`` for the groups ``groups``, sorted by ``|lambda|``."""
        if self.vectors is not None:
            return self.values[groups], self.vectors[groups]
        return _eigh(self.factors, self.directions[:, groups])

    def select(self, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded ``V`` (kept components as rows) and ``D`` of the eigen-layer keeping the components
        ``keep[g, m]``: ``D[c, (g, m)] = u_g[c] lambda_gm``."""
        used = keep.any(1).nonzero().flatten()
        rows, outs = [], []
        for chunk in used.split(_step(self.factors)):
            lam, V = self.eigh(chunk)
            g, m = keep[chunk].nonzero(as_tuple=True)
            rows.append(V[g, :, m])
            outs.append(self.directions[:, chunk[g]] * lam[g, m])
        return torch.cat(rows), torch.cat(outs, 1)


def _step(factors: Factors) -> int:
    """How many groups' ``inputs x inputs`` matrices to build at once."""
    n = factors.L.shape[1]
    return max(1, _CHUNK // (n * n))


def _eigh(factors: Factors, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues and eigenvectors of ``Q_g = einsum("hid, hid in1, hid in2 -> in1 in2", u_g^T D, L^, R^)``
    (symmetrised) for the directions ``u_g`` (columns), sorted by ``|lambda|``, largest first."""
    Q = torch.einsum("gh,hi,hj->gij", directions.T @ factors.D, factors.L, factors.R)
    lam, V = torch.linalg.eigh((Q + Q.transpose(1, 2)) / 2)
    order = lam.abs().argsort(dim=1, descending=True, stable=True)
    return lam.gather(1, order), V.gather(2, order[:, None, :].expand_as(V))


def spectrum(factors: Factors, basis: str) -> Spectrum:
    """The eigenvalues of ``B_sym`` in the output basis ``"per_output"`` (``u_g = e_g``) or ``"per_direction"``
    (``u_g`` the eigenvectors of ``G = D K D^T``, largest first), computed a chunk of groups at a time."""
    D = factors.D
    if basis == "per_output":
        U = torch.eye(D.shape[0], dtype=D.dtype, device=D.device)
    else:
        _, U = torch.linalg.eigh(output_gram(factors))
        U = U.flip(1)
    step, n = _step(factors), factors.L.shape[1]
    kept = U.shape[1] * n * n <= _CHUNK
    values, vectors = [], []
    for g in range(0, U.shape[1], step):
        lam, V = _eigh(factors, U[:, g:g + step])
        values.append(lam)
        vectors += [V] if kept else []
    return Spectrum(torch.cat(values), U, factors, torch.cat(vectors) if kept else None)


def full_k(box: Box) -> int:
    """The ``k`` at which the eigen-layer is exact: ``min(2 hidden, padded inputs)``."""
    return min(2 * box.data["hidden"], box.dom.dim + int(box.data["bias"]))


def _keep(spec: Spectrum, mode: str, settings: Mapping[str, Any], box: str) -> torch.Tensor:
    """The mask ``keep[g, m]`` of the components a setting keeps (checked, errors naming the box)."""
    groups, n = spec.values.shape
    keep = torch.zeros(groups, n, dtype=torch.bool, device=spec.values.device)
    if mode == "threshold":
        t = settings.get("threshold")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
            raise BoxError(f"eigen: threshold={t!r} for box '{box}' must be a number >= 0")
        keep = spec.values.abs() >= t
        if not keep.any():
            raise BoxError(f"eigen: threshold={t!r} keeps no eigencomponent of box '{box}' "
                           f"(its largest |lambda| is {spec.values.abs().max().item():.6g})")
        return keep
    k = in_range("eigen", box, "k", settings.get("k"), 1, n)
    top = spec.values.shape[0] if mode == "per_output" else max(1, spec.rank)
    m = in_range("eigen", box, "directions", settings.get("directions", top), 1, groups) \
        if mode == "per_direction" else groups
    keep[:m, :k] = True
    return keep


def _check_mode(mode: object) -> str:
    if mode not in MODES:
        raise BoxError(f"eigen: mode={mode!r} is not one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


def eigen(model: Model, box: str, k: int | None = None, *, mode: str = "per_output", directions: int | None = None,
          threshold: float | None = None, fold: Sequence[str] = ()) -> Model:
    """``model`` with Bilinear box ``box`` rewritten into an eigen-layer (see the module docstring).

    ``k`` components per output (``per_output``) or per output direction (``per_direction``,
    in the top ``directions`` directions, default all nonzero ones), or every component with
    ``|lambda| >= threshold`` (``threshold``); ``fold`` names Linear/Unembed boxes to fold in first.
    """
    _check_mode(mode)
    settings: dict[str, Any] = {"mode": mode}
    if mode == "threshold":
        settings["threshold"] = threshold
    else:
        settings["k"] = k
        if mode == "per_direction" and directions is not None:
            settings["directions"] = directions
    if fold:
        settings["fold"] = tuple(fold)
    return _apply(model, box, settings)


def _folded(model: Model, box: str, names: Sequence[str]) -> tuple[Work | None, Box, dict[str, torch.Tensor]]:
    """The box to decompose, with ``names`` folded in first (then also the work holding it)."""
    find_box(model, box, (Bilinear,), "eigen")
    if not names:
        return None, model.boxes[box], params64(model, box)
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise BoxError(f"eigen: fold={names!r} for box '{box}' must be a sequence of box names")
    work = Work.of(model)
    nodes = work.net.occurrences(box)
    if len(nodes) != 1:
        raise BoxError(f"eigen: box '{box}' is used {len(nodes)} times (shared weights), so nothing can be folded "
                       "into one use of it")
    target = fold(work, nodes[0], names, "eigen")
    return work, target.box, work.params[target.box.name]


def _basis(mode: str) -> str:
    """The output basis a mode decomposes in."""
    return "per_output" if mode == "per_output" else "per_direction"


def _apply(model: Model, box: str, settings: Mapping[str, Any], spec: Spectrum | None = None) -> Model:
    """The rewrite; ``spec``: the spectrum of the (folded) box, if already known."""
    mode = _check_mode(settings.get("mode", "per_output"))
    fold = settings.get("fold", ())
    if spec is None:
        _, target, p = _folded(model, box, fold)
        spec = spectrum(Factors.of(target, p), _basis(mode))
    return layer(model, box, fold, spec, _keep(spec, mode, settings, box))


def layer(model: Model, box: str, fold: Sequence[str], spec: Spectrum, keep: torch.Tensor) -> Model:
    """``model`` with Bilinear box ``box`` (``fold`` folded in first) rewritten into the eigen-layer keeping
    the components ``keep[g, m]`` of its spectrum ``spec``."""
    work, target, _ = _folded(model, box, fold)
    factors = spec.factors
    V, D = spec.select(keep)
    taken = set(model.boxes) | (set(work.params) if work is not None else set())
    new = Bilinear(fresh(taken, f"{target.name}_eig"), target.dom, target.cod, hidden=V.shape[0],
                   bias=factors.biased)
    params = factors.params(V, V, D)
    if work is None:
        return replace(model, {box: new}, {new.name: params})
    node = next(n for n in work.net.nodes if n.box.name == target.name)
    node.box = new
    work.add_box(new, params)
    return work.model(model)


class Spectra:
    """Spectra of models' Bilinear boxes, each computed once per model, box, folding, output basis and state of the
    weights, and kept while the model lives: passes that decompose the same boxes (eigen, cp) can share one.

    >>> from compinterp.refinement.passes import CP
    >>> from compinterp.syntax import Space
    >>> model = Model(Bilinear("mlp", Space("x", 5), Space("y", 2), hidden=6), seed=0)
    >>> spectra = Spectra()
    >>> _, spec, direct = spectra.of(model, "mlp", (), "per_direction")
    >>> CP(spectra=spectra).prepared(model, "mlp").spectrum is spec, direct
    (True, True)
    """

    def __init__(self) -> None:
        self._known: weakref.WeakKeyDictionary[Model, dict[tuple[Any, ...], tuple[Box, Spectrum, bool]]] \
            = weakref.WeakKeyDictionary()

    def of(self, model: Model, box: str, fold: Sequence[str], basis: str) -> tuple[Box, Spectrum, bool]:
        """The (folded) box, its spectrum in ``basis``, and whether it reads the model's input and writes its output
        (:meth:`~.graph.Net.direct`, once folded); recomputed when a weight has changed in place."""
        known = self._known.setdefault(model, {})
        key = (box, tuple(fold), basis, tuple(p._version for p in model.parameters()))
        if key not in known:
            work, target, p = _folded(model, box, tuple(fold))
            net = work.net if work is not None else Net(model.diagram)
            direct = net.direct(next(n for n in net.nodes if n.box.name == target.name))
            known[key] = (target, spectrum(Factors.of(target, p), basis), direct)
        return known[key]


class Eigen:
    """The eigen pass on every Bilinear box (used once), with a grid of settings.

    Args:
        ks: the ``k`` to offer (default: the grid 2^j, 3·2^j below the exact ``k``).
        mode: ``per_output``, ``per_direction`` or ``threshold``.
        counts: in ``threshold`` mode, how many components to keep (default: the grid 2^j, 3·2^j
            below the number of nonzero components); each becomes the threshold that keeps them.
        fold: ``None``, ``"auto"`` (fold every Linear/Unembed box next to the Bilinear box,
            across its residual stream), or box names.
        spectra: where the spectra are kept (:class:`Spectra`; default: the pass's own), to share them with
            other passes.
    """

    name = "eigen"

    def __init__(self, ks: Sequence[int] | None = None, mode: str = "per_output",
                 counts: Sequence[int] | None = None, fold: str | Sequence[str] | None = None,
                 spectra: Spectra | None = None) -> None:
        self.ks = None if ks is None else sorted(set(ks), reverse=True)
        self.mode = _check_mode(mode)
        self.counts = None if counts is None else sorted(set(counts), reverse=True)
        self.fold = fold
        self.spectra = Spectra() if spectra is None else spectra

    def spectrum(self, model: Model, box: str, fold: Sequence[str] = ()) -> tuple[Box, Spectrum]:
        """The (folded) box and its spectrum in this pass's basis, computed once per model and state of its
        weights (the candidates and every rewrite applied to the same model share it; kept while the model
        lives, recomputed when a weight changes in place)."""
        return self._known(model, box, fold)[:2]

    def _known(self, model: Model, box: str, fold: Sequence[str]) -> tuple[Box, Spectrum, bool]:
        """The (folded) box, its spectrum, and whether it reads the model's input and writes its output
        (:meth:`Spectra.of`)."""
        return self.spectra.of(model, box, fold, _basis(self.mode))

    def _boxes(self, model: Model) -> list[tuple[str, tuple[str, ...]]]:
        """Each Bilinear box used once, with the names to fold into it."""
        net = Work.of(model).net
        out = []
        for name, box in model.boxes.items():
            nodes = net.occurrences(name)
            if type(box) is not Bilinear or len(nodes) != 1:
                continue
            names: tuple[str, ...] = ()
            if self.fold == "auto":
                names = tuple(foldable(net, nodes[0]))
            elif self.fold:
                names = tuple(n for n in ((self.fold,) if isinstance(self.fold, str) else self.fold)
                              if n in foldable(net, nodes[0]))
            out.append((name, names))
        return out

    def _rewrites(self, model: Model, lossless: bool) -> list[Rewrite]:
        rewrites = []
        for name, names in self._boxes(model):
            base: dict[str, Any] = {"mode": self.mode} | ({"fold": names} if names else {})
            target, spec = self.spectrum(model, name, names)
            top = full_k(target)
            extra = {"directions": max(1, spec.rank)} if self.mode == "per_direction" else {}
            if self.mode == "threshold":
                sizes = spec.values.abs().flatten().sort(descending=True).values
                nonzero = int((sizes > _RANK_TOL * sizes.square().sum().sqrt()).sum())
                if lossless:
                    smallest = sizes[nonzero - 1].item() if nonzero else 0.0
                    rewrites.append(Rewrite(self.name, name, base | {"threshold": smallest}))
                    continue
                counts = [c for c in (self.counts or grid(nonzero)) if 1 <= c < nonzero]
                rewrites += [Rewrite(self.name, name, base | {"threshold": sizes[c - 1].item()}) for c in counts]
            elif lossless:
                rewrites.append(Rewrite(self.name, name, base | {"k": top} | extra))
            else:
                ks = [k for k in (self.ks or grid(top)) if 1 <= k < top]
                rewrites += [Rewrite(self.name, name, base | {"k": k} | extra) for k in ks]
        return rewrites

    def truncations(self, model: Model, rewrites: Sequence[Rewrite]) -> tuple[Spectrum, list[torch.Tensor]] | None:
        """The spectrum of the (folded) box that ``rewrites`` all truncate, in this pass's mode, and the mask of
        the components each keeps, when that box reads the model's inputs and writes its outputs (so each
        rewrite changes the model by exactly the components it drops: the search scores them in closed
        form, from the spectrum); else ``None``."""
        if not rewrites:
            return None
        box, fold = rewrites[0].box, tuple(rewrites[0].settings.get("fold", ()))
        if any(r.pass_name != self.name or r.box != box or tuple(r.settings.get("fold", ())) != fold
               or r.settings.get("mode", "per_output") != self.mode for r in rewrites):
            return None
        target, spec, direct = self._known(model, box, fold)
        if not direct or target.dom != model.dom or target.cod != model.cod or spec.vectors is None:
            return None
        return spec, [_keep(spec, self.mode, r.settings, box) for r in rewrites]

    def candidates(self, model: Model) -> list[Rewrite]:
        """For each Bilinear box, the settings below the exact one, mildest (most components) first."""
        return self._rewrites(model, lossless=False)

    def apply(self, model: Model, rewrite: Rewrite) -> Model:
        """The model with the box rewritten into an eigen-layer."""
        if rewrite.pass_name != self.name:
            raise BoxError(f"the eigen pass cannot apply a {rewrite.pass_name!r} rewrite ({rewrite})")
        settings = rewrite.settings
        spec, fold = None, settings.get("fold", ())
        if settings.get("mode", "per_output") in MODES and _basis(settings.get("mode", "per_output")) == \
                _basis(self.mode) and isinstance(fold, (list, tuple)) and all(isinstance(n, str) for n in fold):
            spec = self.spectrum(model, rewrite.box, fold)[1]
        return _apply(model, rewrite.box, settings, spec)

    def lossless(self, model: Model) -> list[Rewrite]:
        """For each Bilinear box, the exact setting: ``k = min(2 hidden, inputs)``, or the threshold that keeps
        every component above round-off (``|lambda| > 1e-12 ||B_sym||_F``)."""
        return self._rewrites(model, lossless=True)
