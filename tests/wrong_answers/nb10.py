"""Notebook 10_compression: the wrong answers of tests/test_checks_quantize.py, and more."""

from pruning_course.checks.quantize import (check_quantize_rtn, check_pack_int4, check_unpack_int4, check_compressed_nbytes)

from . import CRASH, Wrong, crashes, forgot_return
from .harvest import harvest
from .solutions import notebook

SOLUTION = notebook("10_compression")


def _subtracts_zero(weight, bits, group_size):
    import torch
    rows, cols = weight.shape
    maxq = 2**bits - 1
    groups = weight.detach().float().reshape(rows, cols // group_size, group_size)
    x_min, x_max = groups.amin(dim=-1).clamp(max=0), groups.amax(dim=-1).clamp(min=0)
    scales = (x_max - x_min) / maxq
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    zeros = torch.round(-x_min / scales)
    codes = torch.clamp(torch.round(groups / scales.unsqueeze(-1)) - zeros.unsqueeze(-1), 0, maxq)  # - instead of +
    return codes.reshape(rows, cols).to(torch.uint8), scales, zeros.to(torch.uint8)

REFERENCES = {check_quantize_rtn: SOLUTION["quantize_rtn"], check_pack_int4: SOLUTION["pack_int4"],
              check_unpack_int4: SOLUTION["unpack_int4"], check_compressed_nbytes: SOLUTION["compressed_nbytes"]}

WRONG = harvest("test_checks_quantize") + [
    Wrong(check_quantize_rtn, "crashes inside torch", crashes(), CRASH),
    Wrong(check_quantize_rtn, "subtracts the zero point (clamped)", _subtracts_zero, r"SUBTRACT the zero point"),
    Wrong(check_pack_int4, "crashes inside torch", crashes(), CRASH),
    Wrong(check_pack_int4, "forgot return", forgot_return(SOLUTION["pack_int4"]), r"forget `return`"),
    Wrong(check_unpack_int4, "crashes inside torch", crashes(), CRASH),
    Wrong(check_unpack_int4, "forgot return", forgot_return(SOLUTION["unpack_int4"]), r"forget `return`"),
    Wrong(check_compressed_nbytes, "crashes inside torch", crashes(), CRASH),
]
