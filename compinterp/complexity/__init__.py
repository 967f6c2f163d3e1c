"""Complexity: description lengths in bits, term by term, and the quantisation that shortens them.

See ``docs/description_length.md`` for every term written out.
"""

from compinterp.complexity.codes import choice_bits, gamma_bits, log2_binomial
from compinterp.complexity.length import Bits, Part, codes_on, description_length, error_bits_per_number
from compinterp.complexity.parameters import WIDTHS, TensorCode, grid_width, parameter_codes, tensor_code
from compinterp.complexity.quantise import min_bits, quantise, quantise_tensor, smallest_width
from compinterp.complexity.reference import Reference
from compinterp.complexity.sparse import Code, code_bits, measure_codes, sparse_layers
from compinterp.complexity.structure import hyper_bits, structure_rows

__all__ = ["WIDTHS", "Bits", "Code", "Part", "Reference", "TensorCode", "choice_bits", "code_bits", "codes_on",
           "description_length",
           "error_bits_per_number", "gamma_bits", "grid_width", "hyper_bits", "log2_binomial", "measure_codes",
           "min_bits", "parameter_codes", "quantise", "quantise_tensor", "smallest_width", "sparse_layers",
           "structure_rows", "tensor_code"]
