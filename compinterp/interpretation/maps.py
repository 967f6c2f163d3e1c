"""Semantic maps ``sigma_A``: how a model's activations on a wire become the explanation's.

A map acts on the last axis, ``(..., d_model) -> (..., d_explanation)``, and is an
``nn.Module`` (so a learned map trains and moves between devices with the rest).

>>> import torch
>>> x = torch.tensor([1.0, 2.0, 3.0])
>>> identity()(x) is x
True
>>> keep_two = linear(torch.eye(2, 3))
>>> keep_two(x).tolist(), keep_two.out_dim(3, "resid:3")
([1.0, 2.0], 2)
>>> keep_two.out_dim(4, "resid:4")
Traceback (most recent call last):
...
compinterp.errors.CompositionError: the linear map on wire resid:4 takes vectors of dimension 3, but the wire has dimension 4
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from compinterp.errors import CompositionError, FormatError, ParameterError
from compinterp.interventions.sites import Rotation
from compinterp.semantics import POINTWISE


class Map(nn.Module):
    """Base of the semantic maps: ``forward`` maps the last axis, ``out_dim`` type-checks."""

    kind: ClassVar[str] = "map"

    def out_dim(self, in_dim: int, wire: str, dtype: torch.dtype = torch.float32) -> int:
        """The explanation's dimension for a model wire of dimension ``in_dim``.

        The default probes the map on one zero vector; a map that fails or returns
        the wrong shape raises :class:`~compinterp.errors.CompositionError` naming ``wire``.
        """
        try:
            with torch.no_grad():
                y = self(torch.zeros(1, in_dim, dtype=dtype, device=_device(self)))
        except Exception as err:  # a user's callable may raise anything; report it against the wire
            raise CompositionError(f"the {self.describe()} on wire {wire} fails on a vector of dimension "
                                   f"{in_dim}: {type(err).__name__}: {err}") from None
        if not isinstance(y, torch.Tensor) or y.dim() != 2 or y.shape[0] != 1:
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise CompositionError(f"the {self.describe()} on wire {wire} maps a (1, {in_dim}) batch to {shape}: "
                                   "it must act on the last axis only")
        return int(y.shape[-1])

    def describe(self) -> str:
        """A short name for messages."""
        return f"{self.kind} map"

    def to_json(self) -> dict[str, Any]:
        """The map's kind and hyperparameters (its tensors are in ``state_dict()``)."""
        return {"kind": self.kind}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], wire: str,
                  functions: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]) -> Map:
        """The map written as ``entry`` (its :meth:`to_json`) with its ``state_dict()`` ``tensors``;
        ``functions`` gives the callables of function maps by wire name."""
        return cls()


class Identity(Map):
    """``sigma(x) = x``: the explanation reads the wire as it is."""

    kind = "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def out_dim(self, in_dim: int, wire: str, dtype: torch.dtype = torch.float32) -> int:
        return in_dim


class LinearMap(Map):
    """``sigma(x) = W x + b``: a projection onto a subspace (``W : k x d``, ``k < d``), a change of
    basis, or an embedding into a larger space (``k > d``)."""

    kind = "linear"

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or not weight.is_floating_point():
            raise ParameterError(f"a linear map needs a 2-D floating weight (out x in), got "
                                 f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],)):
            raise ParameterError(f"a linear map with weight {tuple(weight.shape)} needs a bias of shape "
                                 f"({weight.shape[0]},), got {tuple(getattr(bias, 'shape', ()))}")
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)

    def out_dim(self, in_dim: int, wire: str, dtype: torch.dtype = torch.float32) -> int:
        if self.weight.shape[1] != in_dim:
            raise CompositionError(f"the linear map on wire {wire} takes vectors of dimension "
                                   f"{self.weight.shape[1]}, but the wire has dimension {in_dim}")
        return int(self.weight.shape[0])

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "bias": self.bias is not None}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], wire: str,
                  functions: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]) -> Map:
        return cls(tensors["weight"], tensors["bias"] if entry["bias"] else None)


class EncoderDecoder(Map):
    """An SAE-style pair: ``sigma(x) = act(W_enc (x - b_dec) + b_enc)`` into ``k`` features,
    and :meth:`decode` ``z -> W_dec z + b_dec`` back to the wire."""

    kind = "encoder_decoder"

    def __init__(self, encoder: torch.Tensor, decoder: torch.Tensor, encoder_bias: torch.Tensor | None = None,
                 decoder_bias: torch.Tensor | None = None, activation: str = "relu") -> None:
        super().__init__()
        for role, w in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
                raise ParameterError(f"an encoder/decoder map needs a 2-D floating {role} weight, got "
                                     f"{tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__}")
        k, d = encoder.shape
        if tuple(decoder.shape) != (d, k):
            raise ParameterError(f"an encoder/decoder map with encoder {tuple(encoder.shape)} (features x wire) "
                                 f"needs a decoder of shape {(d, k)}, got {tuple(decoder.shape)}")
        for role, b, n in (("encoder_bias", encoder_bias, k), ("decoder_bias", decoder_bias, d)):
            if b is not None and (not isinstance(b, torch.Tensor) or tuple(b.shape) != (n,)):
                raise ParameterError(f"an encoder/decoder map needs {role} of shape ({n},), "
                                     f"got {tuple(getattr(b, 'shape', ()))}")
        if activation not in POINTWISE:
            raise ParameterError(f"unknown activation {activation!r} for an encoder/decoder map; "
                                 f"choose one of {', '.join(POINTWISE)}")
        self.activation = activation
        self.encoder = nn.Parameter(encoder.detach().clone())
        self.decoder = nn.Parameter(decoder.detach().clone())
        self.encoder_bias = None if encoder_bias is None else nn.Parameter(encoder_bias.detach().clone())
        self.decoder_bias = None if decoder_bias is None else nn.Parameter(decoder_bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x if self.decoder_bias is None else x - self.decoder_bias
        return POINTWISE[self.activation](F.linear(centred, self.encoder, self.encoder_bias))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Features back to the model's wire: ``W_dec z + b_dec``."""
        return F.linear(z, self.decoder, self.decoder_bias)

    def out_dim(self, in_dim: int, wire: str, dtype: torch.dtype = torch.float32) -> int:
        if self.encoder.shape[1] != in_dim:
            raise CompositionError(f"the encoder/decoder map on wire {wire} encodes vectors of dimension "
                                   f"{self.encoder.shape[1]}, but the wire has dimension {in_dim}")
        return int(self.encoder.shape[0])

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "activation": self.activation, "encoder_bias": self.encoder_bias is not None,
                "decoder_bias": self.decoder_bias is not None}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], wire: str,
                  functions: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]) -> Map:
        return cls(tensors["encoder"], tensors["decoder"], tensors["encoder_bias"] if entry["encoder_bias"] else None,
                   tensors["decoder_bias"] if entry["decoder_bias"] else None, entry["activation"])


class RotationMap(Map):
    """``sigma(x) = R[:k] x`` for a learned orthogonal ``R : d x d``: the first ``k`` coordinates of a
    rotated basis (distributed alignment search; :func:`compinterp.fit` learns ``R``). An
    interchange on a :class:`~compinterp.Site` with ``subspace=map.rotation`` patches exactly
    what this map reads."""

    kind = "rotation"

    def __init__(self, dim: int, k: int, seed: int = 0) -> None:
        super().__init__()
        self.rotation = Rotation(dim, k, seed=seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.rotation.basis)

    def out_dim(self, in_dim: int, wire: str, dtype: torch.dtype = torch.float32) -> int:
        dim = self.rotation.basis.shape[1]
        if dim != in_dim:
            raise CompositionError(f"the rotation map on wire {wire} rotates vectors of dimension {dim}, "
                                   f"but the wire has dimension {in_dim}")
        return self.rotation.k

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "dim": int(self.rotation.basis.shape[1]), "k": self.rotation.k}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], wire: str,
                  functions: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]) -> Map:
        sigma = cls(entry["dim"], entry["k"])
        try:
            sigma.load_state_dict(dict(tensors))
        except RuntimeError as err:
            raise FormatError(f"the rotation map of wire {wire} does not fit its tensors in the file: "
                              f"{str(err).splitlines()[0]}") from None
        return sigma


class Function(Map):
    """Any torch callable acting on the last axis (a module's parameters move and train with it).

    A function cannot be written to a file: saving records its name, and loading
    asks for the function again.
    """

    kind = "function"

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], name: str | None = None) -> None:
        super().__init__()
        if not callable(fn):
            raise ParameterError(f"a function map needs a callable, got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def describe(self) -> str:
        return f"function map {self.name!r}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name}

    @classmethod
    def from_json(cls, entry: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], wire: str,
                  functions: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]) -> Map:
        if wire not in functions:
            raise FormatError(f"wire {wire} was mapped by the function {entry.get('name')!r}, which a file cannot "
                              f"hold: pass functions={{{wire!r}: ...}} to load it")
        return cls(functions[wire], entry.get("name"))


def identity() -> Identity:
    """The identity map."""
    return Identity()


def linear(weight: torch.Tensor, bias: torch.Tensor | None = None) -> LinearMap:
    """The affine map ``x -> weight x + bias`` (``weight : out x in``)."""
    return LinearMap(weight, bias)


def encoder_decoder(encoder: torch.Tensor, decoder: torch.Tensor, encoder_bias: torch.Tensor | None = None,
                    decoder_bias: torch.Tensor | None = None, activation: str = "relu") -> EncoderDecoder:
    """An SAE-style pair; ``encoder : features x d``, ``decoder : d x features``.

    >>> import torch
    >>> sae = encoder_decoder(torch.eye(3, 2), torch.eye(2, 3))
    >>> z = sae(torch.tensor([2.0, -1.0]))
    >>> z.tolist(), sae.decode(z).tolist()
    ([2.0, 0.0, 0.0], [2.0, 0.0])
    """
    return EncoderDecoder(encoder, decoder, encoder_bias, decoder_bias, activation)


def rotation(dim: int, k: int, seed: int = 0) -> RotationMap:
    """A learnable rotation keeping ``k`` of ``dim`` coordinates, started at a seeded random rotation.

    >>> import torch
    >>> sigma = rotation(4, 1, seed=0)
    >>> sigma(torch.ones(3, 4)).shape
    torch.Size([3, 1])
    """
    return RotationMap(dim, k, seed)


def function(fn: Callable[[torch.Tensor], torch.Tensor], name: str | None = None) -> Function:
    """Wrap any torch callable (a module, a function) as a semantic map."""
    return Function(fn, name)


MAPS: dict[str, type[Map]] = {cls.kind: cls for cls in (Identity, LinearMap, EncoderDecoder, RotationMap, Function)}
"""Every semantic map kind by name, as written in files."""


def map_from_json(entry: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], wire: str,
                  functions: Mapping[str, Callable[[torch.Tensor], torch.Tensor]]) -> Map:
    """Rebuild a map written as ``to_json()`` plus its ``state_dict()`` tensors, through its kind's
    ``from_json``; ``functions`` gives the callables of function maps by wire name."""
    kind = entry.get("kind")
    cls = MAPS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise FormatError(f"unknown map kind {kind!r} for wire {wire}; known: {', '.join(MAPS)}")
    try:
        return cls.from_json(entry, tensors, wire, functions)
    except KeyError as err:
        raise FormatError(f"the {kind} map of wire {wire} is missing {err.args[0]!r} in the file") from None


def _device(module: nn.Module) -> torch.device:
    """Where a module's tensors live (CPU if it has none)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
