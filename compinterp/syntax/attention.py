"""Attention: multi-head softmax self-attention, its head structure carried as data.

>>> a = Attention("attn", Space("resid", 8), heads=2, patterns={1: "previous"})
>>> a.data["patterns"], a.param_shapes()["Wq"]
({'1': 'previous'}, (8, 8))
"""

from __future__ import annotations

from typing import Any

from compinterp.errors import BoxError
from compinterp.syntax.kind import Kind, check_name, one_wire, positive
from compinterp.syntax.spaces import Space

PATTERNS = ("previous", "first", "self", "uniform")
"""Attention patterns a head may be fixed to by name: each query attends to the previous position
(position 0 to itself), to the first position, to itself, or evenly to every key it sees."""


KEEP = Space("keep", 1)
"""The padding-mask wire of a padded :class:`Attention` box: ``(..., T, 1)``, 1.0 for a token, 0.0 for padding."""


class Attention(Kind):
    """Multi-head softmax self-attention over the sequence axis (``-2``) of ``space``.

    The head structure is data: ``kv_heads`` key/value heads shared by groups of query heads
    (grouped-query attention; default one per head), rotary position embeddings on the first
    ``rotary_dim`` dimensions of each query and key head (0: none) with base ``rotary_base``, on
    pairs ``(i, i + rotary_dim/2)``, or on adjacent pairs with ``rotary_interleaved`` (GPT-J),
    the logits' ``scale`` (default ``1/sqrt(head_dim)``), a sliding ``window`` of keys (default
    all), and ``bias``: ``True`` for all four projections, or the letters of those that have
    one (``"qkv"``). ``patterns`` fixes heads' attention patterns (a hypothesis about them):
    ``{head: name}`` with a name of :data:`PATTERNS`, or ``{head: T x T matrix}`` (lists; a
    shorter sequence reads its top-left block). ``padded=True`` adds a second input wire,
    :data:`KEEP` (``(..., T, 1)``: 1 for a token, 0 for padding), and no query attends to a
    padding key. ``qk_norm`` (an eps) RMS-normalises each query and key head before rotary, scaled
    by the parameters ``q_norm`` and ``k_norm`` (Qwen3). Settings left at their defaults are not
    written into ``data``.

    >>> a = Attention("attn", Space("resid", 8), heads=4, kv_heads=2, rotary_dim=2, bias="qkv")
    >>> a.data
    {'heads': 4, 'head_dim': 2, 'causal': True, 'bias': 'qkv', 'kv_heads': 2, 'rotary_dim': 2, 'rotary_base': 10000.0}
    >>> a.param_shapes()
    {'Wq': (8, 8), 'Wk': (4, 8), 'Wv': (4, 8), 'Wo': (8, 8), 'bq': (8,), 'bk': (4,), 'bv': (4,)}
    """

    kind = "Attention"
    has_heads = True

    def __init__(self, name: str, space: Space, heads: int, head_dim: int | None = None,
                 causal: bool = True, bias: bool | str = False, kv_heads: int | None = None,
                 rotary_dim: int = 0, rotary_base: float = 10000.0, rotary_interleaved: bool = False,
                 scale: float | None = None, window: int | None = None,
                 patterns: dict[int | str, str | list[list[float]]] | None = None, padded: bool = False,
                 qk_norm: float | None = None) -> None:
        check_name(self.kind, name)
        d = one_wire(self.kind, name, "space", space).dim
        positive(self.kind, name, "heads", heads)
        if head_dim is None:
            if d % heads:
                raise BoxError(f"Attention box '{name}': {space} is not divisible into {heads} heads; "
                               "give head_dim")
            head_dim = d // heads
        positive(self.kind, name, "head_dim", head_dim)
        data: dict[str, Any] = {"heads": heads, "head_dim": head_dim, "causal": bool(causal),
                                "bias": _attention_bias(name, bias)}
        if kv_heads is not None and kv_heads != heads:
            if positive(self.kind, name, "kv_heads", kv_heads) > heads or heads % kv_heads:
                raise BoxError(f"Attention box '{name}': kv_heads must divide heads ({heads}), got {kv_heads}")
            data["kv_heads"] = kv_heads
        if rotary_dim:
            if positive(self.kind, name, "rotary_dim", rotary_dim) > head_dim or rotary_dim % 2:
                raise BoxError(f"Attention box '{name}': rotary_dim must be even and at most head_dim "
                               f"({head_dim}), got {rotary_dim}")
            if isinstance(rotary_base, bool) or not isinstance(rotary_base, (int, float)) or rotary_base <= 0:
                raise BoxError(f"Attention box '{name}': rotary_base must be a positive number, got {rotary_base!r}")
            data |= {"rotary_dim": rotary_dim, "rotary_base": float(rotary_base)}
            if rotary_interleaved:
                data["rotary_interleaved"] = True
        if scale is not None:
            if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
                raise BoxError(f"Attention box '{name}': scale must be a positive number, got {scale!r}")
            data["scale"] = float(scale)
        if window is not None:
            if not causal:
                raise BoxError(f"Attention box '{name}': a sliding window needs causal=True")
            data["window"] = positive(self.kind, name, "window", window)
        if patterns:
            data["patterns"] = _patterns(name, patterns, heads)
        if padded:
            data["padded"] = True
        if qk_norm is not None:
            if isinstance(qk_norm, bool) or not isinstance(qk_norm, (int, float)) or qk_norm < 0:
                raise BoxError(f"Attention box '{name}': qk_norm must be a non-negative eps, got {qk_norm!r}")
            data["qk_norm"] = float(qk_norm)
        super().__init__(name, space @ KEEP if padded else space, space, data)

    @classmethod
    def from_json(cls, name: str, dom: Space, cod: Space, data: dict[str, Any]) -> Kind:
        return cls(name, cod, **data)

    def biases(self) -> str:
        """The letters of the projections (``q``, ``k``, ``v``, ``o``) that have a bias."""
        bias = self.data["bias"]
        return ("qkvo" if bias else "") if isinstance(bias, bool) else bias

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        d, dh = self.cod.dim, self.data["head_dim"]
        inner, kv = self.data["heads"] * dh, self.data.get("kv_heads", self.data["heads"]) * dh
        shapes = {"Wq": (inner, d), "Wk": (kv, d), "Wv": (kv, d), "Wo": (d, inner)}
        sizes = {"q": inner, "k": kv, "v": kv, "o": d}
        norms = {"q_norm": (dh,), "k_norm": (dh,)} if "qk_norm" in self.data else {}
        return shapes | {f"b{p}": (sizes[p],) for p in self.biases()} | norms


def _patterns(name: str, patterns: Any, heads: int) -> dict[str, str | list[list[float]]]:
    """Fixed head patterns as an Attention box stores them: head indices as strings, checked."""
    if not isinstance(patterns, dict):
        raise BoxError(f"Attention box '{name}': patterns must be a mapping {{head: pattern}}, got {patterns!r}")
    out: dict[str, str | list[list[float]]] = {}
    for head, spec in patterns.items():
        index = int(head) if isinstance(head, str) and head.isdigit() else head
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < heads:
            raise BoxError(f"Attention box '{name}': patterns name head {head!r}, but the heads are 0 to {heads - 1}")
        square = isinstance(spec, list) and spec and all(
            isinstance(row, list) and len(row) == len(spec)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row) for row in spec)
        if spec not in PATTERNS and not square:
            raise BoxError(f"Attention box '{name}': head {index}'s pattern must be one of {', '.join(PATTERNS)} "
                           f"or a square matrix (a list of rows), got {spec!r:.80}")
        out[str(index)] = spec if isinstance(spec, str) else [[float(v) for v in row] for row in spec]
    return dict(sorted(out.items(), key=lambda item: int(item[0])))


def _attention_bias(name: str, bias: Any) -> bool | str:
    """``bias`` as an Attention box stores it: a bool for all or none, else the letters in ``qkvo`` order."""
    if isinstance(bias, bool):
        return bias
    if not isinstance(bias, str) or set(bias) - set("qkvo") or len(set(bias)) != len(bias):
        raise BoxError(f"Attention box '{name}': bias must be a bool or letters of 'qkvo' "
                       f"(the projections with a bias), got {bias!r}")
    letters = "".join(p for p in "qkvo" if p in bias)
    return {"": False, "qkvo": True}.get(letters, letters)
