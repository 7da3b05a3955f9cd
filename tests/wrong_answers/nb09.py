"""Notebook 09_sparse_inference: the wrong answers of tests/test_checks_sparse_inference.py, and more."""

from pruning_course.checks.sparse_inference import (check_csr_nbytes, check_memory_break_even, check_break_even)

from . import CRASH, Wrong, crashes
from .harvest import harvest
from .solutions import notebook

SOLUTION = notebook("09_sparse_inference")


def _tie_is_a_win(sparsities, time_ratios):
    points = sorted(zip(sparsities, time_ratios))
    slower = [k for k, (_, ratio) in enumerate(points) if ratio > 1.0]
    if not slower:
        return points[0][0]
    if slower[-1] == len(points) - 1:
        return None
    (s0, r0), (s1, r1) = points[slower[-1]], points[slower[-1] + 1]
    return s0 + (r0 - 1.0) / (r0 - r1) * (s1 - s0)

REFERENCES = {check_csr_nbytes: SOLUTION["csr_nbytes"], check_memory_break_even: SOLUTION["memory_break_even"],
              check_break_even: SOLUTION["break_even"]}

WRONG = harvest("test_checks_sparse_inference") + [
    Wrong(check_csr_nbytes, "crashes inside torch", crashes(), CRASH),
    Wrong(check_memory_break_even, "crashes inside torch", crashes(), CRASH),
    Wrong(check_memory_break_even, "a percentage", lambda v, i: 100 * i / (v + i), r"percentage"),
    Wrong(check_memory_break_even, "negative: 1 - (v + i) / v", lambda v, i: 1 - (v + i) / v, r"negative"),
    Wrong(check_memory_break_even, "arguments swapped", lambda i, v: i / (v + i), r"swapped the arguments"),
    Wrong(check_break_even, "crashes inside torch", crashes(), CRASH),
    Wrong(check_break_even, "a tie counted as a win (> 1)", _tie_is_a_win, r"a tie, not a win"),
    Wrong(check_break_even, "always None", lambda s, r: None, r"you return None"),
]
