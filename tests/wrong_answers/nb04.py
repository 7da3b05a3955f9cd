"""Notebook 04_heads: the wrong answers of tests/test_checks_heads.py, and more."""

from pruning_course.checks.heads import (check_gate_heads, check_michel_importance, check_choose_heads_within_groups, check_slice_heads)

from . import CRASH, Wrong, crashes, forgot_return
from .harvest import harvest
from .solutions import notebook

SOLUTION = notebook("04_heads")
REFERENCES = {check_gate_heads: SOLUTION["gate_heads"], check_michel_importance: SOLUTION["michel_importance"],
              check_choose_heads_within_groups: SOLUTION["choose_heads_within_groups"], check_slice_heads: SOLUTION["slice_heads"]}

WRONG = harvest("test_checks_heads") + [
    Wrong(check_gate_heads, "crashes inside torch", crashes(), CRASH),
    Wrong(check_gate_heads, "forgot return", forgot_return(SOLUTION["gate_heads"]), r"forget `return`"),
    Wrong(check_gate_heads, "adds the gates", lambda x, g: x + g.repeat_interleave(x.shape[-1] // g.shape[0]),
          r"you ADD the gates"),
    Wrong(check_michel_importance, "crashes inside torch", crashes(), CRASH),
    Wrong(check_michel_importance, "forgot return", forgot_return(SOLUTION["michel_importance"]), r"forget `return`"),
    Wrong(check_choose_heads_within_groups, "crashes inside torch", crashes(), CRASH),
    Wrong(check_choose_heads_within_groups, "forgot return", forgot_return(SOLUTION["choose_heads_within_groups"]),
          r"forget `return`"),
    Wrong(check_slice_heads, "crashes inside torch", crashes(), CRASH),
    Wrong(check_slice_heads, "forgot return", forgot_return(SOLUTION["slice_heads"]), r"forget `return`"),
]
