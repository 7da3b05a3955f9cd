"""The wrong-implementation suite (tests/wrong_answers): every check rejects every wrong answer, names
the mistake, passes the notebook's solution, and shows a short first line."""

import ast
from pathlib import Path

import pytest
import torch

from pruning_course import checks
from pruning_course.checks import HEADLINE_CHARS

from wrong_answers import load, run_check, verdict

REFERENCES, WRONG = load()
EXPORTED = sorted({name for module in ("curation", "heads", "layers", "movement", "quantize", "semi_structured",
                                       "sensitivity", "sparse_inference", "sparsegpt", "wanda", "why_pruning", "width")
                   for name in __import__(f"pruning_course.checks.{module}", fromlist=["__all__"]).__all__
                   if name.startswith("check_")})


def test_every_check_has_a_reference_and_at_least_eight_wrong_answers():
    covered = {w.check.__name__ for w in WRONG}
    counts = {name: sum(w.check.__name__ == name for w in WRONG) for name in EXPORTED}
    assert not [n for n in EXPORTED if n not in covered], "checks without wrong answers"
    assert not {n: c for n, c in counts.items() if c < 8}, "checks with fewer than 8 wrong answers"
    assert sorted(c.__name__ for c in REFERENCES) == EXPORTED


@pytest.mark.parametrize("check", list(REFERENCES), ids=lambda c: c.__name__)
def test_the_solution_passes_and_the_global_rng_is_left_alone(check):
    torch.manual_seed(1234)
    before = torch.random.get_rng_state()
    assert run_check(check, REFERENCES[check]) is None
    assert torch.equal(torch.random.get_rng_state(), before), f"{check.__name__} changed the global torch RNG"


@pytest.mark.parametrize("case", WRONG, ids=lambda w: w.id)
def test_the_wrong_answer_is_rejected_and_named(case):
    result = verdict(case, WRONG)
    assert result.rejected, "the check let this wrong answer pass"
    assert not result.misleading, f"the message blames another mistake: {result.message}"
    assert result.named, f"the message does not name the mistake ({case.hint!r}): {result.message}"
    first = result.message.splitlines()[0]
    assert len(first) <= HEADLINE_CHARS, f"first line of {len(first)} characters: {first!r}"



def test_every_function_of_the_checks_is_hidden_from_tracebacks():
    """IPython skips frames whose locals hold ``__tracebackhide__ = True``: the student sees the hint,
    not the check's source."""
    missing = []
    for path in sorted(Path(checks.__file__).parent.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            body = node.body
            if isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                body = body[1:]  # the docstring
            if body and not (isinstance(body[0], ast.Assign) and getattr(body[0].targets[0], "id", "") == "__tracebackhide__"):
                missing.append(f"{path.name}:{node.lineno} {node.name}")
    assert not missing, missing
