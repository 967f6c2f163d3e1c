"""The integer and subset codes that every term of the description length is written in.

>>> [gamma_bits(n) for n in (1, 2, 3, 4, 7, 8, 64)]
[1, 3, 3, 5, 5, 7, 13]
>>> log2_binomial(4, 2) == math.log2(6)
True
"""

from __future__ import annotations

import math

from compinterp.errors import InputError


def gamma_bits(n: int) -> int:
    """Length of the Elias-gamma code of a positive integer: ``2 floor(log2 n) + 1`` bits."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"the Elias-gamma code takes a positive integer, got {n!r}")
    return 2 * (n.bit_length() - 1) + 1


def log2_binomial(n: int, k: int) -> float:
    """``log2 C(n, k)``: the bits to say which ``k`` of ``n`` positions are chosen (0 when ``k`` is 0 or ``n``)."""
    if not 0 <= k <= n:
        raise InputError(f"cannot choose {k} of {n} positions")
    if k in (0, n):
        return 0.0
    return (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)


def choice_bits(options: int) -> float:
    """``log2(options)``: the bits to pick one of ``options`` equally likely things (0 for one option)."""
    if options < 1:
        raise InputError(f"cannot choose among {options} options")
    return math.log2(options)
