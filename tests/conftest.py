import os
import shutil
import tempfile
import warnings
from pathlib import Path

# Each test session runs in an empty temp dir of its own (set before torch or nbgrader can look),
# so no test passes on something an earlier run left in /tmp; at the end the dir must hold
# nothing but pytest's own folders (see pytest_sessionfinish).
SESSION_TMP = Path(tempfile.mkdtemp(prefix="pc-tests-"))  # a short path: AF_UNIX sockets go inside it
os.environ["TMPDIR"] = str(SESSION_TMP)
tempfile.tempdir = None  # recomputed from TMPDIR
TORCH_CACHE = "torchinductor-cache"  # torch makes its compile cache folder as soon as a model is built
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(SESSION_TMP / TORCH_CACHE))

import pytest  # noqa: E402
import torch  # noqa: E402

from pruning_course.architectures import adapter_for  # noqa: E402
from pruning_course.testing import TINY_FAMILIES, tiny_model, tiny_tokenizer  # noqa: E402

warnings.filterwarnings("ignore", message=".*must be `None` or an integer within the vocabulary.*")


@pytest.fixture(scope="session")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(params=TINY_FAMILIES)
def tiny(request, tokenizer):
    """(model, adapter, tokenizer) for each tiny family, freshly initialised per test."""
    model, tok = tiny_model(request.param, seed=0, tokenizer=tokenizer)
    return model, adapter_for(model), tok


@pytest.fixture
def windows(tokenizer):
    return torch.randint(0, len(tokenizer), (8, 32), generator=torch.Generator().manual_seed(0))


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if anything was left in the session's temp dir; remove it after a clean run."""
    left = sorted(p.name for p in SESSION_TMP.iterdir() if not p.name.startswith("pytest-of-") and p.name != TORCH_CACHE)
    if left:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"FAILED: the tests left {len(left)} file(s) in the temp dir {SESSION_TMP}: "
                                f"{', '.join(left[:10])}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif session.exitstatus == pytest.ExitCode.OK:
        shutil.rmtree(SESSION_TMP, ignore_errors=True)


@pytest.fixture
def run(capsys):
    """Run the ``pruning-course`` command in-process: ``run(*argv) -> (exit status, stdout, stderr)``."""
    from pruning_course.cli import main

    def _run(*argv):
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err
    return _run

