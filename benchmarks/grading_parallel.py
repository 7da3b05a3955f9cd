"""How long grading a class takes, one student at a time (``--jobs 1``) against ``--jobs 2`` (or
any ``--jobs`` list), in turns, ``--rounds`` times each; prints one JSON document with the
medians, the seconds per student and the projected time for ``--project`` students.

The batch: ``--students`` copies of the solutions of ``--assignments`` (default: all twelve),
graded in quick mode with the sandbox, as ``pruning-course grade`` does.

    python benchmarks/grading_parallel.py --students 4 --assignments 01_why_pruning,03_wanda --rounds 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from _common import machine
from grading_sandbox import REPO, _batch, _grade_once


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assignments", default=None, help="comma-separated (default: every assignment)")
    parser.add_argument("--students", type=int, default=4)
    parser.add_argument("--jobs", default="1,2", help="comma-separated --jobs values, timed in turns")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--project", type=int, default=200, help="students to project the time for")
    args = parser.parse_args()
    assignments = args.assignments.split(",") if args.assignments else sorted(
        p.name for p in (REPO / "solutions").iterdir() if p.is_dir())
    jobs = [int(j) for j in args.jobs.split(",")]
    root = Path(tempfile.mkdtemp(prefix="parallel-bench-"))
    subs = _batch(root, assignments, args.students)
    times: dict[int, list[float]] = {j: [] for j in jobs}
    for round_ in range(args.rounds):
        for j in jobs:  # in turns
            times[j].append(round(_grade_once(subs, ["--jobs", str(j)], None), 2))
            print(f"round {round_ + 1}: --jobs {j} {times[j][-1]} s", file=sys.stderr, flush=True)
    shutil.rmtree(root, ignore_errors=True)
    medians = {j: statistics.median(t) for j, t in times.items()}
    per_student = {j: m / args.students for j, m in medians.items()}
    result = {"benchmark": "grading_parallel", "assignments": assignments, "students": args.students,
              "notebooks_per_student": sum(len(list((REPO / "solutions" / a).glob("*.ipynb"))) for a in assignments),
              "rounds": args.rounds, "seconds": {f"jobs_{j}": t for j, t in times.items()},
              "median_seconds": {f"jobs_{j}": m for j, m in medians.items()},
              "median_seconds_per_student": {f"jobs_{j}": round(s, 2) for j, s in per_student.items()},
              f"projected_hours_for_{args.project}_students": {
                  f"jobs_{j}": round(s * args.project / 3600, 2) for j, s in per_student.items()},
              "speedup": {f"jobs_{j}": round(medians[jobs[0]] / medians[j], 3) for j in jobs}, **machine()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
