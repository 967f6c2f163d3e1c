"""Tasks: real data that ships with a package or is generated, ready for models and checks."""

from __future__ import annotations

from compinterp.data import Source, from_spec, tensors


def data_from_spec(spec: str) -> Source:
    """A data source from a command-line spec: ``digits`` (held-out digits with labels), or any
    spec :func:`compinterp.data.from_spec` reads (``gaussian:N[:SEED]``, ``FILE.pt``)."""
    if spec in ("digits", "digits:test", "digits:train"):
        from compinterp.tasks import digits
        return tensors(*digits.load("train" if spec.endswith("train") else "test"))
    return from_spec(spec)

__all__ = ["data_from_spec"]
