"""CSR against dense on this CPU: at which sparsity does a sparse weight start to pay off?

Times ``y = x W^T`` with a random unstructured weight stored dense and as CSR (``torch.sparse.mm``)
for SmolLM2-shaped matrices (MLP 1536x576 and attention 576x576), sparsity 50..99% and batch sizes
1..256, and reports the break-even sparsity per batch size and shape (interpolated; ``null`` when CSR
never wins). Optionally times a whole model with every linear stored as CSR (``--model``), pruned
by magnitude to ``--model-sparsity``. Prints one JSON document (progress on stderr).

Timings are medians of repeated calls, dense and CSR timed in turns so both see the same load;
on a shared machine they stay noisy all the same: run twice and compare before quoting a number. The thread count is part of the result (set OMP_NUM_THREADS).

    OMP_NUM_THREADS=1 python benchmarks/csr_breakeven.py --plot csr_breakeven.png
    OMP_NUM_THREADS=1 python benchmarks/csr_breakeven.py --model smollm2-135m --model-sparsity 0.5
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from _common import machine

from pruning_course.sparse_inference import (
    DEFAULT_BATCH_SIZES,
    DEFAULT_SHAPES,
    DEFAULT_SPARSITIES,
    break_even_sparsity,
    compare_model_dense_vs_csr,
    csr_memory_break_even,
    sweep,
)


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(","))


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def _shapes(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(tuple(int(v) for v in shape.split("x")) for shape in text.split(","))


def plot(rows: list[dict], break_even: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({(r["out_features"], r["in_features"]) for r in rows}, reverse=True)
    batches = sorted({r["batch"] for r in rows})
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4.5), sharey=True, squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        for batch in batches:
            points = sorted((r["sparsity"], r["time_ratio"]) for r in rows
                            if r["batch"] == batch and (r["out_features"], r["in_features"]) == shape)
            line, = ax.plot([100 * s for s, _ in points], [t for _, t in points], marker="o", label=f"batch {batch}")
            s = break_even[f"{shape[0]}x{shape[1]}"][str(batch)]
            if s is not None:
                ax.plot([100 * s], [1.0], marker="X", markersize=11, color=line.get_color(), markeredgecolor="black")
        ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
        ax.set_yscale("log")
        ax.set_xlabel("sparsity (%)")
        ax.set_title(f"W {shape[0]}x{shape[1]} (x marks the break-even)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("CSR time / dense time  (< 1: CSR faster)")
    axes[0][-1].legend()
    fig.suptitle(f"y = x W^T on this CPU, {torch.get_num_threads()} thread(s)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", type=_floats, default=DEFAULT_SPARSITIES, help="comma-separated, e.g. 0.5,0.9,0.99")
    parser.add_argument("--batch-sizes", type=_ints, default=DEFAULT_BATCH_SIZES)
    parser.add_argument("--shapes", type=_shapes, default=DEFAULT_SHAPES, help="comma-separated OUTxIN, e.g. 1536x576,576x576")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", help="write the time-ratio plot to this PNG")
    parser.add_argument("--model", help="also time a whole model (e.g. smollm2-135m, tiny-llama) dense vs CSR")
    parser.add_argument("--model-sparsity", type=float, default=0.5, help="magnitude sparsity of the model check")
    parser.add_argument("--model-tokens", type=int, default=128, help="tokens of the single sequence the model check runs")
    args = parser.parse_args()

    start = time.perf_counter()
    rows = sweep(args.sparsities, args.batch_sizes, args.shapes, args.warmup, args.repeats, args.seed)
    break_even = {
        f"{o}x{i}": {str(b): break_even_sparsity(rows, b, (o, i)) for b in args.batch_sizes} for o, i in args.shapes
    }
    result = {
        "benchmark": "csr_breakeven",
        **machine(),
        "mkl": torch.backends.mkl.is_available(),
        "timing": f"median of {args.repeats} calls after {args.warmup} warm-up calls; shared machine, timings are noisy",
        "break_even_sparsity": break_even,
        "memory_break_even_sparsity": {
            "fp32_int64": csr_memory_break_even(torch.float32, torch.int64),
            "fp32_int32": csr_memory_break_even(torch.float32, torch.int32),
            "fp16_int64": csr_memory_break_even(torch.float16, torch.int64),
            "fp16_int32": csr_memory_break_even(torch.float16, torch.int32),
        },
        "rows": rows,
    }
    if args.model:
        from pruning_course.models import load_model
        from pruning_course.unstructured import prune_magnitude

        model, tokenizer, adapter = load_model(args.model, progress=False)
        prune_magnitude(model, adapter, args.model_sparsity)
        ids = torch.randint(0, len(tokenizer), (1, args.model_tokens), generator=torch.Generator().manual_seed(args.seed))
        result["model"] = {"name": args.model, "pruning": f"magnitude {args.model_sparsity:.0%}",
                           **compare_model_dense_vs_csr(model, adapter, ids)}
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    if args.plot:
        plot(rows, break_even, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
