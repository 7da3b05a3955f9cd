"""Notebook 05_layers: the wrong answers of tests/test_checks_layers.py, and more."""

from pruning_course.checks.layers import (check_angular_distance, check_choose_consecutive_blocks, check_remove_blocks)

from . import CRASH, Wrong, crashes, forgot_return
from .harvest import harvest
from .solutions import notebook

SOLUTION = notebook("05_layers")


def _plain_list(model, adapter, indices):
    kept = [b for i, b in enumerate(adapter.blocks(model)) if i not in set(indices)]
    model.model.layers = kept  # a plain list, not an nn.ModuleList
    return model

REFERENCES = {check_angular_distance: SOLUTION["angular_distance"], check_choose_consecutive_blocks: SOLUTION["choose_consecutive_blocks"],
              check_remove_blocks: SOLUTION["remove_blocks"]}

WRONG = harvest("test_checks_layers") + [
    Wrong(check_angular_distance, "crashes inside torch", crashes(), CRASH),
    Wrong(check_angular_distance, "cosine of the block's update with its input",
          lambda a, b: SOLUTION["angular_distance"](a, b - a), r"UPDATE x_out - x_in with x_in"),
    Wrong(check_angular_distance, "each token's input with the next token's output",
          lambda a, b: SOLUTION["angular_distance"](a[:, :-1], b[:, 1:]), r"NEXT token's output"),
    Wrong(check_angular_distance, "neighbouring input tokens",
          lambda a, b: SOLUTION["angular_distance"](a[:, :-1], a[:, 1:]), r"neighbouring tokens of x_in"),
    Wrong(check_choose_consecutive_blocks, "crashes inside torch", crashes(), CRASH),
    Wrong(check_choose_consecutive_blocks, "forgot return", forgot_return(SOLUTION["choose_consecutive_blocks"]),
          r"forget `return`"),
    Wrong(check_remove_blocks, "crashes inside torch", crashes(), CRASH),
    Wrong(check_remove_blocks, "a plain Python list as the blocks", _plain_list, r"plain Python list"),
]
