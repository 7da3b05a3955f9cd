"""Benchmark the one-shot methods on the embedded model: perplexity, time and peak memory.

Every (method, pattern) runs as its own `pruning-course prune` process, so `peak_rss_mb` is that
run's true peak (model load, calibration, pruning and evaluation). Prints one JSON document.

    python benchmarks/one_shot.py                       # the headline table (full test split)
    python benchmarks/one_shot.py --max-eval-windows 20 --methods wanda,sparsegpt
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, protocol_parser

RUNS = [("dense", None), ("magnitude", "unstructured"), ("wanda", "unstructured"), ("sparsegpt", "unstructured"),
        ("magnitude", "2:4"), ("wanda", "2:4"), ("sparsegpt", "2:4")]


def run_one(method: str, pattern: str | None, args, out: Path) -> dict:
    if method == "dense":
        command = ["eval"]
    else:
        command = ["prune", "--method", method, "--eval", "--calib-samples", str(args.calib_samples), "--seed", str(args.seed)]
        command += ["--sparsity", str(args.sparsity)] if pattern == "unstructured" else ["--pattern", pattern]
    command += ["--model", args.model, "--seqlen", str(args.seqlen), "--json", str(out), "--quiet"]
    if args.max_eval_windows:
        command += ["--max-eval-windows", str(args.max_eval_windows)]
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pruning_course.cli", *command], check=True, stdout=subprocess.DEVNULL)
    record = json.loads(out.read_text())
    record.setdefault("method", "dense")
    record.setdefault("pattern", "dense")
    record["wall_seconds"] = round(time.perf_counter() - start, 1)
    return record


def main() -> None:
    parser = protocol_parser(__doc__)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--methods", default="dense,magnitude,wanda,sparsegpt")
    args = parser.parse_args()
    wanted = set(args.methods.split(","))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (method, pattern) in enumerate(RUNS):
            if method in wanted:
                results.append(run_one(method, pattern, args, Path(tmp) / f"{i}.json"))
                print(f"{method:>10} {pattern or '':>12}  ppl {results[-1]['ppl']:.2f}", file=sys.stderr)

    print(json.dumps({
        "benchmark": "one_shot", "model": args.model, "dataset": "wiki-sample", "seqlen": args.seqlen,
        "calib_samples": args.calib_samples, "seed": args.seed, **machine(),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
