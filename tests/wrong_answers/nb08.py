"""Notebook 08_semi_structured: the wrong answers of tests/test_checks_semi_structured.py, and more."""

from pruning_course.checks.semi_structured import (check_convert_to_2_4, check_nm_validator, check_compress_2_4, check_decompress_2_4)

from . import CRASH, Wrong, crashes, forgot_return
from .harvest import harvest
from .solutions import notebook

SOLUTION = notebook("08_semi_structured")


def _ignores_leftover(weight, n, m):
    rows, cols = weight.shape
    usable = weight[:, : cols - cols % m]
    return bool(((usable.reshape(rows, -1, m) != 0).sum(dim=2) <= n).all())


def _msb_first(values, packed, shape):
    import torch
    rows, cols = shape
    shifts = torch.tensor([6, 4, 2, 0])
    positions = ((packed.to(torch.int64)[:, None] >> shifts) & 3).reshape(rows, cols // 4, 2)
    dense = torch.zeros(rows, cols // 4, 4, dtype=values.dtype)
    dense.scatter_(2, positions, values.reshape(rows, cols // 4, 2))
    return dense.reshape(rows, cols)

REFERENCES = {check_convert_to_2_4: SOLUTION["convert_to_2_4"], check_nm_validator: SOLUTION["is_nm_sparse"],
              check_compress_2_4: SOLUTION["compress_2_4"], check_decompress_2_4: SOLUTION["decompress_2_4"]}

WRONG = harvest("test_checks_semi_structured") + [
    Wrong(check_convert_to_2_4, "crashes inside torch", crashes(), CRASH),
    Wrong(check_nm_validator, "crashes inside torch", crashes(), CRASH),
    Wrong(check_nm_validator, "ignores the leftover columns", _ignores_leftover, r"ignores the leftover columns"),
    Wrong(check_compress_2_4, "crashes inside torch", crashes(), CRASH),
    Wrong(check_compress_2_4, "forgot return", forgot_return(SOLUTION["compress_2_4"]), r"forget `return`"),
    Wrong(check_decompress_2_4, "crashes inside torch", crashes(), CRASH),
    Wrong(check_decompress_2_4, "forgot return", forgot_return(SOLUTION["decompress_2_4"]), r"forget `return`"),
    Wrong(check_decompress_2_4, "most significant bits first", _msb_first, r"reversed order inside each byte"),
    Wrong(check_decompress_2_4, "float32 result whatever the values", lambda v, p, s: SOLUTION["decompress_2_4"](v, p, s).float(),
          r"should have dtype torch.float16"),
]
