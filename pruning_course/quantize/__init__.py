"""Weight quantization on the shared calibration engine, and real compressed files.

* :mod:`.rtn`: the min-max grid per output row and group, round-to-nearest, dequantization;
* :mod:`.gptq`: GPTQ (Frantar et al., ICLR 2023), SparseGPT's Hessian machinery with rounding;
* :mod:`.model`: :func:`quantize_model`, RTN or GPTQ over every prunable linear of a model;
* :mod:`.storage`: :func:`save_compressed` / :func:`load_compressed`, sparse + quantized safetensors files;
* :mod:`.memory`: :func:`measure_inference_memory`, peak RAM of a forward pass in a fresh process.
"""

from ..packing import pack_int, pack_mask, packed_nbytes, unpack_int, unpack_mask
from .gptq import gptq_quantize
from .memory import measure_inference_memory
from .model import QuantizedWeight, check_group_fits, default_group_size, quantize_model
from .rtn import SUPPORTED_BITS, dequantize, minmax_grid, quantize_rtn
from .storage import PackedLinear, decode_weight, encode_weight, load_compressed, read_metadata, save_compressed

__all__ = [
    "SUPPORTED_BITS", "quantize_rtn", "dequantize", "minmax_grid",
    "gptq_quantize",
    "QuantizedWeight", "quantize_model", "check_group_fits", "default_group_size",
    "pack_int", "unpack_int", "pack_mask", "unpack_mask", "packed_nbytes",
    "encode_weight", "decode_weight", "save_compressed", "load_compressed", "read_metadata", "PackedLinear",
    "measure_inference_memory",
]
