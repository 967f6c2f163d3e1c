"""What the dictionary passes share: streamed activations, the dictionary module, its training and its diagram.

A dictionary maps ``x`` (on wire ``A``) to ``F`` sparse features and decodes them
linearly onto ``B`` (``B = A`` for autoencoders); with ``p = E (x - b_dec) + b_enc`` (``- b_dec``
for autoencoders only):

* ``topk``: ``z = TopK_k(relu(p))``; ``relu``: ``z = relu(p)``, trained with an L1 penalty
  ``l1 * sum_f |z_f|``; ``batchtopk``: in training, the ``k * batch`` largest of ``relu(p)`` over the
  whole batch (so examples share a budget of ``k`` on average), and once trained ``z = p H(p - tau)``, one
  threshold ``tau`` for every feature: the running mean (rate :data:`THRESHOLD_RATE`) of the smallest value
  kept in each training batch (Bussmann et al. 2024; SAELens's ``BatchTopKTrainingSAE``), so the diagram's
  step is a ``JumpReLU`` box;
* ``jumprelu``: ``z_f = p_f H(p_f - theta_f)`` (``H`` the Heaviside step, ``theta_f >= 0`` a learnt
  threshold per feature), trained with an L0 penalty ``l0 * sum_f H(p_f - theta_f)`` whose gradient, and
  the threshold's, come from straight-through estimators with a rectangle kernel of width ``bandwidth``
  (Rajamanoharan et al. 2024; SAELens's ``JumpReLUTrainingSAE``);
* ``bilinear``: ``z_f = (l_f . x + l0_f)(r_f . x + r0_f)`` (quadratic features), the
  ``k`` of largest magnitude kept;

and ``x_hat = D z + b_dec`` with the columns of ``D`` (``"out feat"``) of unit norm once trained.

In training the decoder's column norms are free (``decoder_norm="free"``, the default, as in SAELens): the
encoder and decoder start at norm ``init_norm`` (the encoder the decoder's transpose), small enough that Adam
turns them fast. A ``topk`` or ``batchtopk`` dictionary first chooses its features on ``p`` itself (a
feature whose decoder column is still short keeps being chosen, and learns), then, after the first
``rescale_from`` of the steps (:func:`train`), on ``p`` rescaled by the column norms, decoding through the
unit columns (SAELens's ``rescale_acts_by_decoder_norm``, which chooses the features that reconstruct
most); ``relu`` and ``jumprelu`` use the columns as they are, the L1 penalty weighing ``|z_f|`` by the norm
of column ``f`` (SAELens's standard and JumpReLU SAEs). When training ends the norms are folded into the
encoder (and a JumpReLU's thresholds), same function, unit columns. ``decoder_norm="unit"`` renormalises
the columns after every step instead.

Training options (each a term of :meth:`Dictionary.loss` or a step of :func:`train`, written out in
``docs/dictionary.md``): ``aux_k``, an auxiliary loss that asks the ``aux_k`` (default ``d / 2``) largest
pre-activations of the *dead* features (not fired for ``dead_window`` steps) to reconstruct the residual
``y - x_hat``; ``normalise``, activations scaled so that ``E||x||^2 = d`` (the scale folded into
the weights of the diagram); ``warmup`` and ``decay``, a linear learning-rate warm-up and a
linear decay to zero over the last fraction of the steps; ``clip``, the gradients' norm capped (default 1,
as SAELens's trainer); ``b_dec``, where the decoder's bias starts (the data's mean, or zero).
``dictionary.dead`` counts the features that did not fire in the last ``dead_window`` steps of training.

>>> import torch
>>> d = Dictionary("topk", 6, 6, width=12, k=2, seed=0)
>>> recon, z = d(torch.randn(5, 6))
>>> recon.shape, int((z != 0).sum(-1).max())
(torch.Size([5, 6]), 2)
>>> round(d.decoder.norm(dim=0)[0].item(), 3)          # free decoder norms start small
0.3
>>> _ = train(d, lambda: iter([(torch.randn(64, 6),) * 2]), steps=5, progress=False)
>>> torch.allclose(d.decoder.norm(dim=0), torch.ones(12))   # folded when training ends
True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from tqdm.auto import tqdm

from compinterp.complexity.sparse import FEATURES
from compinterp.data import as_source, placed, placement
from compinterp.errors import InputError
from compinterp.model import Model
from compinterp.interventions import run_edited
from compinterp.semantics import Plan, inputs
from compinterp.semantics.kernels import topk
from compinterp.syntax import Copy, Diagram, Elementwise, Linear, Mul, Space, TopK, chain
from compinterp.syntax import JumpReLU as JumpReLUBox

KINDS = ("topk", "batchtopk", "relu", "jumprelu", "bilinear")
"""The encoders a dictionary may have."""

RESCALE_FROM = {"topk": 0.25, "batchtopk": 0.0}
"""When a ``topk`` or ``batchtopk`` dictionary with free decoder norms starts choosing on ``p`` rescaled by them,
as a fraction of the steps (:func:`train`): TopK after a quarter (fewer dead features at a lower FVU than
SAELens's start), BatchTopK from the start (SAELens's; its FVU on the digits benchmark is 0.023 rather than
0.030 after a quarter, at 11 dead features of 32 rather than 9)."""

THRESHOLD_RATE = 0.01
"""How fast a ``batchtopk`` dictionary's threshold follows each batch's smallest kept value (SAELens's
``topk_threshold_lr``)."""


def box_activations(model: Model, box: str, data: Any, *, batch_size: int = 256,
                    device: str | torch.device | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Stream ``(input, output)`` of box ``box`` (its first use; one input and one output wire)
    batch by batch, running the model's plan only up to that box; nothing is kept between batches.
    The model is moved to ``device`` (default: where its parameters are), as :func:`compinterp.check` does."""
    target = model.boxes.get(box)
    if target is None:
        raise InputError(f"no box named '{box}' in the model; boxes: {', '.join(model.boxes)}")
    if len(target.dom) != 1 or len(target.cod) != 1:
        raise InputError(f"box '{box}' ({target.dom} -> {target.cod}) must have one input and one output "
                         "wire for a dictionary")
    device, dtype = placement(model, device)
    model = model.to(device)
    params = model.plan_params()
    for batch in as_source(data).batches(batch_size, inputs(model.plan)):
        with torch.no_grad():
            pair = _run_to(model.plan, params, placed(batch, len(model.dom), device, dtype), box)
        yield pair


def _run_to(plan: Plan, params: Any, xs: tuple[torch.Tensor, ...], box: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``plan`` on ``xs`` up to the first step of ``box``: its input and output."""
    step = next((step for step in plan.steps if step.box.name == box), None)
    if step is None:
        raise InputError(f"box '{box}' is not computed by the model's plan (it is a copy or a swap)")
    _, values, _ = run_edited(plan, params, xs, keep={step.ins[0], step.outs[0]}, outputs=False)
    return values[step.ins[0]], values[step.outs[0]]


def _rectangle(u: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel ``K(u) = 1[-1/2 < u < 1/2]``."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _threshold_grad(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float, grad: torch.Tensor,
                    scale: torch.Tensor | float) -> torch.Tensor:
    """``-sum_batch scale * K((p - theta) / eps) / eps * grad``: the straight-through gradient of a
    threshold (``scale = theta`` for the JumpReLU's output, 1 for the step)."""
    ste = _rectangle((pre - threshold) / bandwidth) / bandwidth * grad * scale
    return -ste.reshape(-1, ste.shape[-1]).sum(0)


class _JumpReLU(torch.autograd.Function):
    """``p H(p - theta)``; backward: ``H(p - theta)`` to ``p``, ``-(theta / eps) K((p - theta) / eps)`` to
    ``theta`` (summed over the batch), as SAELens's ``JumpReLU`` with ``ste_to_input=False``."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        return grad * (pre > threshold), _threshold_grad(pre, threshold, ctx.bandwidth, grad, threshold), None


class _Step(torch.autograd.Function):
    """``H(p - theta)``; backward: nothing to ``p``, ``-(1 / eps) K((p - theta) / eps)`` to ``theta``."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:  # type: ignore[override]
        pre, threshold = ctx.saved_tensors
        return None, _threshold_grad(pre, threshold, ctx.bandwidth, grad, 1.0), None


class JumpReLU(nn.Module):
    """``z_f = p_f H(p_f - theta_f)`` as a torch module, ``threshold`` its only tensor. A JumpReLU dictionary's
    diagram now holds a core ``JumpReLU`` box (:class:`compinterp.syntax.JumpReLU`, its ``theta`` in the
    parameter store); this module is kept so that models saved before, with it in an ``Opaque`` box, still
    load (with ``trust_code=True``)."""

    def __init__(self, threshold: torch.Tensor) -> None:
        super().__init__()
        self.threshold = nn.Parameter(threshold.detach().clone(), requires_grad=False)

    def forward(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold)


class Dictionary(nn.Module):
    """A sparse dictionary ``d_in -> F -> d_out`` (see the module docstring), initialised from ``seed``;
    ``centre`` (autoencoders) subtracts ``b_dec`` from the input before encoding.

    ``aux_k="auto"`` is ``d_out // 2`` (at least 1, at most the width; SAELens's and OpenAI's choice), ``None``
    turns the auxiliary loss off; ``init_norm`` (free decoder norms) is 0.3 for ``topk`` (which starts by choosing
    on plain ``p``), 0.1 otherwise (SAELens's; ``batchtopk`` chooses on the rescaled ``p`` from the start, as
    SAELens's does); ``l0``, ``bandwidth`` and ``threshold`` (where
    every ``theta_f`` starts) are the JumpReLU's (SAELens's defaults)."""

    def __init__(self, kind: str, d_in: int, d_out: int, width: int, k: int | None = None, *,
                 l1: float = 1e-3, centre: bool = True, seed: int = 0, aux_k: int | str | None = "auto",
                 aux_coeff: float = 1.0, dead_window: int = 100, normalise: bool = False,
                 decoder_norm: str = "free", init_norm: float | None = None, l0: float = 1.0, bandwidth: float = 0.05,
                 threshold: float = 0.01) -> None:
        super().__init__()
        if kind not in KINDS:
            raise InputError(f"unknown dictionary kind {kind!r}; choose one of {', '.join(KINDS)}")
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise InputError(f"the dictionary width must be a positive integer, got {width!r}")
        if kind not in ("relu", "jumprelu") and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= width):
            raise InputError(f"a {kind} dictionary needs k from 1 to its width {width}, got {k!r}")
        if aux_k == "auto":
            aux_k = max(1, min(width, d_out // 2))
        if aux_k is not None and (isinstance(aux_k, bool) or not isinstance(aux_k, int) or not 1 <= aux_k <= width):
            raise InputError(f"aux_k must be an integer from 1 to the width {width}, 'auto' or None, got {aux_k!r}")
        if isinstance(dead_window, bool) or not isinstance(dead_window, int) or dead_window < 1:
            raise InputError(f"dead_window must be a positive integer (steps), got {dead_window!r}")
        if decoder_norm not in ("free", "unit"):
            raise InputError(f"decoder_norm must be 'free' or 'unit', got {decoder_norm!r}")
        if init_norm is None:
            init_norm = 0.3 if kind == "topk" else 0.1
        if not init_norm > 0 or not bandwidth > 0 or not threshold >= 0 or not l0 >= 0:
            raise InputError(f"init_norm and bandwidth must be positive, threshold and l0 not negative; got "
                             f"init_norm={init_norm!r}, bandwidth={bandwidth!r}, threshold={threshold!r}, l0={l0!r}")
        self.kind, self.k, self.l1, self.width = kind, (None if kind == "jumprelu" else k), float(l1), width
        self.aux_k, self.aux_coeff, self.dead_window = aux_k, float(aux_coeff), dead_window
        self.l0, self.bandwidth = float(l0), float(bandwidth)
        self.free = decoder_norm == "free" and kind != "bilinear"
        """Whether the decoder's column norms are free in training (see the module)."""
        self.rescale = False
        """Whether ``p`` is multiplied by the decoder's column norms and decodes through the unit columns (free
        norms; :func:`train` turns it on for ``topk`` and ``batchtopk`` after ``rescale_from`` of the steps)."""
        self.normalised = bool(normalise)
        """Whether training scales the activations so that ``E||x||^2 = d`` (``in_scale``, ``out_scale``)."""
        self.dead = 0
        """Features that did not fire in the last ``dead_window`` steps of training."""
        self.register_buffer("idle", torch.zeros(width, dtype=torch.long))
        self.register_buffer("in_scale", torch.ones(()))
        self.register_buffer("out_scale", torch.ones(()))
        self.centre = centre and kind != "bilinear" and d_in == d_out
        g = torch.Generator().manual_seed(seed)
        dec = F.normalize(torch.randn(d_out, width, generator=g), dim=0)
        start = init_norm if self.free else 1.0
        self.decoder = nn.Parameter(dec * start)
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        if kind == "bilinear":
            self.left = nn.Parameter(torch.randn(width, d_in, generator=g) / math.sqrt(d_in))
            self.right = nn.Parameter(torch.randn(width, d_in, generator=g) / math.sqrt(d_in))
            self.b_left = nn.Parameter(torch.ones(width))
            self.b_right = nn.Parameter(torch.zeros(width))
        else:
            enc = dec.T.clone() if d_in == d_out else F.normalize(torch.randn(width, d_in, generator=g), dim=1)
            self.encoder = nn.Parameter(enc * start)
            self.b_enc = nn.Parameter(torch.zeros(width))
        if kind == "jumprelu":
            self.threshold = nn.Parameter(torch.full((width,), float(threshold)))
        if kind == "batchtopk":
            self.register_buffer("batch_threshold", torch.full((), math.nan))
            """``tau``, the threshold a trained ``batchtopk`` dictionary applies (NaN until :meth:`track` ran:
            then ``TopK_k`` per example)."""

    def preactivations(self, x: torch.Tensor) -> torch.Tensor:
        """The features before the sparsity step, on (normalised) inputs ``x``: ``relu(p)``, ``p = E (x - b_dec) +
        b_enc`` (times the decoder's column norms when ``rescale``), ``p`` itself for ``jumprelu``,
        ``(l . x + l0)(r . x + r0)`` for ``bilinear``."""
        pre = self._pre(x, self.decoder.norm(dim=0) if self.rescale else None)
        return pre if self.kind in ("jumprelu", "bilinear") else pre.relu()

    def _pre(self, x: torch.Tensor, norms: torch.Tensor | None) -> torch.Tensor:
        """``p`` (times ``norms`` when given; ``relu(p)`` for ``relu``, whose sparsity step is the ReLU)."""
        if self.kind == "bilinear":
            return F.linear(x, self.left, self.b_left) * F.linear(x, self.right, self.b_right)
        if self.centre:     # E (x - b_dec) + b_enc, with b_dec's gradient through E b_dec (a vector), not x
            pre = F.linear(x, self.encoder, self.b_enc - self.encoder @ self.b_dec)
        else:
            pre = F.linear(x, self.encoder, self.b_enc)
        if norms is not None:
            pre = pre * norms
        return pre.relu() if self.kind == "relu" else pre

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The sparse features ``z`` of ``x`` (in the wire's own units)."""
        return self._sparse(self._pre(x * self.in_scale, self.decoder.norm(dim=0) if self.rescale else None))

    def _sparse(self, pre: torch.Tensor) -> torch.Tensor:
        """The sparsity step on :meth:`_pre`'s ``p``: TopK then ReLU (the same as ReLU then TopK, one pass over
        ``k`` values instead of all), the batch's ``k * rows`` largest in training for ``batchtopk``, the
        JumpReLU."""
        if self.kind == "jumprelu":
            if self.training:
                return _JumpReLU.apply(pre, self.threshold, self.bandwidth)
            return pre * (pre > self.threshold)
        if self.kind == "relu":
            return pre
        if self.kind == "bilinear":
            return pre if self.k is None or self.k >= self.width else topk(self.k, True, None, pre)[0]
        if self.kind == "batchtopk" and self.training:
            flat = pre.flatten()
            top = flat.topk(min(flat.numel(), self.k * pre.shape[0]), sorted=False)
            return torch.zeros_like(flat).scatter(0, top.indices, top.values.relu()).reshape(pre.shape)
        if self.kind == "batchtopk" and not self.batch_threshold.isnan():
            return pre * (pre > self.batch_threshold)
        top = pre.topk(min(self.k, self.width), dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())

    def directions(self) -> torch.Tensor:
        """The decoder's columns as the code decodes through them: the unit columns when ``rescale``."""
        return self.decoder / self.decoder.norm(dim=0) if self.rescale else self.decoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_hat, z)``: the reconstruction ``D z + b_dec`` and the features."""
        z = self.encode(x)
        return F.linear(z, self.directions(), self.b_dec) / self.out_scale, z

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss on a batch, in normalised units (``x s_in``, ``y s_out``; both scales 1 unless
        ``normalise``), and the features ``z``:

            ||y_hat - y||^2 (summed over the wire, mean over the batch)
            + l1 * sum_f |z_f| ||D_f||                            (relu; ||D_f|| = 1 unless the norms are free)
            + l0 * sum_f H(p_f - theta_f)                         (jumprelu; straight-through gradient
                                                                   to theta only)
            + aux_coeff * min(1, dead / aux_k) * ||e_hat - e||^2    (aux_k: e = y - y_hat, detached;
                                                                   e_hat = D z_aux, z_aux the aux_k largest
                                                                   pre-activations of the dead features)
        """
        norms = self.decoder.norm(dim=0) if self.rescale else None
        pre = self._pre(x * self.in_scale, norms)
        z = self._sparse(pre)
        target = y * self.out_scale
        directions = self.decoder if norms is None else self.decoder / norms
        y_hat = F.linear(z, directions, self.b_dec)
        loss = (y_hat - target).pow(2).sum(-1).mean()
        if self.kind == "relu":
            weighted = z.abs() * self.decoder.norm(dim=0) if self.free and not self.rescale else z.abs()
            loss = loss + self.l1 * weighted.sum(-1).mean()
        elif self.kind == "jumprelu" and self.l0:
            loss = loss + self.l0 * _Step.apply(pre, self.threshold, self.bandwidth).sum(-1).mean()
        dead = self.idle >= self.dead_window
        if self.aux_k is not None and bool(dead.any()):
            count = int(dead.sum())
            masked = pre.masked_fill(~dead, float("-inf"))
            top = masked.topk(min(self.aux_k, count), dim=-1)
            z_aux = torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))
            error = (target - y_hat).detach()
            aux = (F.linear(z_aux, directions) - error).pow(2).sum(-1).mean()
            loss = loss + self.aux_coeff * min(1.0, count / self.aux_k) * aux
        return loss, z

    @torch.no_grad()
    def track(self, z: torch.Tensor, restart: bool = False) -> None:
        """Move a ``batchtopk`` dictionary's threshold toward the smallest positive value of the training batch's
        features ``z``: ``tau <- (1 - r) tau + r min(z > 0)`` (``r`` = :data:`THRESHOLD_RATE`; the first batch, or
        ``restart``, sets it); nothing for other kinds or a batch without a positive value."""
        if self.kind != "batchtopk":
            return
        smallest = torch.where(z > 0, z, torch.inf).min().to(self.batch_threshold.dtype)   # no boolean indexing
        if smallest.isinf():
            return
        if restart or self.batch_threshold.isnan():
            self.batch_threshold.copy_(smallest)
        else:
            self.batch_threshold.lerp_(smallest, THRESHOLD_RATE)

    @torch.no_grad()
    def resample(self, dead: torch.Tensor, x: torch.Tensor, y: torch.Tensor, optimiser: torch.optim.Optimizer) -> None:
        """Point the ``dead`` features' decoder columns at the residuals of the worst-reconstructed
        rows of ``(x, y)``, their encoders at those inputs, and reset their optimiser state."""
        count = min(int(dead.sum()), x.shape[0])
        if count == 0:
            return
        index = dead.nonzero().squeeze(1)[:count]
        error = y - self(x)[0]
        worst = error.pow(2).sum(-1).topk(count).indices
        norm = self.decoder.norm(dim=0).mean() if self.free else 1.0      # free norms: the others' mean
        self.decoder[:, index] = F.normalize(error[worst], dim=1).T * norm
        source = F.normalize(x[worst] - x.mean(0), dim=1)
        scale = 0.2 * (self.left if self.kind == "bilinear" else self.encoder).norm(dim=1).mean()
        if self.kind == "bilinear":
            self.left[index] = source * scale
        else:
            self.encoder[index] = source * scale
            self.b_enc[index] = 0.0
        for p in optimiser.param_groups[0]["params"]:
            state = optimiser.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state and state[key].shape[0] == self.width:
                    state[key][index] = 0.0
                elif key in state and state[key].dim() == 2 and state[key].shape[1] == self.width:
                    state[key][:, index] = 0.0

    @torch.no_grad()
    def normalise(self) -> None:
        """Rescale the decoder's columns to unit norm (the encoder takes up the scale where it can, and a
        JumpReLU's thresholds with it), after every step of ``decoder_norm="unit"``; a no-op while the norms
        are free (:meth:`fold` ends those)."""
        if not self.free:
            self._fold()

    @torch.no_grad()
    def fold(self) -> None:
        """Fold the decoder's column norms into the encoder (and its bias, and a JumpReLU's thresholds): the
        decoder's columns end at unit norm, the function unchanged, ``rescale`` off. A ``topk`` or
        ``batchtopk`` dictionary that chooses on ``p`` itself (not ``rescale``) keeps its norms: folding them
        would change what it chooses."""
        if self.rescale or self.kind not in ("topk", "batchtopk"):
            self._fold()

    @torch.no_grad()
    def _fold(self) -> None:
        norms = self.decoder.norm(dim=0).clamp_min(1e-12)
        self.decoder /= norms
        if self.kind == "bilinear":
            self.left *= norms[:, None]
            self.b_left *= norms
            return
        self.encoder *= norms[:, None]
        self.b_enc *= norms
        if self.kind == "jumprelu" and not self.rescale:   # rescaled: p counted the norms already
            self.threshold *= norms
        self.rescale = False

    @torch.no_grad()
    def project(self) -> None:
        """Keep a JumpReLU's thresholds at zero or above (SAELens projects them so before every step)."""
        if self.kind == "jumprelu":
            self.threshold.clamp_(min=0.0)

    def _unit(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The encoder, its bias and the decoder (detached) as plain weights: ``p = E x + b`` compared with a
        JumpReLU's thresholds and chosen from by TopK, decoded through the columns as they are (the norms
        folded in when ``rescale``)."""
        encoder, bias, decoder = self.encoder.detach(), self.b_enc.detach(), self.decoder.detach()
        if self.rescale:
            norms = decoder.norm(dim=0).clamp_min(1e-12)
            encoder, bias, decoder = encoder * norms[:, None], bias * norms, decoder / norms
        return encoder, bias, decoder

    def diagram(self, name: str, dom: Space, cod: Space) -> Diagram:
        """The dictionary as boxes ``dom -> features:F -> cod``, named ``{name}_enc``, ``{name}_dec`` ...; a
        JumpReLU's step, and a trained BatchTopK's, is a ``JumpReLU`` box ``{name}_jumprelu`` (its thresholds
        ``theta`` in :meth:`params`)."""
        feat = Space(FEATURES, self.width)
        sparse = [] if self.k is None or self.k >= self.width else [TopK(f"{name}_topk", feat, self.k,
                                                                          absolute=self.kind == "bilinear")]
        if self.kind == "bilinear":
            encode = chain(Copy(dom, name=f"{name}_copy"),
                           Linear(f"{name}_left", dom, feat, bias=True) @ Linear(f"{name}_right", dom, feat, bias=True),
                           Mul(feat, name=f"{name}_mul"))
        elif self.thresholds() is not None:
            encode = chain(Linear(f"{name}_enc", dom, feat, bias=True), JumpReLUBox(f"{name}_jumprelu", feat))
            sparse = []
        else:
            encode = chain(Linear(f"{name}_enc", dom, feat, bias=True), Elementwise("relu", feat, f"{name}_relu"))
        return chain(encode, *sparse, Linear(f"{name}_dec", feat, cod, bias=True))

    def params(self, name: str) -> dict[str, dict[str, torch.Tensor]]:
        """The parameters of :meth:`diagram`'s boxes, in the wire's own units: the ``b_dec`` shift folded into
        the encoder's bias, the normalising scales into the encoder's and decoder's weights, the decoder's norms
        into the encoder when ``rescale``, and a JumpReLU's thresholds as ``theta`` of ``{name}_jumprelu`` (compared
        with that ``p``: they count the norms already when ``rescale``)."""
        s_in, s_out = self.in_scale.detach(), self.out_scale.detach()
        if self.kind == "bilinear":
            return {f"{name}_dec": {"W": (self.decoder.detach() / s_out).clone(),
                                    "b": (self.b_dec.detach() / s_out).clone()},
                    f"{name}_left": {"W": (self.left.detach() * s_in).clone(), "b": self.b_left.detach().clone()},
                    f"{name}_right": {"W": (self.right.detach() * s_in).clone(), "b": self.b_right.detach().clone()}}
        encoder, bias, decoder = self._unit()
        if self.centre:
            bias = bias - encoder @ self.b_dec.detach()
        # contiguous weights (the encoder may start as the decoder's transpose): loaded, a model computes the same bits
        params = {f"{name}_dec": {"W": (decoder / s_out).clone(), "b": (self.b_dec.detach() / s_out).clone()},
                  f"{name}_enc": {"W": (encoder * s_in).contiguous(), "b": bias.clone()}}
        thresholds = self.thresholds()
        if thresholds is not None:
            params[f"{name}_jumprelu"] = {"theta": thresholds}
        return params

    def thresholds(self) -> torch.Tensor | None:
        """The thresholds ``theta_f`` the features' ``p`` is compared with when the dictionary runs as a JumpReLU
        (a copy): a ``jumprelu`` dictionary's own, a trained ``batchtopk`` one's ``tau`` for every feature; else
        ``None``."""
        if self.kind == "jumprelu":
            return self.threshold.detach().clone()
        if self.kind == "batchtopk" and not bool(self.batch_threshold.isnan()):
            return self.batch_threshold.detach().expand(self.width).clone()
        return None


def schedule(step: int, steps: int, warmup: int = 0, decay: float = 0.0) -> float:
    """The learning-rate factor at ``step`` (from 0) of ``steps``: a linear warm-up over the first ``warmup``
    steps, then 1, then a linear decay to 0 over the last ``decay`` fraction of the steps.

    >>> [round(schedule(t, 10, warmup=2, decay=0.5), 2) for t in range(10)]
    [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2]
    """
    factor = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    tail = round(decay * steps)
    if tail > 0 and step >= steps - tail:
        factor *= (steps - step) / tail
    return factor


def train(dictionary: Dictionary, stream: Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]], *,
          steps: int = 1000, lr: float = 3e-3, resample_every: int = 100, progress: bool = True,
          desc: str = "dictionary", warmup: int = 0, decay: float = 0.1, clip: float | None = 1.0,
          b_dec: str = "mean", rescale_from: float | None = None) -> list[float]:
    """Fit ``dictionary`` by Adam on ``(x, y)`` batches from ``stream()`` (restarted as often as ``steps``
    needs); the losses, one per step. Decoder columns are renormalised after every step (``decoder_norm="unit"``)
    or their free norms folded into the encoder at the end (:meth:`Dictionary.fold`); a ``topk`` or ``batchtopk``
    dictionary with free norms chooses on ``p`` rescaled by them from step ``round(rescale_from * steps)`` on (0:
    from the start, as SAELens; 1: never; default :data:`RESCALE_FROM` of its kind); a JumpReLU's thresholds are
    kept at zero or above.

    Every ``resample_every`` steps in the first half, features that never fired since the last
    such point are re-aimed at the worst-reconstructed examples of the batch (dead-feature resampling).

    The decoder's bias starts at the first batch's mean of ``y`` (``b_dec="zero"``: at zero); ``clip``
    (default 1, as SAELens's trainer; ``None``: off) rescales the gradients so that their joint norm is at most
    ``clip`` before each step; with ``normalise``, the scales
    ``s = sqrt(d) / mean ||x||`` are measured on the first batch. The learning rate follows
    :func:`schedule` (``warmup`` steps, ``decay`` fraction, default a linear decay over the last tenth).
    Resampling is off when the dictionary has an ``aux_k`` loss (which revives dead features itself); either
    way ``dictionary.dead`` counts the features idle for the last ``dead_window`` steps. Adam is torch's fused
    one where the device has it.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise InputError(f"warmup must be a whole number of steps, got {warmup!r}")
    if not 0 <= decay <= 1:
        raise InputError(f"decay must be a fraction of the steps from 0 to 1, got {decay!r}")
    if clip is not None and not clip > 0:
        raise InputError(f"clip must be a positive gradient norm, got {clip!r}")
    if b_dec not in ("mean", "zero"):
        raise InputError(f"b_dec must be 'mean' or 'zero' (where the decoder's bias starts), got {b_dec!r}")
    if rescale_from is None:
        rescale_from = RESCALE_FROM.get(dictionary.kind, 0.0)
    if not 0 <= rescale_from <= 1:
        raise InputError(f"rescale_from must be a fraction of the steps from 0 to 1, got {rescale_from!r}")
    chooses = dictionary.free and dictionary.kind in ("topk", "batchtopk")
    switch = round(rescale_from * steps) if chooses else steps + 1
    if chooses and dictionary.rescale:
        dictionary.fold()                                       # start choosing on plain p (same function)
    try:                                                        # one fused kernel per step where torch has one
        optimiser = torch.optim.Adam(dictionary.parameters(), lr=lr, fused=True)
    except RuntimeError:
        optimiser = torch.optim.Adam(dictionary.parameters(), lr=lr)
    resampling = dictionary.aux_k is None
    dictionary.train()
    dictionary.idle.zero_()
    fired: torch.Tensor | None = None
    losses: list[torch.Tensor] = []
    with tqdm(total=steps, desc=desc, unit="step", disable=not progress, leave=False) as bar:
        while len(losses) < steps:
            seen = len(losses)
            for x, y in stream():
                x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
                if not losses:
                    dictionary.to(x.device)
                    with torch.no_grad():
                        if dictionary.normalised:
                            dictionary.in_scale.fill_(math.sqrt(x.shape[-1]) / x.norm(dim=-1).mean().clamp_min(1e-12))
                            dictionary.out_scale.fill_(math.sqrt(y.shape[-1]) / y.norm(dim=-1).mean().clamp_min(1e-12))
                        dictionary.b_dec.copy_(y.mean(0) * dictionary.out_scale if b_dec == "mean" else 0)
                if len(losses) == switch:
                    dictionary.rescale = True
                for group in optimiser.param_groups:
                    group["lr"] = lr * schedule(len(losses), steps, warmup, decay)
                loss, z = dictionary.loss(x, y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                if clip is not None:
                    nn.utils.clip_grad_norm_(dictionary.parameters(), clip)
                optimiser.step()
                dictionary.normalise()
                dictionary.project()
                dictionary.track(z.detach(), restart=len(losses) == switch)
                now = (z.detach() != 0).any(0)
                dictionary.idle.add_(1).masked_fill_(now, 0)
                if resampling:
                    fired = now if fired is None else fired | now
                    if (len(losses) + 1) % resample_every == 0:
                        if len(losses) < steps // 2:
                            dictionary.resample(~fired, x, y, optimiser)
                        fired = None
                losses.append(loss.detach())
                bar.update()
                if len(losses) == steps:
                    break
            if len(losses) == seen:
                raise InputError("the data gave no batches to train the dictionary on")
    dictionary.dead = int((dictionary.idle >= min(dictionary.dead_window, steps)).sum())
    dictionary.fold()
    dictionary.eval()
    return torch.stack(losses).tolist()

