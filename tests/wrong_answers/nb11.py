"""Notebook 11_movement: the wrong answers of tests/test_checks_movement.py, and more."""

from pruning_course.checks.movement import (check_cubic_sparsity, check_topk_binarizer, check_movement_score_update)

from . import CRASH, Wrong, crashes, forgot_return
from .harvest import harvest
from .solutions import notebook

SOLUTION = notebook("11_movement")
REFERENCES = {check_cubic_sparsity: SOLUTION["cubic_sparsity"], check_topk_binarizer: SOLUTION["TopKBinarizer"],
              check_movement_score_update: SOLUTION["movement_score_update"]}

WRONG = harvest("test_checks_movement") + [
    Wrong(check_cubic_sparsity, "crashes inside torch", crashes(), CRASH),
    Wrong(check_cubic_sparsity, "a tensor, not a Python float",
          lambda *a, **k: __import__("torch").tensor(SOLUTION["cubic_sparsity"](*a, **k)), r"Python float"),
    Wrong(check_movement_score_update, "crashes inside torch", crashes(), CRASH),
    Wrong(check_movement_score_update, "forgot return", forgot_return(SOLUTION["movement_score_update"]), r"forget `return`"),
]
