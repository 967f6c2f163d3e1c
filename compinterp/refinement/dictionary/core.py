"""What the dictionary passes share: streamed activations, the dictionary module, its training and its diagram.

A dictionary maps ``x`` (on wire ``A``) to ``F`` sparse features and decodes them
linearly onto ``B`` (``B = A`` for autoencoders):

* ``topk``: ``z = TopK_k(relu(E (x - b_dec) + b_enc))`` (``- b_dec`` for autoencoders only); ``relu``: ``z = relu(E (x - b_dec) + b_enc)``
  trained with an L1 penalty ``l1 * sum_f |z_f|``; ``batchtopk``: in training, the ``k * batch``
  largest of ``relu(E (x - b_dec) + b_enc)`` over the whole batch (so examples share a budget of
  ``k`` on average), and ``TopK_k`` per example once trained (the diagram's box);
* ``bilinear``: ``z_f = (l_f . x + l0_f)(r_f . x + r0_f)`` (quadratic features), the
  ``k`` of largest magnitude kept;

and ``x_hat = D z + b_dec`` with the columns of ``D`` (``"out feat"``) kept at unit norm.

Training options (each a term of :meth:`Dictionary.loss` or a step of :func:`train`, written out in
``docs/dictionary.md``): ``aux_k``, an auxiliary loss that asks the ``aux_k`` largest pre-activations
of the *dead* features (not fired for ``dead_window`` steps) to reconstruct the residual
``y - x_hat``; ``normalise``, activations scaled so that ``E||x||^2 = d`` (the scale folded into
the weights of the diagram); ``warmup`` and ``decay``, a linear learning-rate warm-up and a
linear decay to zero over the last fraction of the steps; ``clip``, the gradients' norm capped; ``b_dec``,
where the decoder's bias starts (the data's mean, or zero). ``dictionary.dead`` counts the features
that did not fire in the last ``dead_window`` steps of training.

>>> import torch
>>> d = Dictionary("topk", 6, 6, width=12, k=2, seed=0)
>>> recon, z = d(torch.randn(5, 6))
>>> recon.shape, int((z != 0).sum(-1).max())
(torch.Size([5, 6]), 2)
>>> torch.allclose(d.decoder.norm(dim=0), torch.ones(12))
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
from compinterp.semantics import Plan
from compinterp.semantics.kernels import topk
from compinterp.syntax import Copy, Diagram, Elementwise, Linear, Mul, Space, TopK, chain

KINDS = ("topk", "batchtopk", "relu", "bilinear")
"""The encoders a dictionary may have."""


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
    for batch in as_source(data).batches(batch_size, model.dom.dims):
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


class Dictionary(nn.Module):
    """A sparse dictionary ``d_in -> F -> d_out`` (see the module docstring), initialised from ``seed``;
    ``centre`` (autoencoders) subtracts ``b_dec`` from the input before encoding."""

    def __init__(self, kind: str, d_in: int, d_out: int, width: int, k: int | None = None, *,
                 l1: float = 1e-3, centre: bool = True, seed: int = 0, aux_k: int | None = None,
                 aux_coeff: float = 1 / 32, dead_window: int = 100, normalise: bool = False) -> None:
        super().__init__()
        if kind not in KINDS:
            raise InputError(f"unknown dictionary kind {kind!r}; choose one of {', '.join(KINDS)}")
        if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
            raise InputError(f"the dictionary width must be a positive integer, got {width!r}")
        if kind != "relu" and (isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= width):
            raise InputError(f"a {kind} dictionary needs k from 1 to its width {width}, got {k!r}")
        if aux_k is not None and (isinstance(aux_k, bool) or not isinstance(aux_k, int) or not 1 <= aux_k <= width):
            raise InputError(f"aux_k must be an integer from 1 to the width {width}, got {aux_k!r}")
        if isinstance(dead_window, bool) or not isinstance(dead_window, int) or dead_window < 1:
            raise InputError(f"dead_window must be a positive integer (steps), got {dead_window!r}")
        self.kind, self.k, self.l1, self.width = kind, k, float(l1), width
        self.aux_k, self.aux_coeff, self.dead_window = aux_k, float(aux_coeff), dead_window
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
        self.decoder = nn.Parameter(dec)
        self.b_dec = nn.Parameter(torch.zeros(d_out))
        if kind == "bilinear":
            self.left = nn.Parameter(torch.randn(width, d_in, generator=g) / math.sqrt(d_in))
            self.right = nn.Parameter(torch.randn(width, d_in, generator=g) / math.sqrt(d_in))
            self.b_left = nn.Parameter(torch.ones(width))
            self.b_right = nn.Parameter(torch.zeros(width))
        else:
            enc = dec.T.clone() if d_in == d_out else F.normalize(torch.randn(width, d_in, generator=g), dim=1)
            self.encoder = nn.Parameter(enc)
            self.b_enc = nn.Parameter(torch.zeros(width))

    def preactivations(self, x: torch.Tensor) -> torch.Tensor:
        """The features before the sparsity step, on (normalised) inputs ``x``: ``relu(E (x - b_dec) + b_enc)``
        (``(l . x + l0)(r . x + r0)`` for ``bilinear``)."""
        if self.kind == "bilinear":
            return F.linear(x, self.left, self.b_left) * F.linear(x, self.right, self.b_right)
        return F.linear(x - self.b_dec if self.centre else x, self.encoder, self.b_enc).relu()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The sparse features ``z`` of ``x`` (in the wire's own units)."""
        return self._sparse(self.preactivations(x * self.in_scale))

    def _sparse(self, pre: torch.Tensor) -> torch.Tensor:
        if self.kind == "relu" or self.k is None or self.k >= self.width:
            return pre
        if self.kind == "batchtopk" and self.training:
            flat = pre.flatten()
            keep = flat.topk(min(flat.numel(), self.k * pre.shape[0])).indices
            return torch.zeros_like(flat).scatter(0, keep, flat[keep]).reshape(pre.shape)
        return topk(self.k, self.kind == "bilinear", None, pre)[0]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_hat, z)``: the reconstruction ``D z + b_dec`` and the features."""
        z = self.encode(x)
        return F.linear(z, self.decoder, self.b_dec) / self.out_scale, z

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss on a batch, in normalised units (``x s_in``, ``y s_out``; both scales 1 unless
        ``normalise``), and the features ``z``:

            ||y_hat - y||^2 (summed over the wire, mean over the batch)
            + l1 * sum_f |z_f|                                    (relu)
            + aux_coeff * min(1, dead / aux_k) * ||e_hat - e||^2    (aux_k: e = y - y_hat, detached;
                                                                   e_hat = D z_aux, z_aux the aux_k largest
                                                                   pre-activations of the dead features)
        """
        pre = self.preactivations(x * self.in_scale)
        z = self._sparse(pre)
        target = y * self.out_scale
        y_hat = F.linear(z, self.decoder, self.b_dec)
        loss = (y_hat - target).pow(2).sum(-1).mean()
        if self.kind == "relu":
            loss = loss + self.l1 * z.abs().sum(-1).mean()
        dead = self.idle >= self.dead_window
        if self.aux_k is not None and bool(dead.any()):
            count = int(dead.sum())
            masked = pre.masked_fill(~dead, float("-inf"))
            top = masked.topk(min(self.aux_k, count), dim=-1)
            z_aux = torch.zeros_like(pre).scatter(-1, top.indices, top.values.clamp_min(0))
            error = (target - y_hat).detach()
            aux = (F.linear(z_aux, self.decoder) - error).pow(2).sum(-1).mean()
            loss = loss + self.aux_coeff * min(1.0, count / self.aux_k) * aux
        return loss, z

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
        self.decoder[:, index] = F.normalize(error[worst], dim=1).T
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
        """Rescale the decoder's columns to unit norm (the encoder takes up the scale where it can)."""
        norms = self.decoder.norm(dim=0).clamp_min(1e-12)
        self.decoder /= norms
        if self.kind == "bilinear":
            self.left *= norms[:, None]
            self.b_left *= norms
        else:
            self.encoder *= norms[:, None]
            self.b_enc *= norms

    def diagram(self, name: str, dom: Space, cod: Space) -> Diagram:
        """The dictionary as boxes ``dom -> features:F -> cod``, named ``{name}_enc``, ``{name}_dec`` ..."""
        feat = Space(FEATURES, self.width)
        sparse = [] if self.k is None or self.k >= self.width else [TopK(f"{name}_topk", feat, self.k,
                                                                          absolute=self.kind == "bilinear")]
        if self.kind == "bilinear":
            encode = chain(Copy(dom, name=f"{name}_copy"),
                           Linear(f"{name}_left", dom, feat, bias=True) @ Linear(f"{name}_right", dom, feat, bias=True),
                           Mul(feat, name=f"{name}_mul"))
        else:
            encode = chain(Linear(f"{name}_enc", dom, feat, bias=True), Elementwise("relu", feat, f"{name}_relu"))
        return chain(encode, *sparse, Linear(f"{name}_dec", feat, cod, bias=True))

    def params(self, name: str) -> dict[str, dict[str, torch.Tensor]]:
        """The parameters of :meth:`diagram`'s boxes, in the wire's own units: the ``b_dec`` shift folded into
        the encoder's bias, the normalising scales into the encoder's and decoder's weights."""
        s_in, s_out = self.in_scale.detach(), self.out_scale.detach()
        out = {f"{name}_dec": {"W": (self.decoder.detach() / s_out).clone(),
                               "b": (self.b_dec.detach() / s_out).clone()}}
        if self.kind == "bilinear":
            return out | {f"{name}_left": {"W": (self.left.detach() * s_in).clone(), "b": self.b_left.detach().clone()},
                          f"{name}_right": {"W": (self.right.detach() * s_in).clone(),
                                            "b": self.b_right.detach().clone()}}
        bias = self.b_enc.detach().clone()
        if self.centre:
            bias = bias - self.encoder.detach() @ self.b_dec.detach()
        return out | {f"{name}_enc": {"W": (self.encoder.detach() * s_in).clone(), "b": bias}}


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
          desc: str = "dictionary", warmup: int = 0, decay: float = 0.0, clip: float | None = None,
          b_dec: str = "mean") -> list[float]:
    """Fit ``dictionary`` by Adam on ``(x, y)`` batches from ``stream()`` (restarted as often as ``steps``
    needs), decoder columns renormalised after every step; the losses, one per step.

    Every ``resample_every`` steps in the first half, features that never fired since the last
    such point are re-aimed at the worst-reconstructed examples of the batch (dead-feature resampling).

    The decoder's bias starts at the first batch's mean of ``y`` (``b_dec="zero"``: at zero); ``clip``
    rescales the gradients so that their joint norm is at most ``clip`` before each step; with ``normalise``, the scales
    ``s = sqrt(d) / mean ||x||`` are measured on the first batch. The learning rate follows
    :func:`schedule` (``warmup`` steps, ``decay`` fraction). Resampling is off when the dictionary has
    an ``aux_k`` loss (which revives dead features itself); either way ``dictionary.dead`` counts
    the features idle for the last ``dead_window`` steps.
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
    optimiser = torch.optim.Adam(dictionary.parameters(), lr=lr)
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
                for group in optimiser.param_groups:
                    group["lr"] = lr * schedule(len(losses), steps, warmup, decay)
                loss, z = dictionary.loss(x, y)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                if clip is not None:
                    nn.utils.clip_grad_norm_(dictionary.parameters(), clip)
                optimiser.step()
                dictionary.normalise()
                now = (z.detach() != 0).any(0)
                dictionary.idle.add_(1).masked_fill_(now, 0)
                fired = now if fired is None else fired | now
                if (len(losses) + 1) % resample_every == 0:
                    if len(losses) < steps // 2 and dictionary.aux_k is None:
                        dictionary.resample(~fired, x, y, optimiser)
                    fired = None
                losses.append(loss.detach())
                bar.update()
                if len(losses) == steps:
                    break
            if len(losses) == seen:
                raise InputError("the data gave no batches to train the dictionary on")
    dictionary.dead = int((dictionary.idle >= min(dictionary.dead_window, steps)).sum())
    dictionary.eval()
    return torch.stack(losses).tolist()

