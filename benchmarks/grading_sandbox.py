"""What the grading sandbox costs: one batch graded with the bubblewrap sandbox and without it
(``--no-sandbox``), and optionally with an older checkout of the package (``--baseline REPO``:
its ``pruning_course`` on ``PYTHONPATH``, e.g. a ``git worktree`` of the commit before the
sandbox), timed in turns, ``--rounds`` times each; prints one JSON document with the medians.

The batch: ``--students`` copies of the solution of each ``--assignments`` notebook (quick
mode), so every test cell runs its checks across the process boundary.

    python benchmarks/grading_sandbox.py --assignments 03_wanda --students 2 --rounds 3
    git worktree add /tmp/before <commit>; python benchmarks/grading_sandbox.py --baseline /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine

REPO = Path(__file__).resolve().parents[1]


def _batch(root: Path, assignments: list[str], students: int) -> Path:
    subs = root / "submissions"
    for a in assignments:
        for nb in sorted((REPO / "solutions" / a).glob("*.ipynb")):
            for s in range(students):
                target = subs / f"student{s}" / nb.name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(nb, target)
    return subs


def _grade_once(subs: Path, flags: list[str], pythonpath: str | None) -> float:
    out = Path(tempfile.mkdtemp(prefix="graded-"))
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pruning_course.cli", "grade", str(subs), "--out", str(out),
                           "--solutions", str(REPO / "solutions"), *flags], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    shutil.rmtree(out, ignore_errors=True)
    if done.returncode != 0:
        raise SystemExit(f"grade {' '.join(flags)} failed:\n{done.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assignments", default="03_wanda")
    parser.add_argument("--students", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, default=None, help="a checkout of the package before the sandbox")
    parser.add_argument("--jobs", type=int, default=1, help="--jobs of the sandbox and no-sandbox runs (the baseline "
                                                            "grades one student at a time)")
    args = parser.parse_args()
    assignments = args.assignments.split(",")
    root = Path(tempfile.mkdtemp(prefix="sandbox-bench-"))
    subs = _batch(root, assignments, args.students)
    jobs = ["--jobs", str(args.jobs)]
    configs = {"sandbox": (jobs, None), "no_sandbox": (["--no-sandbox", *jobs], None)}
    if args.baseline:
        configs["baseline"] = ([], str(args.baseline.resolve()))
    times: dict[str, list[float]] = {name: [] for name in configs}
    for round_ in range(args.rounds):
        for name, (flags, pythonpath) in configs.items():  # in turns
            times[name].append(round(_grade_once(subs, flags, pythonpath), 2))
            print(f"round {round_ + 1}: {name} {times[name][-1]} s", file=sys.stderr, flush=True)
    shutil.rmtree(root, ignore_errors=True)
    medians = {name: statistics.median(t) for name, t in times.items()}
    per_student = {name: round(m / args.students, 2) for name, m in medians.items()}
    result = {"benchmark": "grading_sandbox", "assignments": assignments, "students": args.students, "jobs": args.jobs,
              "rounds": args.rounds, "seconds": times, "median_seconds": medians,
              "median_seconds_per_student": per_student,
              "sandbox_over_no_sandbox": round(medians["sandbox"] / medians["no_sandbox"], 3), **machine()}
    if "baseline" in medians:
        result["sandbox_over_baseline"] = round(medians["sandbox"] / medians["baseline"], 3)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
