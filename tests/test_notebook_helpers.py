"""The fallback of the notebooks' locked cells: the reference while an exercise is the stub, the
learner's own function once it works, and a learner's mistake never silently hidden."""

from __future__ import annotations

import pytest
import torch

from pruning_course.masks import per_row_mask
from pruning_course.notebook_helpers import is_unfinished, use_reference_if_unfinished


def stub(scores, sparsity):
    '''What the released notebook holds.'''
    # YOUR CODE HERE
    raise NotImplementedError()


def finished(scores, sparsity):
    '''A learner's working answer (every row keeps its largest entries).'''
    k = int(scores.shape[1] * sparsity)
    keep = torch.ones_like(scores, dtype=torch.bool)
    keep.scatter_(1, scores.argsort(dim=1)[:, :k], False)
    return keep


def half_done(scores, sparsity):
    k = int(scores.shape[1] * sparsity)
    if k:
        raise NotImplementedError("the k > 0 case")
    return torch.ones_like(scores, dtype=torch.bool)


def crashes(scores, sparsity):
    return scores.reshape(5, -1) > 0  # a shape slip


def always_rejects(scores, sparsity):
    raise ValueError("sparsity must be in [0, 1)")


SCORES = torch.arange(12.0).reshape(2, 6)


def test_the_stub_is_recognised_and_a_written_function_is_not():
    assert is_unfinished(stub)
    assert not is_unfinished(finished) and not is_unfinished(half_done)
    assert not is_unfinished(len)  # no source: only a call can tell


def test_the_stub_is_replaced_by_the_reference_with_one_notice(capsys):
    mask = use_reference_if_unfinished(stub, per_row_mask, "wanda_mask")
    assert capsys.readouterr().out.strip() == ("your `wanda_mask` is not finished: the rest of this notebook uses the "
                                               "course's reference")
    assert torch.equal(mask(SCORES, 0.5), per_row_mask(SCORES, 0.5))
    assert capsys.readouterr().out == "" and mask.uses_reference()


def test_a_working_function_is_the_learners_own(capsys):
    calls = []

    def learners(scores, sparsity):
        calls.append(1)
        return finished(scores, sparsity)

    mask = use_reference_if_unfinished(learners, per_row_mask, "wanda_mask")
    assert torch.equal(mask(SCORES, 0.5), finished(SCORES, 0.5)) and calls == [1]
    assert capsys.readouterr().out == "" and not mask.uses_reference()
    assert mask.__name__ == "learners"


def test_a_late_not_implemented_switches_to_the_reference_for_good(capsys):
    mask = use_reference_if_unfinished(half_done, per_row_mask, "wanda_mask")
    assert capsys.readouterr().out == ""
    assert torch.equal(mask(SCORES, 0.0), torch.ones_like(SCORES, dtype=torch.bool))  # the learner's part works
    assert torch.equal(mask(SCORES, 0.5), per_row_mask(SCORES, 0.5))
    assert "not finished" in capsys.readouterr().out
    assert mask.uses_reference()


def test_a_crash_is_named_then_the_reference_runs(capsys):
    mask = use_reference_if_unfinished(crashes, per_row_mask, "wanda_mask")
    assert torch.equal(mask(SCORES, 0.5), per_row_mask(SCORES, 0.5))
    out = capsys.readouterr().out
    assert out.startswith("your `wanda_mask` raised RuntimeError: shape '[5, -1]' is invalid") and "reference" in out


def test_an_error_the_reference_raises_too_is_the_learners_to_see():
    mask = use_reference_if_unfinished(always_rejects, per_row_mask, "wanda_mask")
    with pytest.raises(ValueError, match="sparsity must be in"):
        mask(SCORES, 1.5)
    assert not mask.uses_reference()


def test_wrapping_again_wraps_the_learners_function_not_the_wrapper(capsys):
    once = use_reference_if_unfinished(stub, per_row_mask, "wanda_mask")
    twice = use_reference_if_unfinished(once, per_row_mask, "wanda_mask")
    assert twice.learner_function is stub and twice.uses_reference()
    fixed = use_reference_if_unfinished(use_reference_if_unfinished(finished, per_row_mask, "m"), per_row_mask, "m")
    assert fixed.learner_function is finished and not fixed.uses_reference()


def test_a_comparison_is_skipped_only_for_the_stub(capsys):
    from pruning_course.notebook_helpers import learner_finished

    assert not learner_finished(stub, "gate_heads")
    assert capsys.readouterr().out.strip() == "your `gate_heads` is not finished: the comparison with the package is skipped"
    assert learner_finished(finished, "gate_heads") and learner_finished(half_done, "gate_heads")
    assert capsys.readouterr().out == ""


def test_the_reference_hook_statistic_is_the_mean_square_and_leaves_no_hook():
    from pruning_course.calibration import collect_input_statistic

    linear = torch.nn.Linear(5, 3)
    batches = [torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(s)) for s in range(3)]
    expected = torch.cat([b.reshape(-1, 5) for b in batches]).pow(2).mean(dim=0)
    assert torch.allclose(collect_input_statistic(linear, linear, batches), expected)
    assert not linear._forward_hooks


def test_a_log_axis_only_for_values_that_span_an_order_of_magnitude():
    from pruning_course.notebook_helpers import value_scale

    assert value_scale([20.2, 45.0, 383.0, 1630.5]) == "log"
    assert value_scale([376.1, 377.4, 378.0]) == "linear"
    assert value_scale([0.0, 5.0, 100.0]) == "linear" and value_scale([]) == "linear"


def _notebook_cells():
    import json
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parent.parent / "solutions").glob("*/*.ipynb")):
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        yield path.stem, [("".join(c["source"]), c["metadata"].get("nbgrader", {})) for c in cells]


def test_the_fallbacks_never_make_an_honest_solution_a_reference_answer():
    from pruning_course.grading.tampering import exercise_names, reference_answers

    for name, cells in _notebook_cells():
        exercises = exercise_names([s for s, meta in cells if meta.get("solution")])
        positions = [(i + 1, s, not meta.get("locked", False)) for i, (s, meta) in enumerate(cells)]
        assert reference_answers(positions, exercises) == [], name


def test_an_exercise_is_rebound_to_the_reference_only_after_every_test_of_it():
    import ast
    import re

    rebinds = 0
    for name, cells in _notebook_cells():
        for position, (source, meta) in enumerate(cells):
            for node in ast.walk(ast.parse("\n".join(l for l in source.splitlines() if not l.startswith("%")))):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) \
                        and getattr(node.value.func, "id", None) == "use_reference_if_unfinished":
                    rebinds += 1
                    assert meta.get("locked") and not meta.get("solution"), (name, position)
                    exercise = node.targets[0].id
                    later_tests = [p for p, (s, m) in enumerate(cells) if p > position and m.get("grade")
                                   and re.search(rf"\b{exercise}\b", s)]
                    assert later_tests == [], f"{name}: a graded cell after the fallback would score the reference"
    assert rebinds >= 13  # 03, 05, 09, 10, 11, 12


def test_every_notebook_starts_its_clock_first_and_prints_its_runtime_last():
    """The README's runtimes are what each notebook's last cell prints (issue 15)."""
    import json
    from pathlib import Path

    notebooks = sorted((Path(__file__).resolve().parent.parent / "solutions").glob("*/*.ipynb"))
    assert len(notebooks) == 12
    for path in notebooks:
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        assert "".join(cells[0]["source"]).startswith("from pruning_course.notebook_helpers import NotebookRuntime\n"
                                                      "NOTEBOOK_RUNTIME = NotebookRuntime()"), path.name
        assert "".join(cells[-1]["source"]) == "print(NOTEBOOK_RUNTIME)", path.name


def test_the_runtime_line_says_how_long_in_which_mode(monkeypatch):
    from pruning_course import notebook_helpers

    monkeypatch.setenv("PRUNING_COURSE_QUICK", "1")
    clock = notebook_helpers.NotebookRuntime()
    clock.start -= 125.4
    line = str(clock)
    assert line.startswith("notebook runtime: 2 min 05 s from the setup cell to here (quick mode, tiny model, ")
    assert line.endswith(f"{torch.get_num_threads()} torch threads)")
