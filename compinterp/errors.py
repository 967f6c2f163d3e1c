"""The errors a user can cause, each naming the box, wire, dimension or file at fault."""

from __future__ import annotations


class CompinterpError(Exception):
    """Base class of every error compinterp raises on bad input."""


class CompositionError(CompinterpError, TypeError):
    """Two diagrams do not compose: an output space differs from the input space it meets."""


class BoxError(CompinterpError, ValueError):
    """A box is declared with bad arguments (name, spaces, hyperparameters)."""


class ParameterError(CompinterpError, ValueError):
    """A box's parameters are missing, extra, or of the wrong shape."""


class InputError(CompinterpError, ValueError):
    """A model was called with inputs that do not fit its input spaces."""


class FormatError(CompinterpError, ValueError):
    """A saved model on disk is missing, truncated, corrupted or mismatched."""


class ImportTraceError(CompinterpError, ValueError):
    """A torch module could not be traced into a diagram."""
