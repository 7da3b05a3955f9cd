"""Notebook 06_width: the wrong answers of tests/test_checks_width.py, and more."""

from pruning_course.checks.width import (check_wanda_sp_scores, check_slice_mlp)

from . import CRASH, Wrong, crashes, forgot_return
from .harvest import harvest
from .solutions import notebook

SOLUTION = notebook("06_width")
REFERENCES = {check_wanda_sp_scores: SOLUTION["wanda_sp_scores"], check_slice_mlp: SOLUTION["slice_mlp"]}

WRONG = harvest("test_checks_width") + [
    Wrong(check_wanda_sp_scores, "crashes inside torch", crashes(), CRASH),
    Wrong(check_wanda_sp_scores, "forgot return", forgot_return(SOLUTION["wanda_sp_scores"]), r"forget `return`"),
    Wrong(check_slice_mlp, "crashes inside torch", crashes(), CRASH),
    Wrong(check_slice_mlp, "forgot return", forgot_return(SOLUTION["slice_mlp"]), r"forget `return`"),
]
