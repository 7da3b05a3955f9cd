"""Notebook 07_sensitivity: the wrong answers of tests/test_checks_sensitivity.py, and more."""

from pruning_course.checks.sensitivity import (check_sensitivity_scan, check_sensitivity_schedule, check_outlier_ratio, check_owl_sparsities)

from . import CRASH, Wrong, crashes, forgot_return
from .harvest import harvest
from .solutions import notebook

SOLUTION = notebook("07_sensitivity")
REFERENCES = {check_sensitivity_scan: SOLUTION["sensitivity_scan"], check_sensitivity_schedule: SOLUTION["sensitivity_schedule"],
              check_outlier_ratio: SOLUTION["outlier_ratio"], check_owl_sparsities: SOLUTION["owl_sparsities"]}

WRONG = harvest("test_checks_sensitivity") + [
    Wrong(check_sensitivity_scan, "crashes inside torch", crashes(), CRASH),
    Wrong(check_sensitivity_schedule, "crashes inside torch", crashes(), CRASH),
    Wrong(check_sensitivity_schedule, "forgot return", forgot_return(SOLUTION["sensitivity_schedule"]), r"forget `return`"),
    Wrong(check_sensitivity_schedule, "the most sensitive block pruned most",
          lambda s, c, t, sp: SOLUTION["sensitivity_schedule"](-s, c, t, sp), r"prunes the MORE sensitive blocks more"),
    Wrong(check_outlier_ratio, "crashes inside torch", crashes(), CRASH),
    Wrong(check_outlier_ratio, "first matrix only", lambda scores, M=5.0: SOLUTION["outlier_ratio"](scores[:1], M),
          r"only the FIRST score matrix"),
    Wrong(check_outlier_ratio, "last matrix only (loop overwrites)", lambda scores, M=5.0: SOLUTION["outlier_ratio"](scores[-1:], M),
          r"only the LAST score matrix"),
    Wrong(check_owl_sparsities, "crashes inside torch", crashes(), CRASH),
    Wrong(check_owl_sparsities, "forgot return", forgot_return(SOLUTION["owl_sparsities"]), r"forget `return`"),
    Wrong(check_owl_sparsities, "lam instead of 2 lam", lambda r, t, lam=0.08: SOLUTION["owl_sparsities"](r, t, lam / 2),
          r"OWL's band is 2 lambda"),
    Wrong(check_owl_sparsities, "higher ratio, higher sparsity", lambda r, t, lam=0.08: SOLUTION["owl_sparsities"](
        -__import__("torch").as_tensor(r, dtype=__import__("torch").float64), t, lam), r"MORE outliers get HIGHER sparsity"),
]
