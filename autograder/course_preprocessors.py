"""nbgrader preprocessors used by the pruning course's autograder.

Loaded by ``autograder/nbgrader_config.py`` (which puts this directory on
``sys.path``), so it must only depend on nbgrader and its own dependencies.

``CourseExecute``
    nbgrader's ``Execute`` aborts the *whole* notebook when the kernel dies
    (``os._exit``, a segfault in an extension, the OOM killer) or when output
    stops arriving after a cell finished: the submission then gets no grades
    and no feedback at all.  And a kernel that ignores the interrupt sent to a
    timed-out cell (a loop with a bare ``except:``) makes every later cell wait
    for its own timeout.  ``CourseExecute`` records each of these as an error
    output on the cell where it happened (shutting a stuck kernel down), marks
    every later code cell as not executed (an error output, so later test cells
    score zero instead of full marks for having no output), and lets nbgrader
    carry on: the cells that ran before keep their credit and feedback is
    produced.

    It also keeps the verdict out of the student's reach: a graded test cell
    is never sent to the kernel. Its (instructor's) source runs here, in the
    grading process, with every name it does not define standing for the
    learner's object of that name in the kernel
    (:mod:`pruning_course.grading.remote`): the checks call the learner's
    functions across the process boundary, and their result -- a raised
    failure or not -- is written into the cell's outputs by this process,
    which nbgrader then scores. Each kernel talks over IPC sockets in a
    private folder of its own (the sandbox mounts only that folder writable:
    :mod:`pruning_course.grading.sandbox`).

    ``exit()`` / ``quit()`` shut the kernel down a moment *after* their cell
    finished, so the death shows up in some later cell: the error then names
    the cell that called it (``KernelExitedError`` on that cell; the later
    cells are marked not executed).

``LimitOutputBytes``
    nbgrader's ``LimitOutput`` caps the number of lines only, so a single line
    of 200 MiB would be stored whole in the graded notebook and again in the
    feedback page.  This caps the bytes of each code cell's outputs, keeping
    the start of the text and a ``[... N bytes cut]`` marker.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import shutil
import tempfile
import traceback
from pathlib import Path
from queue import Empty
from time import monotonic

from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbclient.util import ensure_async, run_sync
from nbformat.v4 import new_output
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Integer

#: ``ename`` of the error output put on the cell during which the kernel died.
KERNEL_DIED = "KernelDiedError"
#: ``ename`` of the error output put on code cells skipped after a crash.
NOT_EXECUTED = "NotExecutedError"
#: ``ename`` used when output of a finished cell did not arrive in time.
OUTPUT_LOST = "OutputTimeoutError"
#: ``ename`` put on a timed-out cell whose kernel ignored the interrupt.
KERNEL_STUCK = "KernelUnresponsiveError"
#: ``ename`` put on the cell whose ``exit()`` / ``quit()`` shut the kernel down.
KERNEL_EXITED = "KernelExitedError"


def _error(ename: str, evalue: str):
    return new_output("error", ename=ename, evalue=evalue,
                      traceback=[f"\x1b[0;31m{ename}\x1b[0m: {evalue}"])


def _label(cell, index: int) -> str:
    """How messages name a cell: its position in the notebook and its nbgrader id."""
    grade_id = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
    return f"cell {index + 1}" + (f" ({grade_id})" if grade_id else "")


class CourseExecute(Execute):
    """``Execute`` that survives a dead or stuck kernel (see the module docstring)."""

    interrupt_grace = Integer(
        30,
        help="Seconds a kernel gets to respond after a timed-out cell was interrupted. A kernel that "
             "does not (the code ignores KeyboardInterrupt, e.g. a loop with a bare except) is shut "
             "down and the later cells are marked not executed, instead of each waiting for its own "
             "timeout.",
    ).tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._died_in = None  # label of the cell where the kernel died or got stuck
        # test cells of exercises answered with the course's own code (set by pruning_course.grading)
        self._void = dict(nb.metadata.get("pruning_course", {}).get("void_tests", {}))
        self._primed = False  # the kernel has not loaded the checks' module yet
        self._exit_asked = None  # (index, cell) of the last cell that called exit() / quit()
        self._kernel_dir = Path(tempfile.mkdtemp(prefix="k"))
        try:
            return super().preprocess(nb, resources, km)
        finally:
            shutil.rmtree(self._kernel_dir, ignore_errors=True)

    def create_kernel_manager(self):
        """A kernel with IPC sockets and its connection file in a private folder (the sandbox's only writable one)."""
        km = super().create_kernel_manager()
        km.transport = "ipc"
        km.ip = str(self._kernel_dir / "ipc")
        km.connection_file = str(self._kernel_dir / "connection.json")
        return km

    # -- graded test cells: judged in this process ------------------------------------------
    @staticmethod
    def _is_test_cell(cell) -> bool:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        return cell.cell_type == "code" and bool(meta.get("grade")) and not meta.get("solution")

    async def _async_run_in_kernel(self, code: str, timeout: float) -> str:
        """Execute ``code`` in the kernel (not recorded in the notebook); return what it printed."""
        from pruning_course.grading.remote import LearnerGone, LearnerTimeout
        msg_id = self.kc.execute(code, store_history=False, allow_stdin=False, stop_on_error=False)
        deadline, printed = monotonic() + timeout, []
        while True:
            if monotonic() > deadline:
                with contextlib.suppress(Exception):
                    await ensure_async(self.km.interrupt_kernel())
                raise LearnerTimeout(f"your code did not finish within {timeout:.0f} s")
            try:
                msg = await ensure_async(self.kc.iopub_channel.get_msg(timeout=1))
            except Empty:
                if not await ensure_async(self.kc.is_alive()):
                    raise LearnerGone("the kernel died while running your code") from None
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                printed.append(content.get("text", ""))
            elif kind == "status" and content.get("execution_state") == "idle":
                return "".join(printed)[-20000:]

    _run_in_kernel = run_sync(_async_run_in_kernel)

    def _judge_test_cell(self, cell, index):
        from pruning_course.grading.remote import Learner, LearnerGone, LearnerNamespace, LearnerTimeout

        void = self._void.get(cell.get("metadata", {}).get("nbgrader", {}).get("grade_id"))
        if void:
            cell.outputs = [_error("ReferenceAnswer", void)]
            return cell

        started = monotonic()
        learner = Learner(self._run_in_kernel, self._kernel_dir / "exchange",
                          timeout=lambda: self.timeout - (monotonic() - started))
        local = LearnerNamespace(learner)
        printed, error = io.StringIO(), None
        try:
            with contextlib.redirect_stdout(printed):
                exec(compile(cell.source, f"<test cell {_label(cell, index)}>", "exec"),  # noqa: S102
                     {"__name__": "__main__", "__builtins__": builtins}, local)
        except LearnerGone:
            if self._exit_asked is not None:  # an earlier cell's exit() shut the kernel down: blame that cell
                at, exited = self._exit_asked
                self._died_in = _label(exited, at)
                exited.outputs.append(_error(KERNEL_EXITED, "this cell called exit() or quit(), which shut the kernel "
                                                            "down; later cells were not executed"))
                cell.outputs = [_error(NOT_EXECUTED, f"not executed: the kernel was lost earlier, in {self._died_in}")]
                cell.execution_count = None
                return cell
            self._died_in = _label(cell, index)
            error = _error(KERNEL_DIED, "the kernel died while this cell's checks were calling your code (the "
                                        "process crashed, called os._exit or ran out of memory); later cells were "
                                        "not executed")
        except LearnerTimeout:
            error = new_output("error", **self.error_on_timeout)
        except Exception as exc:  # noqa: BLE001 - a failed check is an exception like any other
            error = exc
        cell.outputs = []
        text = "".join(learner.printed) + printed.getvalue()
        if text:
            cell.outputs.append(new_output("stream", name="stdout", text=text))
        if isinstance(error, dict):
            cell.outputs.append(error)
            if error.get("ename") == "CellTimeoutError" and not self._responds(self.interrupt_grace):
                self._shut_down_stuck_kernel(cell, index)
        elif error is not None:
            ename = getattr(error, "ename", type(error).__name__)
            frames = [line for line in traceback.format_exception(type(error), error, error.__traceback__)
                      if "<test cell" in line]
            cell.outputs.append(new_output("error", ename=ename, evalue=str(error),
                                           traceback=frames + [f"\x1b[0;31m{ename}\x1b[0m: {error}"]))
        self.code_cells_executed = getattr(self, "code_cells_executed", 0) + 1
        cell.execution_count = self.code_cells_executed
        return cell

    def on_cell_executed(self, **kwargs):
        super().on_cell_executed(**kwargs)
        payload = (kwargs.get("execute_reply") or {}).get("content", {}).get("payload") or []
        if any(p.get("source") == "ask_exit" and not p.get("keepkernel") for p in payload):
            self._exit_asked = (kwargs["cell_index"], kwargs["cell"])

    async def _async_responds(self, seconds: float) -> bool:
        """Whether the kernel answers a kernel_info request (queued behind any running code)."""
        msg_id = await ensure_async(self.kc.kernel_info())
        deadline = monotonic() + seconds
        while monotonic() < deadline:
            try:
                msg = await ensure_async(self.kc.shell_channel.get_msg(timeout=1))
            except Empty:
                if not await ensure_async(self.kc.is_alive()):
                    return False
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return True
        return False

    _responds = run_sync(_async_responds)

    def preprocess_cell(self, cell, resources, index):
        if not getattr(self, "_primed", False):
            # before any student code: load the module the checks talk to (and torch) in the kernel, so
            # that its import time does not count against the first test cell's time limit
            self._primed = True
            with contextlib.suppress(Exception):
                self._run_in_kernel("import pruning_course.grading.remote", max(60, self.timeout or 0))
        if getattr(self, "_died_in", None) is not None:
            if cell.cell_type == "code" and cell.source.strip():
                cell.outputs = [_error(NOT_EXECUTED, f"not executed: the kernel was lost earlier, in {self._died_in}")]
                cell.execution_count = None
            return cell, resources
        if self._is_test_cell(cell) and cell.source.strip():
            return self._judge_test_cell(cell, index), resources
        try:
            cell, resources = super().preprocess_cell(cell, resources, index)
        except DeadKernelError:
            if getattr(self, "_exit_asked", None) is not None:
                # exit() returned normally and the kernel went away between cells: blame its cell
                at, exited = self._exit_asked
                self._died_in = _label(exited, at)
                self.log.error("%s called exit(); the kernel shut down, later cells are marked not executed",
                               self._died_in)
                exited.outputs.append(_error(
                    KERNEL_EXITED, "this cell called exit() or quit(), which shut the kernel down; "
                                   "later cells were not executed"))
                cell.outputs = [_error(NOT_EXECUTED, f"not executed: the kernel was lost earlier, in {self._died_in}")]
                cell.execution_count = None
                return cell, resources
            self._died_in = _label(cell, index)
            self.log.error("The kernel died while executing %s; later cells are marked not executed",
                           self._died_in)
            cell.outputs.append(_error(
                KERNEL_DIED,
                "the kernel died while running this cell (the process crashed, called os._exit or "
                "ran out of memory); later cells were not executed"))
            return cell, resources
        except CellTimeoutError as exc:
            # raised when the output of a cell did not arrive within iopub_timeout after its
            # reply -- typically because the cell timed out and the kernel ignored the interrupt
            if not self._responds(self.interrupt_grace):
                self._shut_down_stuck_kernel(cell, index)
            else:
                # an incomplete output must not be mistaken for a passing test
                self.log.error("Output of %s did not arrive in time: %s", _label(cell, index), exc)
                cell.outputs.append(_error(
                    OUTPUT_LOST, "the output of this cell did not arrive in time; the cell is counted as failed"))
            return cell, resources
        timed_out = any(o.get("output_type") == "error" and o.get("ename") == "CellTimeoutError"
                        for o in cell.get("outputs", []))
        if timed_out and not self._responds(self.interrupt_grace):
            self._shut_down_stuck_kernel(cell, index)
        return cell, resources

    def _shut_down_stuck_kernel(self, cell, index: int) -> None:
        self._died_in = _label(cell, index)
        self.log.error("The kernel ignored the interrupt of %s; shutting it down, later cells are "
                       "marked not executed", self._died_in)
        cell.outputs.append(_error(
            KERNEL_STUCK,
            f"this cell did not finish within the time limit and the kernel did not respond within "
            f"{self.interrupt_grace} s after it was interrupted (does the code catch KeyboardInterrupt, "
            "e.g. with a bare except?); the kernel was shut down and later cells were not executed"))
        try:
            run_sync(self.km.shutdown_kernel)(now=True)
        except Exception:  # already gone
            pass


class LimitOutputBytes(NbGraderPreprocessor):
    """Cap the bytes of every code cell's outputs (see the module docstring).

    Text (streams, ``text/*`` data, tracebacks) keeps its start up to the budget, then
    ``[... N bytes cut]``; other data (images, HTML, JSON) that does not fit is replaced by
    such a marker.  Error outputs always keep their name and a short message, so a cut never
    turns a failed test into a passing one."""

    max_bytes = Integer(
        100_000,
        help="Most bytes of output kept per code cell (-1: no limit).",
    ).tag(config=True)

    #: what an error output keeps even when the cell's budget is spent
    error_floor = 2_000

    def preprocess_cell(self, cell, resources, index):
        if self.max_bytes < 0 or cell.get("cell_type") != "code":
            return cell, resources
        left = self.max_bytes
        for out in cell.get("outputs", []):
            kind = out.get("output_type")
            if kind == "stream":
                head, cut, left = _cut(out.get("text", ""), left)
                if cut:
                    out["text"] = _marked(head, cut) + "\n"
            elif kind in ("display_data", "execute_result"):
                left = _cut_data(out, left)
            elif kind == "error":
                budget = max(left, self.error_floor)
                head, cut, budget = _cut(out.get("evalue", ""), budget)
                if cut:
                    out["evalue"] = _marked(head, cut)
                head, cut, budget = _cut("\n".join(out.get("traceback", [])), budget)
                if cut:
                    out["traceback"] = _marked(head, cut).split("\n")
                left = min(left, budget)
        return cell, resources


def _as_text(value) -> str:
    return "".join(value) if isinstance(value, list) else value


def _cut(value, budget: int) -> tuple[str, int, int]:
    """``value`` (str or list of str) cut to ``budget`` UTF-8 bytes: (the start kept, bytes cut,
    budget left)."""
    text = _as_text(value)
    data = text.encode("utf-8", errors="replace")
    if len(data) <= budget:
        return text, 0, budget - len(data)
    head = data[: max(budget, 0)].decode("utf-8", errors="ignore")
    return head, len(data) - len(head.encode("utf-8")), 0


def _marked(head: str, cut: int) -> str:
    return f"{head}{'' if not head or head.endswith(chr(10)) else chr(10)}[... {cut} bytes cut]"


def _cut_data(out, budget: int) -> int:
    """Cut a display_data / execute_result output to ``budget`` bytes; returns the budget left.
    Text that does not fit keeps its start; other data that does not fit is dropped."""
    data = out.get("data", {})
    cut = 0
    for mime in sorted(data, key=lambda m: m != "text/plain"):  # the plain text first
        value = data[mime]
        if mime == "text/plain":
            data[mime], cut, budget = _cut(value, budget)
            continue
        size = len((_as_text(value) if isinstance(value, (str, list)) else json.dumps(value)).encode("utf-8"))
        if size <= budget:
            budget -= size
        else:
            del data[mime]
            cut += size
    if cut:
        data["text/plain"] = _marked(data.get("text/plain", ""), cut)
    return budget
