"""Measures: the Gaussian ``N(mean, cov)``, folded into the first maps; Gaussian and Frobenius
inner products of two networks, and a Gaussian fitted to data."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from compinterp.data import Input, as_source, fit
from compinterp.errors import CompinterpError, InputError
from compinterp.faithfulness.distributed import all_reduce, world
from compinterp.faithfulness.exact.chain import Paths, squares, wick
from compinterp.faithfulness.exact.closed_form import (bilinear_units, closed_form_pays, gram_frobenius, quadratic,
                                                      quadratic_products, units_frobenius)
from compinterp.semantics.tensor import PolyNet, tensor_semantics

F64 = torch.float64
MAX_DEPTH = 2
"""Deepest networks compared exactly: two Hadamard stages (degree 4; Gaussian moments of order 8)."""


class ExactError(CompinterpError, ValueError):
    """An exact computation is out of reach for these diagrams (too many Hadamard stages)."""


def as_net(f: Any) -> PolyNet:
    """The float64 tensor semantics of a model (or a PolyNet as is)."""
    return tensor_semantics(f, F64)


def same_spaces(f: PolyNet, g: PolyNet) -> None:
    if f.dom != g.dom or f.cod != g.cod:
        raise InputError(f"cannot compare {f.dom} -> {f.cod} with {g.dom} -> {g.cod}: "
                         "the two diagrams need the same input and output spaces")


def _no_tokens(f: PolyNet) -> None:
    for wire, token in zip(f.dom.wires, f.tokens):
        if token:
            raise InputError(f"input wire {wire.name} carries token ids (one-hot rows in the tensor semantics), "
                             "where a Gaussian measure is not meaningful; exact_compare averages over all tokens")


def whitening(n: int, mean: Any, cov: Any, dom: Any, device: torch.device) -> torch.Tensor:
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


def gaussian_nets(nets: Sequence[PolyNet], mean: Any, cov: Any) -> list[PolyNet]:
    """The networks ``z^ -> f(C z^)``, reading standard normal ``z``."""
    for net in nets:
        _no_tokens(net)
    if mean is None and cov is None:
        return list(nets)
    C = whitening(nets[0].in_dim, mean, cov, nets[0].dom, nets[0].out.device)
    return [net.substitute(C) for net in nets]


def gaussian_moments(nets: Sequence[PolyNet], pairs: Sequence[tuple[int, int]], mean: Any = None, cov: Any = None,
                     closed: bool | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """``E[f_a,c f_b,c]`` for each pair ``(a, b)`` of ``nets``, and ``E[f_0,c]``, under ``N(mean, cov)``.

    Networks of at most one stage use the closed form for quadratic forms where it is cheaper
    (``closed=None``; ``True`` or ``False`` forces a path), the rest the Wick engine.
    """
    nets = gaussian_nets(nets, mean, cov)
    if closed is None:
        closed = closed_form_pays(nets, pairs)
    if closed:
        if any(net.depth > 1 for net in nets):
            raise ExactError("the closed form is for networks of at most one Hadamard stage")
        forms = [quadratic(net) for net in nets]
        products = quadratic_products(forms)
        return [products[:, a, b] for a, b in pairs], forms[0][0]
    chains = [squares(net) for net in nets]
    paths: Paths = {}
    return ([wick([chains[a], chains[b]], "gaussian", paths) for a, b in pairs],
            wick(chains[:1], "gaussian", paths))


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
    F, G = as_net(f), as_net(g)
    same_spaces(F, G)
    _check_depth(F, G)
    products, _ = gaussian_moments([F] if f is g else [F, G], [(0, 0)] if f is g else [(0, 1)], mean, cov)
    return products[0]


def gaussian_mean(f: Any, *, mean: Any = None, cov: Any = None) -> torch.Tensor:
    """``E_x[f_c(x)]`` for each output ``c``, exactly, for ``x ~ N(mean, cov)``."""
    F = as_net(f)
    _check_depth(F)
    return wick([squares(gaussian_nets([F], mean, cov)[0])], "gaussian")


def frobenius_inner(f: Any, g: Any) -> torch.Tensor:
    """``<sym F_c, sym G_c>_F`` for each output ``c``: the Frobenius inner product of the symmetrised
    coefficient tensors over padded inputs ``(1, x)`` (the shallower network lifted to the common degree);
    networks of one stage in closed form from Gram matrices (:func:`~.closed_form.gram_frobenius`), two
    single bias-free ``Bilinear`` models straight from their weights (:func:`~.closed_form.bilinear_units`)."""
    units = bilinear_units(f), bilinear_units(g)
    if units[0] is not None and units[1] is not None and f.dom == g.dom and f.cod == g.cod:
        closed = units_frobenius(*units)
        if closed is not None:
            return closed
    F, G = as_net(f), as_net(g)
    same_spaces(F, G)
    _check_depth(F, G)
    closed = gram_frobenius(F, G)               # one stage: the units' Gram matrices, no engine
    if closed is not None:
        return closed
    depth = max(F.depth, G.depth)
    sf = squares(F.lift(depth))
    nets = [sf, sf] if f is g else [sf, squares(G.lift(depth))]
    return wick(nets, "frobenius") / math.factorial(2 ** depth)


def frobenius_norm(f: Any) -> float:
    """``sqrt(sum_c ||sym F_c||_F^2)``."""
    return math.sqrt(max(frobenius_inner(f, f).sum().item(), 0.0))


def frobenius_cosine(f: Any, g: Any) -> float:
    """``<sym F, sym G> / (||sym F|| ||sym G||)``, all outputs together; invariant to the weights' symmetries."""
    fg, ff, gg = (frobenius_inner(a, b).sum().item() for a, b in ((f, g), (f, f), (g, g)))
    return cosine(fg, ff, gg)


def fit_gaussian(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean and covariance of ``samples`` ``(n, N)`` (all input wires side by side), for a data-aware
    exact check."""
    x = torch.as_tensor(samples, dtype=F64)
    if x.dim() != 2 or x.shape[0] < 2:
        raise InputError(f"fit_gaussian needs samples of shape (n >= 2, N), got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise InputError("fit_gaussian: the samples hold NaN or infinite values")
    return x.mean(0), torch.cov(x.T).reshape(x.shape[1], x.shape[1])


@dataclass(frozen=True)
class GaussianFit:
    """``N(mean, cov)`` fitted to ``samples`` input vectors (all input wires side by side) from ``origin``:
    the measure of a data-aware exact check (``check(..., data="exact", fit=data)``)."""

    mean: torch.Tensor
    cov: torch.Tensor
    samples: int
    origin: str = ""

    def describe(self) -> str:
        """The measure in words, for reports.

        >>> GaussianFit(torch.zeros(2), torch.eye(2), 1797, "the held-out digits").describe()
        'N(mean, cov) fitted to 1,797 samples of the held-out digits'
        """
        return f"N(mean, cov) fitted to {self.samples:,} samples" + (f" of {self.origin}" if self.origin else "")


def fit_source(data: Any, wires: Sequence[Input], batch_size: int = 4096) -> GaussianFit:
    """The Gaussian of the input vectors in ``data`` (any form :func:`~compinterp.data.as_source` reads; labels
    ignored), streamed: ``mean = S1 / n``, ``cov = (S2 - n mean mean^T) / (n - 1)`` from the float64 sums
    ``S1 = sum x``, ``S2 = sum x x^T`` of this rank's shard, all-reduced over the ranks. ``wires`` are the
    model's input wires (:func:`compinterp.semantics.inputs`), laid side by side; every one must take
    real vectors, and a sample with a sequence axis gives one vector per position.

    >>> from compinterp.data import Input
    >>> fitted = fit_source(torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 2.0]]), [Input("x:2", 2)])
    >>> fitted.mean.tolist(), fitted.cov.tolist(), fitted.samples
    ([2.0, 2.0], [[4.0, 1.0], [1.0, 1.0]], 3)
    """
    for wire in wires:
        if wire.kind != "vectors":
            feeds = f" (it feeds {wire.box})" if wire.box else ""
            raise InputError(f"fit: wire {wire.name} takes {wire.kind}{feeds}: a fitted Gaussian describes real "
                             "input vectors only")
    source = as_source(data)
    width = sum(wire.dim for wire in wires)
    sums = torch.zeros(1 + width + width * width, dtype=F64)
    rank, size = world()
    for k, batch in enumerate(source.batches(batch_size, wires, rank, size)):
        try:
            fit(batch, wires, k)
        except InputError as err:
            raise InputError(f"fit data: {err}") from None
        x = torch.cat([t.to(F64).reshape(-1, wire.dim) for t, wire in zip(batch, wires)], 1)
        second = torch.einsum("ni,nj->ij", x, x)
        sums += torch.cat([torch.tensor([x.shape[0]], dtype=F64), x.sum(0), second.flatten()])
    all_reduce([sums])
    n = int(sums[0].item())
    if n < 2:
        raise InputError(f"fit data: {n} sample(s) of {' @ '.join(w.name for w in wires)}; fitting a covariance "
                         "needs at least 2")
    mean = sums[1:1 + width] / n
    cov = (sums[1 + width:].view(width, width) - n * torch.outer(mean, mean)) / (n - 1)
    return GaussianFit(mean, (cov + cov.T) / 2, n, source.describe())



def cosine(fg: float, ff: float, gg: float) -> float:
    """``fg / sqrt(ff gg)``, 1 when both are zero and 0 when one is."""
    if ff <= 0 or gg <= 0:
        return 1.0 if ff <= 0 and gg <= 0 else 0.0
    return fg / math.sqrt(ff * gg)
