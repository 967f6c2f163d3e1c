"""Model builders: real architectures declared as string diagrams of our boxes.

Each builder returns a :class:`~compinterp.syntax.Diagram`; pair it with parameters
through :class:`~compinterp.Model` (or train it with :mod:`compinterp.tasks.train`).

* :func:`bilinear_mlp`: embed, one bilinear layer, unembed (Pearce et al.'s bilinear MLP);
* :func:`chi_net`: embed, a stack of residual bilinear layers, unembed (a chi-net: a deep
  polynomial, degree ``2 ** depth``);
* :func:`transformer`: token and position embeddings, then per layer residual
  (norm, attention) and residual (norm, bilinear MLP), a final norm and the unembed.

>>> pixels, logits = Space("pixels", 64), Space("logits", 10)
>>> [box.name for box in bilinear_mlp(pixels, logits, width=32, hidden=16).boxes]
['embed', 'mlp', 'unembed']
>>> print(chi_net(pixels, logits, width=32, hidden=16, depth=2).cod)
logits:10
"""

from __future__ import annotations

from compinterp.errors import BoxError
from compinterp.syntax import (Add, Attention, Bilinear, Diagram, Embed, Linear, Norm, Space, Unembed, chain,
                               residual)

__all__ = ["bilinear_mlp", "chi_net", "embedding", "transformer"]


def embedding(inputs: Space, resid: Space, *, tokens: bool = False) -> Diagram:
    """One embedding per input wire into ``resid``, summed: ``Linear`` for real-valued wires,
    ``Embed`` for token ids (``tokens=True``). Named ``embed``, or ``embed_<label>`` per wire.

    >>> a, b = Space("a", 7), Space("b", 7)
    >>> [box.name for box in embedding(a @ b, Space("resid", 4), tokens=True).boxes]
    ['embed_a', 'embed_b', 'add']
    """
    if len(inputs) == 0:
        raise BoxError("a model needs at least one input wire")
    labels = [w.label for w in inputs.wires]
    if len(inputs) > 1 and len(set(labels)) < len(labels):
        raise BoxError(f"input wires {inputs} need distinct labels: each one's embedding is named after it")
    box = Embed if tokens else Linear
    embeds = [box("embed" if len(inputs) == 1 else f"embed_{w.label}", Space(w.label, w.dim), resid)
              for w in inputs.wires]
    if len(embeds) == 1:
        return embeds[0]
    parallel = embeds[0]
    for e in embeds[1:]:
        parallel = parallel @ e
    return parallel >> Add(resid, len(embeds))


def bilinear_mlp(inputs: Space, outputs: Space, *, width: int, hidden: int, tokens: bool = False,
                 embed: bool = True, residual_stream: bool = False, bias: bool = False) -> Diagram:
    """``inputs -> embed -> resid:width -> mlp (Bilinear) -> out:width -> unembed -> outputs``.

    The bilinear layer is ``y = D((L x + l) * (R x + r)) + d`` (biases with ``bias=True``). With
    ``residual_stream=True`` it is added back to its input (``resid`` both sides) instead of
    writing a wire ``out`` of its own; with ``embed=False`` it reads the (one, real-valued)
    input wire directly, so its eigenvectors live in input space.

    >>> d = bilinear_mlp(Space("pixels", 64), Space("logits", 10), width=32, hidden=16, residual_stream=True)
    >>> [box.kind for box in d.boxes]
    ['Linear', 'Copy', 'Bilinear', 'Add', 'Unembed']
    >>> print(bilinear_mlp(Space("pixels", 64), Space("logits", 10), width=32, hidden=16, embed=False))
    mlp >> unembed
    """
    out = Space("out", width)
    if not embed:
        if tokens or residual_stream or len(inputs) != 1:
            raise BoxError(f"a bilinear MLP without an embedding reads one real-valued input wire directly, "
                           f"with no residual stream; got inputs {inputs}"
                           + (", token ids" if tokens else "") + (", a residual stream" if residual_stream else ""))
        return Bilinear("mlp", inputs, out, hidden=hidden, bias=bias) >> Unembed("unembed", out, outputs)
    resid = Space("resid", width)
    if residual_stream:
        mlp, out = residual(Bilinear("mlp", resid, resid, hidden=hidden, bias=bias)), resid
    else:
        mlp = Bilinear("mlp", resid, out, hidden=hidden, bias=bias)
    return chain(embedding(inputs, resid, tokens=tokens), mlp, Unembed("unembed", out, outputs))


def chi_net(inputs: Space, outputs: Space, *, width: int, hidden: int, depth: int, tokens: bool = False,
            bias: bool = False) -> Diagram:
    """A deep residual bilinear network: ``embed``, then ``depth`` layers
    ``x -> x + D_k((L_k x) * (R_k x))`` named ``layer0 ...``, then ``unembed``.

    Every box is polynomial, so the whole network is a polynomial of degree ``2 ** depth``.

    >>> d = chi_net(Space("x", 4), Space("y", 2), width=8, hidden=8, depth=3)
    >>> [box.name for box in d.boxes if box.kind == "Bilinear"]
    ['layer0', 'layer1', 'layer2']
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise BoxError(f"chi_net depth must be a positive integer, got {depth!r}")
    resid = Space("resid", width)
    layers = [residual(Bilinear(f"layer{k}", resid, resid, hidden=hidden, bias=bias)) for k in range(depth)]
    return chain(embedding(inputs, resid, tokens=tokens), *layers, Unembed("unembed", resid, outputs))


def transformer(vocab: int, seq: int, outputs: Space, *, width: int, heads: int, layers: int, hidden: int,
                causal: bool = True) -> Diagram:
    """A small transformer with bilinear MLPs, on ``tokens:vocab @ positions:seq`` (token ids and
    position ids, each ``(batch, seq)``) to ``outputs`` at every position.

    Layer ``k`` is ``residual(Norm ln_attn<k> >> Attention attn<k>)`` then
    ``residual(Norm ln_mlp<k> >> Bilinear mlp<k>)``; RMS norms, ``heads`` heads.

    >>> d = transformer(10, 3, Space("logits", 10), width=16, heads=2, layers=1, hidden=32)
    >>> print(d.dom, "->", d.cod)
    tokens:10 @ positions:3 -> logits:10
    >>> [box.name for box in d.boxes if box.kind in ("Attention", "Bilinear")]
    ['attn0', 'mlp0']
    """
    if isinstance(layers, bool) or not isinstance(layers, int) or layers < 1:
        raise BoxError(f"transformer layers must be a positive integer, got {layers!r}")
    resid = Space("resid", width)
    embed = (Embed("embed", Space("tokens", vocab), resid) @ Embed("pos", Space("positions", seq), resid)) \
        >> Add(resid)
    blocks = []
    for k in range(layers):
        blocks.append(residual(Norm(f"ln_attn{k}", resid) >> Attention(f"attn{k}", resid, heads, causal=causal)))
        blocks.append(residual(Norm(f"ln_mlp{k}", resid) >> Bilinear(f"mlp{k}", resid, resid, hidden=hidden)))
    return chain(embed, *blocks, Norm("ln_final", resid), Unembed("unembed", resid, outputs))
