"""The sandbox every student kernel runs in while it is graded: Debian's ``bubblewrap``.

Why bubblewrap. It is one small setuid-free binary from the distribution (``apt-get install
bubblewrap``), the sandbox Flatpak and GNOME use, and it needs no daemon, image or registry: a
kernel starts in about 10 ms more than without it. A rootless container runtime (podman) would
give the same isolation, but needs an image of the grading Python built and kept in step with
the instructor's environment. bubblewrap instead mounts the instructor's own interpreter and
packages read-only into an otherwise empty file system, so the kernel runs exactly the Python
that ``grade`` runs, and sees nothing else.

What the kernel gets (see :func:`bwrap_argv`):

* new user, PID, network, IPC, UTS and cgroup namespaces: no network at all (only its own
  loopback), no view of other processes; bubblewrap is PID 1 of the namespace, so when the
  kernel is shut down or killed every process it started dies with it, detached ones included
  (``--die-with-parent`` covers a killed grader too);
* read-only: ``/usr`` (and its ``/bin``, ``/lib`` links), ``/etc``, the Python installation,
  the virtual environment, this package's own folder (not the repository: no solutions, no
  submissions, no grades) and the converted-model cache;
* the model cache is read-only, so :func:`warm_kernel_caches` builds what the notebooks read from
  it (the converted model, the tokenized corpus) before the first kernel starts; without that,
  every kernel would tokenize the corpus again (seconds each) or, in full mode, fail to build the
  model with no network;
* writable: one empty private folder per kernel (its working directory, also ``$HOME``), a
  private ``/tmp``, and the folder of its connection file, where its IPC sockets live
  (``KernelManager.transport = "ipc"``: a network namespace has no shared TCP loopback);
* resource limits set before bubblewrap starts (:func:`apply_limits`): address space, CPU
  seconds, the size of any file it writes, and a process count.

``python -m pruning_course.grading.sandbox [--memory-gb N] ... -- python -m ipykernel_launcher
-f {connection_file}`` is the kernel spec's command line (:mod:`.course` writes it).
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = (
    "grading runs every student's code in a bubblewrap sandbox, and bwrap is not usable here{why}. Install it "
    "(Debian/Ubuntu: sudo apt-get install bubblewrap; Fedora: sudo dnf install bubblewrap), or pass --no-sandbox "
    "to grade without it (UNSAFE: the students' code then runs as you, can read and change your files and the "
    "grades, and can fake its own score)"
)


@dataclass(frozen=True)
class Limits:
    """Per-kernel resource limits (``setrlimit``); the defaults fit a full-mode notebook on SmolLM2."""

    memory_gb: float = 12.0      # address space of each process (RLIMIT_AS)
    cpu_seconds: int = 6 * 3600  # CPU time of each process (RLIMIT_CPU)
    file_gb: float = 2.0         # the largest file it may write (RLIMIT_FSIZE)
    processes: int = 4096        # processes and threads of the real user, all of them (RLIMIT_NPROC): a fork-bomb guard

    def argv(self) -> list[str]:
        return ["--memory-gb", str(self.memory_gb), "--cpu-seconds", str(self.cpu_seconds),
                "--file-gb", str(self.file_gb), "--processes", str(self.processes)]


def sandbox_problem() -> str | None:
    """``None`` if bubblewrap can start a sandbox here, else the one-line error :func:`grade` raises."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return INSTALL_HINT.format(why=" (it is not installed)")
    try:
        probe = subprocess.run([bwrap, *_namespaces(), "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
                                "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:
        return INSTALL_HINT.format(why=f" ({error})")
    if probe.returncode != 0:
        reason = (probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"])[-1]
        return INSTALL_HINT.format(why=f" (it failed: {reason}; unprivileged user namespaces may be disabled: "
                                        "sysctl kernel.unprivileged_userns_clone=1)")
    return None


def _namespaces() -> list[str]:
    return ["--unshare-all", "--die-with-parent", "--new-session"]


def readable_paths() -> list[Path]:
    """What the kernel may read: the interpreter, the packages, this package and the model cache."""
    from .. import settings

    package = Path(__file__).resolve().parents[1]
    paths = {Path(sys.base_prefix), Path(sys.prefix), package, settings.cache_dir()}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.add(Path(sysconfig.get_paths()[key]))
    paths.add(Path(sys.executable).resolve().parent)
    repo = package.parent
    out = []
    for path in sorted(p.resolve() for p in paths if p.exists()):
        if path == repo or path in repo.parents or path in Path.home().resolve().parents or path == Path.home().resolve():
            continue  # never a whole repository or home folder: only what lies inside them
        if not any(parent in out for parent in path.parents):
            out.append(path)
    return out


def bwrap_argv(command: list[str], writable: Path, readable: list[Path] | None = None) -> list[str]:
    """The bubblewrap command line that runs ``command`` confined (see the module docstring).

    ``writable``: the kernel's own folder (its connection file and sockets); the working
    directory and home are a fresh ``work/`` inside it."""
    from .. import settings

    work = writable / "work"
    work.mkdir(parents=True, exist_ok=True)
    # mounts apply in order: the fresh /tmp first, so that binds of folders inside /tmp (a venv or
    # the kernel's own folder there) land on top of it instead of under it
    argv = [shutil.which("bwrap") or "bwrap", *_namespaces(), "--cap-drop", "ALL", "--tmpfs", "/tmp",
            "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    for name in ("bin", "lib", "lib64", "sbin", "lib32", "libx32"):
        link = Path("/") / name
        if link.is_symlink():
            argv += ["--symlink", os.readlink(link), str(link)]
        elif link.is_dir():
            argv += ["--ro-bind", str(link), str(link)]
    for path in readable if readable is not None else readable_paths():
        argv += ["--ro-bind", str(path), str(path)]
    argv += ["--proc", "/proc", "--dev", "/dev",
             "--bind", str(writable), str(writable), "--chdir", str(work),
             "--setenv", "HOME", str(work), "--setenv", "TMPDIR", "/tmp",
             "--setenv", "IPYTHONDIR", str(work / ".ipython"), "--setenv", "MPLCONFIGDIR", str(work / ".matplotlib"),
             "--unsetenv", "JUPYTER_CONFIG_DIR", "--unsetenv", "JUPYTER_PATH", "--unsetenv", "JUPYTER_RUNTIME_DIR",
             "--setenv", "PRUNING_COURSE_SANDBOXED", "1",
             # the instructor's cache (read-only), not one under the kernel's new $HOME
             "--setenv", "PRUNING_COURSE_CACHE", str(settings.cache_dir().resolve()),
             "--setenv", "TORCHINDUCTOR_CACHE_DIR", "/tmp/torchinductor",
             # ipykernel exits when its parent looks gone, and inside the PID namespace it always does
             "--unsetenv", "JPY_PARENT_PID", "--", *command]
    return argv


def warm_kernel_caches(quick: bool) -> None:
    """Build, in the instructor's cache, what the course's notebooks load from it: the tokenized
    Wikipedia splits for the tokenizer of the mode's model and, in full mode, the converted
    SmolLM2 (see the module docstring: sandboxed kernels cannot write the cache). Takes about a
    second when all is cached; the first full-mode run converts the model once (about a minute)."""
    from ..data import load_token_splits
    from ..models import load_model

    load_token_splits(load_model("tiny-llama" if quick else "smollm2-135m", progress=False).tokenizer)


def apply_limits(limits: Limits) -> None:
    """Set the resource limits of this process (inherited by bubblewrap and the kernel)."""
    def cap(kind, value):
        soft, hard = resource.getrlimit(kind)
        value = int(value) if hard == resource.RLIM_INFINITY else min(int(value), hard)
        resource.setrlimit(kind, (value, value))

    cap(resource.RLIMIT_AS, limits.memory_gb * 2**30)
    cap(resource.RLIMIT_CPU, limits.cpu_seconds)
    cap(resource.RLIMIT_FSIZE, limits.file_gb * 2**30)
    cap(resource.RLIMIT_NPROC, limits.processes)
    cap(resource.RLIMIT_CORE, 0)


def main(argv: list[str] | None = None) -> None:
    """The kernel spec's launcher: apply the limits, then become ``bwrap ... -- command``."""
    parser = argparse.ArgumentParser(prog="python -m pruning_course.grading.sandbox")
    parser.add_argument("--memory-gb", type=float, default=Limits.memory_gb)
    parser.add_argument("--cpu-seconds", type=int, default=Limits.cpu_seconds)
    parser.add_argument("--file-gb", type=float, default=Limits.file_gb)
    parser.add_argument("--processes", type=int, default=Limits.processes)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    connection = Path(command[command.index("-f") + 1]).resolve()
    argv = bwrap_argv(command, connection.parent)
    apply_limits(Limits(args.memory_gb, args.cpu_seconds, args.file_gb, args.processes))
    os.execv(argv[0], argv)


if __name__ == "__main__":
    main()
