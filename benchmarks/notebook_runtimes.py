"""How long each solution notebook takes top to bottom in full mode (the real SmolLM2 model).

Each notebook in ``solutions/`` runs in a fresh kernel with nbclient, one after another (never two
at once), with ``PRUNING_COURSE_QUICK`` unset and ``--threads`` torch threads (``OMP_NUM_THREADS``
in the kernel's environment). Prints a JSON record: the wall time of each notebook (kernel start
to last cell), the sum of its cells' execution times and its five slowest cells; with ``--write``
the executed notebook replaces the solution, so its outputs (and its last cell's runtime line)
are the measured ones. A notebook that fails is recorded with its error and the run goes on.

    python benchmarks/notebook_runtimes.py --write > benchmarks/results/notebook_runtimes-DATE-cpu2.json
    python benchmarks/notebook_runtimes.py --notebooks 01_why_pruning,07_sensitivity
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from _common import machine

ROOT = Path(__file__).resolve().parent.parent


def _seconds(execution: dict) -> float | None:
    try:
        start = datetime.fromisoformat(execution["iopub.execute_input"].replace("Z", "+00:00"))
        end = datetime.fromisoformat(execution["shell.execute_reply"].replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    return (end - start).total_seconds()


def run_notebook(path: Path, threads: int, timeout: int, write: bool) -> dict:
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    saved = {key: os.environ.get(key) for key in ("PRUNING_COURSE_QUICK", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.pop("PRUNING_COURSE_QUICK", None)
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(threads)  # the kernel inherits them
    record: dict = {"notebook": path.stem}
    start = time.perf_counter()
    try:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=True,
                                resources={"metadata": {"path": str(path.parent)}}).execute()
    except Exception as error:  # noqa: BLE001 -- record it, go on with the next notebook
        last_line = (str(error).strip().splitlines() or [""])[-1]
        record["error"] = f"{type(error).__name__}: {last_line[:300]}"
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    record["wall_s"] = round(time.perf_counter() - start, 1)
    cells = []
    for position, cell in enumerate(nb.cells):
        seconds = _seconds(cell.get("metadata", {}).get("execution", {})) if cell.cell_type == "code" else None
        if seconds is not None:
            cells.append((position, cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", ""), round(seconds, 1)))
    record["cells_s"] = round(sum(s for *_, s in cells), 1)
    record["slowest_cells"] = [{"cell": p, "id": g, "seconds": s} for p, g, s in sorted(cells, key=lambda c: -c[2])[:5]]
    if write and "error" not in record:
        nbformat.write(nb, path)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebooks", help="comma-separated names (default: all of solutions/)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--timeout", type=int, default=3600, help="seconds a cell may run")
    parser.add_argument("--write", action="store_true", help="store the executed notebooks back into solutions/")
    args = parser.parse_args()
    names = args.notebooks.split(",") if args.notebooks else sorted(p.name for p in (ROOT / "solutions").iterdir()
                                                                    if p.is_dir() and not p.name.startswith("."))
    paths = [ROOT / "solutions" / name / f"{name}.ipynb" for name in names]
    missing = [str(p.relative_to(ROOT)) for p in paths if not p.exists()]
    if missing:
        sys.exit(f"error: no such notebook: {', '.join(missing)}")
    records = []
    for path in paths:
        records.append(run_notebook(path, args.threads, args.timeout, args.write))
        r = records[-1]
        print(f"{r['notebook']}: {r['wall_s']:.0f} s wall" + (f"  ERROR {r['error']}" if "error" in r else ""),
              file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "notebook_runtimes", "mode": "full", "threads": args.threads,
                      "over_10_minutes": [r["notebook"] for r in records if r["wall_s"] > 600],
                      "notebooks": records, **machine()}, indent=2))


if __name__ == "__main__":
    main()
