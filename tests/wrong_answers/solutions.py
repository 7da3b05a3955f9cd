"""The notebooks' own solutions (solutions/*/*.ipynb, the cells between BEGIN and END SOLUTION), as
functions: the reference implementations the wrong-answer suite requires every check to pass."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune

SOLUTIONS = Path(__file__).resolve().parents[2] / "solutions"


@functools.lru_cache(maxsize=None)
def notebook(name: str) -> dict:
    """Every function and class the solution cells of notebook ``name`` define."""
    from datasketch import MinHash, MinHashLSH

    from pruning_course import curation
    from pruning_course.architectures import Conv1D, adapter_for, set_weight_matrix, weight_matrix
    from pruning_course.unstructured import magnitude_mask

    namespace = {"torch": torch, "nn": nn, "F": F, "math": math, "prune": prune, "curation": curation,
                 "MinHash": MinHash, "MinHashLSH": MinHashLSH, "Conv1D": Conv1D, "adapter_for": adapter_for,
                 "weight_matrix": weight_matrix, "set_weight_matrix": set_weight_matrix,
                 "magnitude_mask": magnitude_mask}
    cells = json.loads((SOLUTIONS / name / f"{name}.ipynb").read_text())["cells"]
    for cell in cells:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "### BEGIN SOLUTION" in source and source.lstrip().startswith(("def ", "class ")):
            exec(compile(source, f"{name}.ipynb", "exec"), namespace)  # noqa: S102 - the course's own solution code
    return namespace
