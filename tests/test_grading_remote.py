"""Checks across the process boundary (pruning_course.grading.remote), against a real ipykernel:
the verdict is computed in this process, the learner's code runs in the kernel, and what comes
back is unpickled weights-only."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("ipykernel")
jupyter_client = pytest.importorskip("jupyter_client")

from pruning_course.checks import CheckFailed  # noqa: E402
from pruning_course.grading.remote import Learner, LearnerError, LearnerNamespace, safe_load  # noqa: E402


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    folder = tmp_path_factory.mktemp("k")
    km = jupyter_client.KernelManager(transport="ipc", ip=str(folder / "ipc"), connection_file=str(folder / "c.json"))
    km.start_kernel(env={**os.environ, "JPY_PARENT_PID": ""})
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)

    def run(code: str, timeout: float = 60) -> str:
        printed = []
        reply = kc.execute_interactive(code, timeout=timeout, store_history=False, output_hook=lambda m: printed.append(
            m["content"].get("text", "")) if m["msg_type"] == "stream" else None)
        assert reply["content"]["status"] == "ok", reply["content"]
        return "".join(printed)

    yield run, folder
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def judge(kernel, test_source: str) -> str:
    """Run a test cell's source here, its free names standing for the kernel's objects; returns what it printed."""
    run, folder = kernel
    learner = Learner(run, folder / "exchange", timeout=60)
    import contextlib

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(test_source, "<test cell>", "exec"), {"__builtins__": __builtins__}, LearnerNamespace(learner))
    return printed.getvalue()


def test_a_correct_learner_function_passes_and_a_wrong_one_is_named(kernel):
    run, _ = kernel
    run("import torch\n"
        "def wanda_scores(W, act_sq):\n    return W.abs() * act_sq.sqrt()\n"
        "def wrong_scores(W, act_sq):\n    return W.abs()\n")
    assert "\u2713" in judge(kernel, "from pruning_course.checks.wanda import check_wanda_scores\n"
                                     "check_wanda_scores(wanda_scores)")
    with pytest.raises(CheckFailed):
        judge(kernel, "from pruning_course.checks.wanda import check_wanda_scores\ncheck_wanda_scores(wrong_scores)")


def test_replacing_the_checks_in_the_kernel_changes_no_verdict(kernel):
    run, _ = kernel
    run("import pruning_course.checks.wanda as w, pruning_course.checks as c\n"
        "w.check_wanda_scores = lambda fn, **kw: print('all good')\n"
        "c.fail = lambda message: None\n"
        "def lazy_scores(W, act_sq):\n    return W\n")
    with pytest.raises(CheckFailed):
        judge(kernel, "from pruning_course.checks.wanda import check_wanda_scores\ncheck_wanda_scores(lazy_scores)")


def test_models_and_gradients_cross_the_boundary(kernel):
    run, _ = kernel
    run("def gate_heads(x, gates):\n"
        "    heads = gates.shape[0]\n"
        "    shape = x.shape\n"
        "    return (x.reshape(*shape[:-1], heads, shape[-1] // heads) * gates[:, None]).reshape(shape)\n"
        "def prunable_linears(model):\n"
        "    import torch.nn as nn\n"
        "    from transformers.pytorch_utils import Conv1D\n"
        "    return [(m, 'weight') for n, m in model.named_modules()\n"
        "            if isinstance(m, (nn.Linear, Conv1D)) and 'lm_head' not in n and 'project' not in n]\n")
    judge(kernel, "from pruning_course.checks.heads import check_gate_heads\ncheck_gate_heads(gate_heads)")
    judge(kernel, "from pruning_course.checks.why_pruning import check_prunable_linears\n"
                  "check_prunable_linears(prunable_linears)")


def test_a_missing_name_is_a_name_error_and_exceptions_keep_their_type(kernel):
    run, _ = kernel
    run("def not_done(*args):\n    raise NotImplementedError()\n")
    with pytest.raises(NameError, match="never_defined"):
        judge(kernel, "never_defined(1)")
    with pytest.raises(CheckFailed, match="not implemented yet"):
        judge(kernel, "from pruning_course.checks.wanda import check_wanda_scores\ncheck_wanda_scores(not_done)")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/pc-remote-pwned",))


def test_a_reply_that_names_any_other_global_is_refused_unrun(tmp_path):
    buffer = io.BytesIO()
    torch.save(("ok", _Evil(), (), {}), buffer)
    with pytest.raises(LearnerError, match="does not accept"):
        safe_load(buffer.getvalue())
    assert not Path("/tmp/pc-remote-pwned").exists()
    buffer = io.BytesIO()
    torch.save(("ok", {"weights": torch.ones(2)}, [1, "a"], {}), buffer)
    assert safe_load(buffer.getvalue())[1]["weights"].sum() == 2


def test_the_sandbox_sees_a_venv_and_package_that_live_under_tmp(tmp_path):
    """A fresh clone in /tmp (CI) has its venv and package there: the sandbox's own /tmp must not hide them."""
    import subprocess
    import sys

    from pruning_course.grading.sandbox import bwrap_argv, sandbox_problem

    if sandbox_problem() is not None:
        pytest.skip("bubblewrap is not usable here")
    fake = tmp_path / "venv-under-tmp"
    fake.mkdir()
    (fake / "marker").write_text("seen")
    argv = bwrap_argv(["cat", str(fake / "marker")], tmp_path / "kernel", readable=[fake])
    assert subprocess.run(argv, capture_output=True, text=True).stdout == "seen"
    argv = bwrap_argv([sys.executable, "-c", "import pruning_course"], tmp_path / "kernel")
    assert subprocess.run(argv, capture_output=True, text=True).returncode == 0


def test_a_sandboxed_kernel_reads_the_instructors_cache_and_survives_it_being_read_only(tmp_path, monkeypatch):
    """The kernel's $HOME is a fresh folder: without PRUNING_COURSE_CACHE it would look for the model
    and the tokenized corpus in an empty cache under it (seconds of tokenizing per student, and no
    model at all in full mode). The cache is read-only there, so a miss must not raise."""
    import subprocess
    import sys

    from pruning_course.grading.sandbox import bwrap_argv, readable_paths, sandbox_problem

    if sandbox_problem() is not None:
        pytest.skip("bubblewrap is not usable here")
    cache = tmp_path / "instructor-cache"
    cache.mkdir()
    monkeypatch.setenv("PRUNING_COURSE_CACHE", str(cache))
    probe = ("from pruning_course.settings import cache_dir; from pruning_course.data import load_token_splits; "
             "from pruning_course.testing import tiny_tokenizer; "
             "splits = load_token_splits(tiny_tokenizer()); print(cache_dir(), len(splits['train']) > 0)")
    argv = bwrap_argv([sys.executable, "-c", probe], tmp_path / "kernel", readable=readable_paths())
    done = subprocess.run(argv, capture_output=True, text=True, env={k: v for k, v in os.environ.items()
                                                                        if k != "PRUNING_COURSE_CACHE"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(cache.resolve()), "True"]
    assert not any(cache.iterdir()), "the kernel wrote into the read-only cache"


class _Huge:
    """A reply that asks the grader to build an allow-listed module of 2 GB."""

    def __reduce__(self):
        return (torch.nn.Linear, (23_000, 23_000))


def test_a_reply_that_builds_something_huge_fails_fast_under_the_workers_memory_limit(tmp_path):
    """Allow-listed classes are called while unpickling; the worker's address-space limit
    (``Course`` passes ``memory_gb`` to every worker) makes such a reply a MemoryError of that one
    check instead of the machine's OOM killer picking a victim."""
    import subprocess
    import sys

    buffer = io.BytesIO()
    torch.save(("ok", _Huge(), (), {}), buffer)
    (tmp_path / "reply.pt").write_bytes(buffer.getvalue())
    probe = ("import resource\nfrom pruning_course.grading.remote import safe_load\n"
             "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
             "resource.setrlimit(resource.RLIMIT_AS, (used + 2**30, resource.RLIM_INFINITY))\n"
             f"try:\n    safe_load(open({str(tmp_path / 'reply.pt')!r}, 'rb').read())\n"
             "except (MemoryError, RuntimeError) as e:\n    print('refused', type(e).__name__)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "refused" in done.stdout, done.stderr[-2000:]
