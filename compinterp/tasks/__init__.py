"""Tasks: real data that ships with a package or is generated, ready for models and checks."""

from __future__ import annotations

from collections.abc import Sequence

from compinterp.data import Input, Source, Tensors, from_spec
from compinterp.errors import InputError

TASK_DATA = ("digits", "digits:train", "digits:test", "modular", "modular:train", "modular:test")
"""The task data specs :func:`data_from_spec` reads (the test split by default)."""


def data_from_spec(spec: str, wires: Sequence[Input] | None = None) -> Source:
    """A data source from a command-line spec: ``digits`` (held-out digits with labels), ``modular``
    (held-out pairs of modular addition with labels, as the model's input wires ``wires`` take them:
    two token wires ``a @ b``, or ``tokens @ positions`` for a sequence model), or any spec
    :func:`compinterp.data.from_spec` reads (``gaussian:N[:SEED]``, ``FILE.pt``); ``:train``
    selects a task's training split.

    >>> data_from_spec("modular").describe()
    'the held-out pairs of modular addition'
    """
    if spec not in TASK_DATA:
        return from_spec(spec)
    split = "train" if spec.endswith(":train") else "test"
    which = "the training" if split == "train" else "the held-out"
    if spec.startswith("digits"):
        from compinterp.tasks import digits
        return Tensors(*digits.load(split), origin=f"{which} digits")
    from compinterp.tasks import modular
    kinds = [wire.kind for wire in wires or ()]
    origin = f"{which} pairs of modular addition"
    if kinds == ["tokens", "positions"]:
        return Tensors(*modular.load(split, p=wires[0].dim - 1, sequence=True), origin=origin)
    if wires is not None and (kinds != ["tokens", "tokens"] or wires[0].dim != wires[1].dim):
        raise InputError(f"the modular data is two token wires a @ b (or tokens @ positions), but the model takes "
                         f"{' @ '.join(wire.name for wire in wires)}")
    return Tensors(*modular.load(split, p=wires[0].dim if wires else modular.P), origin=origin)


__all__ = ["TASK_DATA", "data_from_spec"]
