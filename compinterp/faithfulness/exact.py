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
  one over all tokens, averaged exactly.

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

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import opt_einsum
import torch

from compinterp.errors import CompinterpError, InputError
from compinterp.faithfulness.report import FaithfulnessReport, Metrics
from compinterp.semantics.tensor import NotPolynomialError, PolyNet, tensor_semantics, why_not_polynomial

__all__ = ["ExactError", "ExactResult", "NotPolynomialError", "exact_compare", "fit_gaussian", "frobenius_cosine",
           "frobenius_inner", "frobenius_norm", "gaussian_inner", "gaussian_mean", "why_not_polynomial"]

F64 = torch.float64
MAX_DEPTH = 2
"""Deepest networks compared exactly: two Hadamard stages (degree 4; Gaussian moments of order 8)."""
MAX_TOKEN_TUPLES = 2 ** 20
"""Most token tuples averaged by enumeration; beyond, a Monte-Carlo estimate (and ``exact=False``)."""
_SEARCH_ABOVE = 1e8
"""Contractions the greedy path would cost more flops than this get an optimal (dynamic programming) path."""
_CHEAP = 1e6
"""Terms whose Gram form costs fewer flops than this are contracted in that form without comparing."""
MC_SAMPLES = 2 ** 17
"""Samples of the Monte-Carlo estimate used where the exact path is out of reach."""
MAX_QUADRATIC = 2 ** 24
"""Most numbers in the ``outputs x (N + 1) x (N + 1)`` matrices of the closed form for one-stage networks."""
_BATCH = 2 ** 22
"""Numbers (32 MB) in the weighted operand of one batched product of the closed form (outputs x units x
(N + 1)): one product for most layers, memory bounded for the largest."""


class ExactError(CompinterpError, ValueError):
    """An exact computation is out of reach for these diagrams (too many Hadamard stages)."""


# --------------------------------------------------------------------------------------------
# The square chain: every stage as squares of linear forms, so Wick terms have symmetries.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Squares:
    """``f(x^) = O t_K`` with ``t_0 = x^`` and ``t_k = (Q_k t_{k-1})**2`` (squares taken elementwise).

    From a :class:`PolyNet` by ``(a)(b) = ((a + b)/2)**2 - ((a - b)/2)**2`` at every unit.
    """

    Qs: tuple[torch.Tensor, ...]
    O: torch.Tensor


def _squares(net: PolyNet) -> _Squares:
    """The square chain of ``net``; rows that vanish (``L = R`` units) are dropped."""
    Qs: list[torch.Tensor] = []
    keep: torch.Tensor | None = None

    def through(M: torch.Tensor) -> torch.Tensor:
        """``M S`` for ``s = S t``: the previous stage read through its squares."""
        return M if keep is None else torch.cat([M, -M], dim=1)[:, keep]

    for L, R in net.stages:
        L, R = through(L), through(R)
        P = torch.cat([(L + R) / 2, (L - R) / 2])
        keep = P.abs().amax(dim=1) > 0
        Qs.append(P[keep])
    return _Squares(tuple(Qs), through(net.out))


@dataclass(frozen=True)
class _Side:
    """One polynomial as a tensor network: ``ops`` (tensor, labels) times its leaves ``(V[unit] . x^)``.

    ``leaf_units[p]`` is the label of the unit the ``p``-th leaf belongs to; every leaf reads
    the same matrix ``V`` (``Q_1``, or ``O`` for a linear network), whose ``parts`` are made
    once so that contractions can share them: ``"mean"`` ``V[:, 0]``, ``"noise"`` ``V[:, 1:]``,
    ``"full"`` ``V``. ``group`` holds the permutations of leaf positions that leave the
    network unchanged (swapping the two factors of a square).
    """

    ops: list[tuple[torch.Tensor, tuple[int, ...]]]
    parts: dict[str, torch.Tensor]
    leaf_units: list[int]
    group: list[tuple[int, ...]]


def _parts(V: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"mean": V[:, 0], "noise": V[:, 1:], "full": V}


def _side(sq: _Squares, out: int, fresh: Iterator[int], parts: dict[str, torch.Tensor]) -> _Side:
    """The network of ``sq`` with output label ``out`` and fresh unit labels; its leaves read ``parts``
    (of ``Q_1``, or of ``O`` for a linear network)."""
    if not sq.Qs:
        return _Side([], parts, [out], [(0,)])
    ops: list[tuple[torch.Tensor, tuple[int, ...]]] = []
    units: list[int] = []
    swaps: list[dict[int, int]] = []

    def node(k: int, u: int) -> list[int]:
        """Leaves of ``t_k[u]``; records the swap of its two factors."""
        if k == 1:
            first = len(units)
            units.extend([u, u])
            left, right = [first], [first + 1]
        else:
            a, b = next(fresh), next(fresh)
            ops.extend([(sq.Qs[k - 1], (u, a)), (sq.Qs[k - 1], (u, b))])
            left, right = node(k - 1, a), node(k - 1, b)
        swaps.append({**dict(zip(left, right)), **dict(zip(right, left))})
        return left + right

    top = next(fresh)
    ops.append((sq.O.T.contiguous(), (top, out)))
    node(len(sq.Qs), top)
    n = len(units)
    gens = [tuple(s.get(i, i) for i in range(n)) for s in swaps]
    return _Side(ops, parts, units, _closure(gens, n))


def _closure(gens: Sequence[tuple[int, ...]], n: int) -> list[tuple[int, ...]]:
    """The permutation group on ``range(n)`` generated by ``gens``."""
    seen = {tuple(range(n))}
    frontier = list(seen)
    while frontier:
        frontier = [q for p in frontier for g in gens if (q := tuple(g[i] for i in p)) not in seen]
        seen.update(frontier)
    return sorted(seen)


def _product(a: Sequence[tuple[int, ...]], b: Sequence[tuple[int, ...]], swap: bool) -> list[tuple[int, ...]]:
    """Permutations of the leaves of two sides: ``a`` on the first, ``b`` on the second, and
    exchanging the sides when ``swap`` (the two sides are the same network)."""
    n = len(a[0])
    group = [p + tuple(n + i for i in q) for p in a for q in b]
    if swap:
        exchange = tuple(range(n, 2 * n)) + tuple(range(n))
        group = group + [tuple(exchange[i] for i in p) for p in group]
    return group


# --------------------------------------------------------------------------------------------
# Wick's theorem on the leaves, one einsum per orbit of pairings.
# --------------------------------------------------------------------------------------------

def _partial_matchings(items: Sequence[int]) -> Iterator[dict[int, int]]:
    """Every way to pair some of ``items`` (unpaired items map to themselves)."""
    if not items:
        yield {}
        return
    first, rest = items[0], items[1:]
    for m in _partial_matchings(rest):
        yield {first: first, **m}
    for k, other in enumerate(rest):
        for m in _partial_matchings(rest[:k] + rest[k + 1:]):
            yield {first: other, other: first, **m}


def _orbits(matchings: Iterator[dict[int, int]], group: Sequence[tuple[int, ...]]) -> list[tuple[tuple[int, ...], int]]:
    """Matchings up to the symmetries ``group``: one representative (partner tuple) per orbit, with its size."""
    seen: set[tuple[int, ...]] = set()
    orbits = []
    for m in matchings:
        partner = tuple(m[i] for i in range(len(m)))
        if partner not in seen:
            orbit = {_act(p, partner) for p in group}
            seen |= orbit
            orbits.append((partner, len(orbit)))
    return orbits


def _act(perm: tuple[int, ...], partner: tuple[int, ...]) -> tuple[int, ...]:
    """The matching ``partner`` with its positions renamed by ``perm``."""
    out = [0] * len(partner)
    for i, j in enumerate(partner):
        out[perm[i]] = perm[j]
    return tuple(out)


Bond = tuple[Any, ...]
"""What a pairing leaves between units once its input index is summed: ``("mean", side, unit)`` for a
singleton, ``("diag", side, unit)`` for the two leaves of one unit, ``("gram", side, side, unit, unit)``."""


Paths = dict[tuple[Any, ...], tuple[Any, float]]
"""Contraction paths found during one computation, by operands and output: the moments of two networks
of the same shapes repeat the same contractions (never kept from one call to the next)."""


def _contract(sides: Sequence[_Side], partner: tuple[int, ...], part: str, out: int, fresh: Iterator[int],
              cache: dict[tuple[Any, ...], torch.Tensor], paths: Paths) -> torch.Tensor:
    """One Wick term: leaves paired by ``partner`` contract their ``part`` rows over the input index;
    a leaf paired with itself (a singleton) reads the mean part ``V[:, 0]``.

    The term is contracted in the cheaper of two forms (by opt_einsum's flop count): with the
    leaves' input indices open, or with every pairing summed first into a Gram matrix, a
    diagonal or a mean vector (kept in ``cache`` for the other terms, raised elementwise to
    the number of times it occurs).
    """
    leaves = [(k, u) for k, side in enumerate(sides) for u in side.leaf_units]
    open_ops = [op for side in sides for op in side.ops]
    bonds: dict[Bond, int] = {}
    for i, j in enumerate(partner):
        (a, u), (b, v) = leaves[i], leaves[j]
        if i == j:
            open_ops.append((sides[a].parts["mean"], (u,)))
            bond: Bond = ("mean", a, u)
        elif i < j:
            k = next(fresh)
            open_ops.extend([(sides[a].parts[part], (u, k)), (sides[b].parts[part], (v, k))])
            bond = ("diag", a, u) if (a, u) == (b, v) else ("gram", *min(((a, b, u, v), (b, a, v, u))))
        else:
            continue
        bonds[bond] = bonds.get(bond, 0) + 1
    closed = []
    build = 0
    for bond in bonds:
        rows = sides[bond[1]].parts[part].shape
        if bond[0] == "gram":
            other = sides[bond[2]].parts[part].shape[0]
            closed.append(((rows[0], other), bond[3:]))
            if _key(sides, bond, 1, part)[0] not in cache:
                build += rows[0] * other * rows[1]
        else:
            closed.append(((rows[0],), bond[2:]))
    closed += [(tuple(t.shape), labels) for side in sides for t, labels in side.ops]
    closed_path, closed_cost = _path(closed, out, paths)
    open_path, open_cost = _path([(tuple(t.shape), labels) for t, labels in open_ops], out, paths) \
        if closed_cost + build > _CHEAP else (None, math.inf)
    if open_cost <= closed_cost + build:
        return opt_einsum.contract(_equation([labels for _, labels in open_ops], out), *(t for t, _ in open_ops),
                                   optimize=open_path)
    tensors = [_bond(sides, bond, power, part, cache) for bond, power in bonds.items()]
    tensors += [t for side in sides for t, _ in side.ops]
    return opt_einsum.contract(_equation([labels for _, labels in closed], out), *tensors, optimize=closed_path)


def _equation(labels: Sequence[tuple[int, ...]], out: int) -> str:
    """The einsum string of operands with integer ``labels`` and output ``out``."""
    return ",".join("".join(map(opt_einsum.get_symbol, ls)) for ls in labels) + "->" + opt_einsum.get_symbol(out)


def _path(ops: Sequence[tuple[tuple[int, ...], tuple[int, ...]]], out: int, paths: Paths) -> tuple[Any, float]:
    """A contraction path for operands ``(shape, labels)`` and its flop count: greedy, or optimal
    (dynamic programming) when the greedy one is expensive enough to pay for the search."""
    key = (tuple(ops), out)
    if key not in paths:
        eq, shapes = _equation([labels for _, labels in ops], out), [shape for shape, _ in ops]
        path, info = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize="greedy")
        if info.opt_cost > _SEARCH_ABOVE:
            path, info = opt_einsum.contract_path(eq, *shapes, shapes=True, optimize="dp")
        paths[key] = path, float(info.opt_cost)
    return paths[key]


def _key(sides: Sequence[_Side], bond: Bond, power: int, part: str) -> tuple[tuple[Any, ...], bool]:
    """The cache key of a bond's tensor: by the matrices it reads, so sides that share them share it
    (the two sides of ``E[f f]``, the leaves of one side); and whether it is the transpose of the cached one."""
    name = "mean" if bond[0] == "mean" else part
    if bond[0] != "gram":
        return (bond[0], id(sides[bond[1]].parts[name]), power), False
    a, b = id(sides[bond[1]].parts[part]), id(sides[bond[2]].parts[part])
    return ("gram", min(a, b), max(a, b), power), a > b


def _bond(sides: Sequence[_Side], bond: Bond, power: int, part: str,
          cache: dict[tuple[Any, ...], torch.Tensor]) -> torch.Tensor:
    """The tensor of a bond raised elementwise to ``power``, from ``cache`` when it was made before."""
    key, flip = _key(sides, bond, power, part)
    if key not in cache:
        if power > 1:
            base = _bond(sides, bond, 1, part, cache)
            base = base.T if flip else base  # as cached
            cache[key] = base.square() if power == 2 else base ** power
        elif bond[0] == "mean":
            cache[key] = sides[bond[1]].parts["mean"]
        elif bond[0] == "diag":
            cache[key] = sides[bond[1]].parts[part].square().sum(1)
        else:
            first, second = (bond[2], bond[1]) if flip else (bond[1], bond[2])
            cache[key] = sides[first].parts[part] @ sides[second].parts[part].T
    return cache[key].T if flip else cache[key]


def _wick(nets: Sequence[_Squares], mode: str, paths: Paths | None = None) -> torch.Tensor:
    """``E[prod_side f_side,c]`` per output ``c`` for one or two networks (``paths`` may be shared by the
    calls of one computation).

    ``mode="gaussian"``: the leaves read ``z^ = (1, z)``, ``z ~ N(0, I)``: all partial pairings.
    ``mode="frobenius"``: the leaves read a standard complex Gaussian ``w`` against ``conj(w)``:
    pairings between the two sides only, giving ``k! <sym F, sym G>``.
    """
    labels = itertools.count()
    out = next(labels)
    parts = {id(sq): _parts(sq.Qs[0] if sq.Qs else sq.O) for sq in nets}
    sides = [_side(sq, out, labels, parts[id(sq)]) for sq in nets]
    if len(sides) == 1:
        group = sides[0].group
        sizes = [len(sides[0].leaf_units)]
    else:
        group = _product(sides[0].group, sides[1].group, nets[0] is nets[1])
        sizes = [len(s.leaf_units) for s in sides]
    n = sum(sizes)
    if mode == "gaussian":
        matchings = _partial_matchings(list(range(n)))
    else:
        a = sizes[0]
        matchings = ({**{i: a + s[i] for i in range(a)}, **{a + s[i]: i for i in range(a)}}
                     for s in itertools.permutations(range(a)))
    part = "noise" if mode == "gaussian" else "full"
    total = torch.zeros(nets[0].O.shape[0], dtype=nets[0].O.dtype, device=nets[0].O.device)
    cache: dict[tuple[Any, ...], torch.Tensor] = {}
    paths = {} if paths is None else paths
    with opt_einsum.shared_intermediates():
        for partner, count in _orbits(matchings, group):
            total = total + count * _contract(sides, partner, part, out, labels, cache, paths)
    return total


# --------------------------------------------------------------------------------------------
# One stage in closed form: every output a quadratic form of z^ = (1, z).
# --------------------------------------------------------------------------------------------

Quadratic = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``f_c(z^) = a_c + 2 b_c . z + z^T M_c z`` as ``(E f_c, b, M)``: means ``(outputs,)``, ``b`` ``(outputs, N)``,
``M`` ``(outputs, N, N)`` symmetric (views into ``A``)."""


def _quadratic(net: PolyNet) -> Quadratic:
    """The quadratic form of every output of a network of at most one stage, for ``z ~ N(0, I)``.

    ``f_c(z^) = z^T A_c z^`` with ``A_c = sym(L^T diag(O_c) R)`` (``sym(e_0 O_c^T)`` for a linear
    network). When every output reads few of the units (an explanation with a few units per
    output), each product only takes those, padded to the same count with zero weights.
    The outputs go through batched products of :data:`_BATCH` numbers of operand each: on a shared
    CPU every parallel kernel waits for its slowest thread, so fewer kernels are steadier.
    """
    O = 0.5 * net.out  # the 1/2 of sym
    outputs, n = O.shape[0], net.in_dim + 1
    if not net.stages:
        X = O.new_zeros(outputs, n, n)
        X[:, 0, :] = O
    else:
        (L, R), = net.stages
        used = O != 0
        k = int(used.sum(1).max()) if outputs else 0
        units: torch.Tensor | None = None
        if k < 0.75 * O.shape[1]:  # output c reads units[c] (used ones first), weighted O[c, units[c]]
            units = torch.sort((~used).to(torch.uint8), dim=1, stable=True).indices[:, :k]
            O = O.gather(1, units)
        else:
            k = O.shape[1]
        X = O.new_empty(outputs, n, n) if k else O.new_zeros(outputs, n, n)
        step = max(1, _BATCH // max(1, k * n))
        for start in range(0, outputs if k else 0, step):
            part = slice(start, start + step)
            if units is None:
                left, right = L.expand(O[part].shape[0], -1, -1), O[part, :, None] * R
            else:
                left, right = L[units[part]], R[units[part]] * O[part, :, None]
            torch.bmm(left.mT, right, out=X[part])
    A = X + X.mT
    M = A[:, 1:, 1:]
    return A[:, 0, 0] + M.diagonal(dim1=1, dim2=2).sum(1), A[:, 1:, 0], M


def _quadratic_products(forms: Sequence[Quadratic]) -> torch.Tensor:
    """``E[f_a,c f_b,c] = E f_a,c E f_b,c + 4 b_a,c . b_b,c + 2 <M_a,c, M_b,c>_F`` (Isserlis for quadratic
    forms) for every pair of ``forms``, as ``(outputs, forms, forms)``: two batched Gram products."""
    means = torch.stack([form[0] for form in forms], 1)
    b = torch.stack([form[1] for form in forms], 1)
    M = torch.stack([form[2] for form in forms], 1).flatten(2)
    return (means[:, :, None] * means[:, None, :] + 4 * torch.bmm(b, b.mT)) + 2 * torch.bmm(M, M.mT)


def _square_rows(net: PolyNet, lower: bool) -> int:
    """The rows of ``Q_1`` (``O`` for a linear network) in the square chain, without making it: one per
    unit with ``L = R``, two per other unit; a lower bound (one per unit) if ``lower``, else exact when
    all units have ``L = R`` (a symmetric layer) and an upper bound otherwise."""
    if not net.stages:
        return net.out.shape[0]
    L, R = net.stages[0]
    return L.shape[0] if lower or torch.equal(L, R) else 2 * L.shape[0]


def _closed_form_pays(nets: Sequence[PolyNet], pairs: Sequence[tuple[int, int]]) -> bool:
    """Whether the products ``pairs`` of ``nets`` cost fewer multiply-adds in closed form (building each
    ``A_c``: ``(N + 1)^2`` per nonzero of ``O``) than in the Wick engine's Gram form (``Q_1 Q_1'^T``
    and its reduction over outputs), and the closed form's matrices fit: at most :data:`MAX_QUADRATIC`
    numbers, or no more than the largest Gram matrix the engine would make instead."""
    if any(net.depth > 1 for net in nets):
        return False
    n, outputs = nets[0].in_dim + 1, nets[0].out.shape[0]
    units = [_square_rows(net, True) for net in nets]
    if outputs * n * n > max(MAX_QUADRATIC, *(units[a] * units[b] for a, b in pairs)):
        return False
    forms = sum(int((net.out != 0).sum()) * n * n for net in nets if net.stages) + len(pairs) * outputs * n * n

    def gram(rows: Sequence[int]) -> int:
        return sum(rows[a] * rows[b] * (n + outputs) for a, b in pairs)

    return forms <= gram(units) or forms <= gram([_square_rows(net, False) for net in nets])


# --------------------------------------------------------------------------------------------
# Measures: the Gaussian N(mean, cov), folded into the first maps.
# --------------------------------------------------------------------------------------------

def _net(f: Any) -> PolyNet:
    """The float64 tensor semantics of a model (or a PolyNet as is)."""
    return tensor_semantics(f, F64)


def _same_spaces(f: PolyNet, g: PolyNet) -> None:
    if f.dom != g.dom or f.cod != g.cod:
        raise InputError(f"cannot compare {f.dom} -> {f.cod} with {g.dom} -> {g.cod}: "
                         "the two diagrams need the same input and output spaces")


def _no_tokens(f: PolyNet) -> None:
    for wire, token in zip(f.dom.wires, f.tokens):
        if token:
            raise InputError(f"input wire {wire.name} carries token ids (one-hot rows in the tensor semantics), "
                             "where a Gaussian measure is not meaningful; exact_compare averages over all tokens")


def _whitening(n: int, mean: Any, cov: Any, dom: Any, device: torch.device) -> torch.Tensor:
    """``C`` with ``x^ = C z^`` for ``x = mean + cov^{1/2} z``: ``C = [[1, 0], [mean, cov^{1/2}]]``."""
    mu = torch.zeros(n, dtype=F64) if mean is None else torch.as_tensor(mean, dtype=F64).cpu()
    if mu.shape != (n,):
        raise InputError(f"mean has shape {tuple(mu.shape)}; the inputs {dom} need shape ({n},)")
    if not torch.isfinite(mu).all():
        raise InputError("mean holds NaN or infinite values")
    if cov is None:
        root = torch.eye(n, dtype=F64)
    else:
        sigma = torch.as_tensor(cov, dtype=F64).cpu()
        if not torch.isfinite(sigma).all():
            raise InputError("cov holds NaN or infinite values")
        if sigma.shape == (n,):
            sigma = torch.diag(sigma)
        if sigma.shape != (n, n):
            raise InputError(f"cov has shape {tuple(sigma.shape)}; the inputs {dom} need ({n}, {n}) "
                             f"(or ({n},) for variances)")
        if not torch.allclose(sigma, sigma.T, rtol=1e-8, atol=1e-12):
            raise InputError("cov is not symmetric")
        lam, vec = torch.linalg.eigh(sigma)
        if n and lam.min() < -1e-9 * max(lam.abs().max().item(), 1e-300):
            raise InputError(f"cov is not positive semi-definite (smallest eigenvalue {lam.min().item():.3g})")
        root = vec * lam.clamp_min(0).sqrt()
    C = torch.zeros(n + 1, n + 1, dtype=F64)
    C[0, 0] = 1
    C[1:, 0] = mu
    C[1:, 1:] = root
    return C.to(device)


def _gaussian_nets(nets: Sequence[PolyNet], mean: Any, cov: Any) -> list[PolyNet]:
    """The networks ``z^ -> f(C z^)``, reading standard normal ``z``."""
    for net in nets:
        _no_tokens(net)
    if mean is None and cov is None:
        return list(nets)
    C = _whitening(nets[0].in_dim, mean, cov, nets[0].dom, nets[0].out.device)
    return [net.substitute(C) for net in nets]


def _gaussian_moments(nets: Sequence[PolyNet], pairs: Sequence[tuple[int, int]], mean: Any = None, cov: Any = None,
                      closed: bool | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``E[f_a,c f_b,c]`` for each pair ``(a, b)`` of ``nets``, and ``E[f_0,c]``, under ``N(mean, cov)``.

    Networks of at most one stage use the closed form for quadratic forms where it is cheaper
    (``closed=None``; ``True`` or ``False`` forces a path), the rest the Wick engine.
    """
    nets = _gaussian_nets(nets, mean, cov)
    if closed is None:
        closed = _closed_form_pays(nets, pairs)
    if closed:
        if any(net.depth > 1 for net in nets):
            raise ExactError("the closed form is for networks of at most one Hadamard stage")
        forms = [_quadratic(net) for net in nets]
        products = _quadratic_products(forms)
        return [products[:, a, b] for a, b in pairs], forms[0][0]
    chains = [_squares(net) for net in nets]
    paths: Paths = {}
    return ([_wick([chains[a], chains[b]], "gaussian", paths) for a, b in pairs],
            _wick(chains[:1], "gaussian", paths))


def _check_depth(*nets: PolyNet) -> None:
    for net in nets:
        if net.depth > MAX_DEPTH:
            raise ExactError(f"{net.dom} -> {net.cod} has {net.depth} Hadamard stages (degree {net.degree}); "
                             f"exact moments are implemented up to {MAX_DEPTH} stages (degree {2 ** MAX_DEPTH})")


def gaussian_inner(f: Any, g: Any, *, mean: Any = None, cov: Any = None) -> torch.Tensor:
    """``E_x[f_c(x) g_c(x)]`` for each output ``c``, exactly, for ``x ~ N(mean, cov)`` (standard normal by default).

    ``f`` and ``g`` are models (or :class:`PolyNet`) with the same spaces; ``mean`` and
    ``cov`` cover all input wires side by side (``cov`` may be a vector of variances).
    """
    F, G = _net(f), _net(g)
    _same_spaces(F, G)
    _check_depth(F, G)
    products, _ = _gaussian_moments([F] if f is g else [F, G], [(0, 0)] if f is g else [(0, 1)], mean, cov)
    return products[0]


def gaussian_mean(f: Any, *, mean: Any = None, cov: Any = None) -> torch.Tensor:
    """``E_x[f_c(x)]`` for each output ``c``, exactly, for ``x ~ N(mean, cov)``."""
    F = _net(f)
    _check_depth(F)
    return _wick([_squares(_gaussian_nets([F], mean, cov)[0])], "gaussian")


def frobenius_inner(f: Any, g: Any) -> torch.Tensor:
    """``<sym F_c, sym G_c>_F`` for each output ``c``: the Frobenius inner product of the symmetrised
    coefficient tensors over padded inputs ``(1, x)`` (the shallower network lifted to the common degree)."""
    F, G = _net(f), _net(g)
    _same_spaces(F, G)
    _check_depth(F, G)
    depth = max(F.depth, G.depth)
    sf = _squares(F.lift(depth))
    nets = [sf, sf] if f is g else [sf, _squares(G.lift(depth))]
    return _wick(nets, "frobenius") / math.factorial(2 ** depth)


def frobenius_norm(f: Any) -> float:
    """``sqrt(sum_c ||sym F_c||_F^2)``."""
    return math.sqrt(max(frobenius_inner(f, f).sum().item(), 0.0))


def frobenius_cosine(f: Any, g: Any) -> float:
    """``<sym F, sym G> / (||sym F|| ||sym G||)``, all outputs together; invariant to the weights' symmetries."""
    fg, ff, gg = (frobenius_inner(a, b).sum().item() for a, b in ((f, g), (f, f), (g, g)))
    return _cosine(fg, ff, gg)


def fit_gaussian(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and covariance of ``samples`` ``(n, N)`` (all input wires side by side), for a data-aware
    exact check."""
    x = torch.as_tensor(samples, dtype=F64)
    if x.dim() != 2 or x.shape[0] < 2:
        raise InputError(f"fit_gaussian needs samples of shape (n >= 2, N), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError("fit_gaussian: the samples hold NaN or infinite values")
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


# --------------------------------------------------------------------------------------------
# Comparing two models.
# --------------------------------------------------------------------------------------------

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


def exact_compare(model: Any, other: Any, *, mean: Any = None, cov: Any = None,
                  samples: int = MC_SAMPLES) -> ExactResult:
    """Compare two polynomial models (or PolyNets) with the same spaces, exactly, without data.

    Inputs are ``N(mean, cov)`` (standard normal by default; estimate both from data with
    :func:`fit_gaussian` for a data-aware check), or, when the inputs are token ids feeding
    ``Embed`` boxes, uniform over all tokens (and token tuples). Past the exact limits
    (more than :data:`MAX_DEPTH` stages, more than :data:`MAX_TOKEN_TUPLES` token tuples)
    a Monte-Carlo estimate from ``samples`` inputs stands in, with ``exact=False`` and a note.
    Raises :class:`NotPolynomialError` naming the first non-polynomial box.
    """
    for m in (model, other):
        reason = why_not_polynomial(m) if hasattr(m, "diagram") else None
        if reason is not None:
            raise NotPolynomialError(f"no exact comparison: {reason}")
    f, g = _net(model), _net(other)
    _same_spaces(f, g)
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
        measure = "N(0, I)" if mean is None and cov is None else "N(mean, cov)"
        if max(f.depth, g.depth) <= MAX_DEPTH:
            if model is other:
                (ff,), mf = _gaussian_moments([f], [(0, 0)], mean, cov)
                moments = (ff, ff, ff, mf)
            else:
                (ff, fg, gg), mf = _gaussian_moments([f, g], [(0, 0), (0, 1), (1, 1)], mean, cov)
                moments = (ff, fg, gg, mf)
            exact, note = True, "nothing approximated (Isserlis/Wick moments in float64)"
        else:
            C = _whitening(f.in_dim, mean, cov, f.dom, torch.device("cpu"))

            def draw(gen: torch.Generator, n: int) -> torch.Tensor:
                z = torch.randn(n, f.in_dim, dtype=F64, generator=gen)
                return (torch.cat([torch.ones(n, 1, dtype=F64), z], 1) @ C.T).to(f.out.device)

            moments, se = _sampled(f, g, draw, samples)
            exact = False
            note = (f"degree {max(f.degree, g.degree)} is past the exact limit (degree {2 ** MAX_DEPTH}): "
                    f"Monte-Carlo estimate from {samples} samples, relative standard error of mse {se:.2g}")
    return _result(moments, outputs, measure, exact, note)


Moments = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
"""Per output ``c``: ``E f_c^2``, ``E f_c g_c``, ``E g_c^2``, ``E f_c``."""


def _token_moments(f: PolyNet, g: PolyNet, samples: int) -> tuple[Moments, bool, str]:
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


def _sampled(f: PolyNet, g: PolyNet, draw: Any, n: int) -> tuple[Moments, float]:
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


def _cosine(fg: float, ff: float, gg: float) -> float:
    """``fg / sqrt(ff gg)``, 1 when both are zero and 0 when one is."""
    if ff <= 0 or gg <= 0:
        return 1.0 if ff <= 0 and gg <= 0 else 0.0
    return fg / math.sqrt(ff * gg)


def _result(moments: Moments, outputs: tuple[str, ...], measure: str, exact: bool, note: str) -> ExactResult:
    """The metrics from the per-output moments (negative round-off clipped to zero)."""
    ff, fg, gg, mf = moments
    mse = (ff - 2 * fg + gg).clamp_min(0)
    var = (ff - mf ** 2).clamp_min(0)
    var = torch.where(var <= 1e-12 * ff, torch.zeros_like(var), var)
    total_mse, total_var, total_ff = mse.sum().item(), var.sum().item(), ff.sum().item()
    fvu = _ratio(total_mse, total_var)
    return ExactResult(
        rel_l2=math.sqrt(_ratio(total_mse, total_ff)), fvu=fvu, faithfulness=1 - fvu,
        cosine=_cosine(fg.sum().item(), total_ff, gg.sum().item()), mse=total_mse, outputs=outputs,
        per_output_fvu=tuple(_ratio(e, v) for e, v in zip(mse.tolist(), var.tolist())),
        per_output_rel_l2=tuple(math.sqrt(_ratio(e, v)) for e, v in zip(mse.tolist(), ff.tolist())),
        measure=measure, exact=exact, note=note)


def exact_report(model: Any, explanation: Any, *, mean: Any = None, cov: Any = None) -> FaithfulnessReport:
    """:func:`exact_compare` of ``model`` with a second model, or with an interpretation's
    explanation when its maps on the input and output wires are identities, as a
    :class:`~compinterp.faithfulness.FaithfulnessReport` marked ``exact`` (end to end only).

    Its ``cosine`` is the cosine of the two functions in ``L2`` of the input measure, and
    ``note`` names the measure and anything approximated.
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
    result = exact_compare(model, other, mean=mean, cov=cov)
    metrics = Metrics(fvu=result.fvu, rel_l2=result.rel_l2, cosine=result.cosine, n=0)
    return FaithfulnessReport(metrics, (), samples=0, exact=result.exact,
                              note=f"{result.measure}; {result.note}")
