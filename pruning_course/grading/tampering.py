"""Reading a submission's code before it runs: answers that are the course's own reference, and
attempts at tampering with the grading.

Neither decides a score by itself being clever: the sandbox and the out-of-process checks
(:mod:`.sandbox`, :mod:`.remote`) are what make tampering fail. This module says *what was
tried*, so that it shows in the student's status and reason and not only in a log:

* :func:`reference_answers` -- an exercise answered with the package's own implementation,
  imported (``from pruning_course.unstructured.wanda import wanda_scores``) or assigned
  (``wanda_mask = pruning_course.masks.per_row_mask``), or a ``def`` that only hands over to a
  package function of the same name. That exercise earns nothing, and the reason says so.
* :func:`tampering_attempts` -- code that reaches for the grading machinery: IPython input
  transformers and event hooks, replacing objects inside ``pruning_course`` or ``sys.modules``,
  detached processes, and the grader's files (the gradebook, ``grades.csv``, the status file).

A static reading can be evaded by code built at run time (``exec`` of a string); that is why
it only reports, and why nothing it misses can change a verdict.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

__all__ = ["Finding", "exercise_names", "reference_answers", "tampering_attempts"]

_GRADER_FILES = ("gradebook.db", "grading_status.json", "grades.csv", "nbgrader_config", "autograded", ".grading.lock")
_IPYTHON_HOOKS = ("input_transformers_post", "input_transformers_cleanup", "input_transformer_manager",
                  "ast_transformers", "set_custom_exc", "register_magic_function")


@dataclass(frozen=True)
class Finding:
    cell: int       # 1-based position of the code cell in the notebook
    name: str       # the exercise (reference answers) or what was touched (tampering)
    text: str       # one sentence for the reason

    def __str__(self) -> str:
        return f"cell {self.cell}: {self.text}"


def exercise_names(solution_sources: list[str]) -> set[str]:
    """The functions and classes the student must write: those the release's solution cells define."""
    names = set()
    for source in solution_sources:
        tree = _parse(source)
        if tree is not None:
            names |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    return names


def reference_answers(cells: list[tuple[int, str, bool]], exercises: set[str]) -> list[Finding]:
    """Exercises answered with the package's own code. ``cells``: ``(position, source, editable)``
    of the notebook's code cells; only the editable ones (not locked: nbgrader puts locked cells
    back as released) are read for findings, all for the names they bind."""
    package_names = set()  # names bound to pruning_course modules or objects anywhere in the notebook
    findings = []
    for position, source, editable in cells:
        tree = _parse(source)
        if tree is None:
            continue
        package_names |= _package_bindings(tree)
        for node in ast.walk(tree) if editable else ():
            if isinstance(node, ast.ImportFrom) and _is_package(node.module):
                for bound in (alias.asname or alias.name for alias in node.names):
                    if bound in exercises:
                        findings.append(Finding(position, bound, f"`{bound}` is imported from the course package "
                                                f"({node.module}), not written: that exercise earns no points"))
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name) and target.id in exercises and node.value is not None \
                            and _root_name(node.value) in package_names:
                        findings.append(Finding(position, target.id, f"`{target.id}` is assigned the course package's "
                                                f"own `{ast.unparse(node.value)}`: that exercise earns no points"))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in exercises:
                body = [s for s in node.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
                if len(body) == 1 and isinstance(body[0], ast.Return) and isinstance(body[0].value, ast.Call):
                    func = body[0].value.func
                    if _root_name(func) in package_names and _last_name(func) == node.name:
                        findings.append(Finding(position, node.name, f"`{node.name}` only calls the course package's "
                                                f"own `{ast.unparse(func)}`: that exercise earns no points"))
    return findings


def tampering_attempts(cells: list[tuple[int, str, bool]]) -> list[Finding]:
    """Code of the editable cells that reaches for the grading machinery (see the module docstring)."""
    findings = []
    package_names = {"pruning_course"}
    for position, source, editable in cells:
        tree = _parse(source)
        if tree is None:
            continue
        package_names |= _package_bindings(tree)
        for node in ast.walk(tree) if editable else ():
            found = None
            if isinstance(node, ast.Attribute) and node.attr in _IPYTHON_HOOKS:
                found = f"touches IPython's `{node.attr}` (it could rewrite the test cells)"
            elif isinstance(node, ast.Attribute) and node.attr == "register" and _last_name(node.value) == "events":
                found = "registers an IPython event callback"
            elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
                targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
                for target in targets:
                    if isinstance(target, (ast.Attribute, ast.Subscript)) and _root_name(target) in package_names:
                        found = f"replaces `{ast.unparse(target)}` inside the course package"
                    elif isinstance(target, ast.Subscript) and ast.unparse(target.value) == "sys.modules":
                        found = "replaces a module in sys.modules"
            elif isinstance(node, ast.Call):
                name = _last_name(node.func)
                if name == "setattr" and node.args and _root_name(node.args[0]) in package_names:
                    found = f"replaces an attribute of `{ast.unparse(node.args[0])}` inside the course package"
                elif name in ("setsid", "fork", "forkpty", "daemon") or any(
                        k.arg == "start_new_session" for k in node.keywords):
                    found = f"starts a detached process (`{ast.unparse(node.func)}`)"
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and any(
                    f in node.value for f in _GRADER_FILES):
                found = f"names the grader's file {next(f for f in _GRADER_FILES if f in node.value)}"
            if found:
                findings.append(Finding(position, found, found))
    return _unique(findings)


def _is_package(module: str | None) -> bool:
    return (module or "").split(".")[0] == "pruning_course"


def _package_bindings(tree) -> set[str]:
    """The names a cell binds to the course package or to objects imported from it."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names if _is_package(a.name)}
        elif isinstance(node, ast.ImportFrom) and _is_package(node.module):
            names |= {a.asname or a.name for a in node.names}
    return names


def _parse(source: str):
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]  # magics
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _root_name(node) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def _last_name(node) -> str | None:
    if isinstance(node, ast.Attribute):
        return node.attr
    return node.id if isinstance(node, ast.Name) else None


def _unique(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for f in findings:
        if (f.cell, f.text) not in seen:
            seen.add((f.cell, f.text))
            out.append(f)
    return out
