"""Structured pruning on the embedded model: perplexity against *measured* CPU speed.

For whole layers (depth), attention heads and MLP width, at two or more ratios each, the script
prunes SmolLM2-135M for real (the model gets smaller), then measures:

* test perplexity (wiki-sample test split, seqlen 512, the first ``--max-eval-windows`` windows),
* prefill throughput (a batch of 4 prompts of 128 tokens) and generation throughput (32 new tokens),
  and the speedup over the dense model: the dense and the pruned model are timed in turns
  (``--speed-rounds`` each, medians), so that load drifting on a shared machine hits both alike;
  the ``dense`` row times the model against a second copy of itself, so its "speedup" shows the
  measurement's noise floor,
* peak resident memory of the measuring process while only the pruned model is loaded, and
  parameter counts,
* ``compute_removed``: the share of the forward pass's matrix-multiply work that was removed
  (decoder-block linear weights plus the LM head; attention-score FLOPs, small at 128 tokens, are
  left out), so a measured speedup can be put next to what it should be.

Scores come from 32 calibration windows of 512 tokens from the train split (seed 0), as in
``benchmarks/one_shot.py``. Every variant is measured in its own process so memory peaks and
thread pools do not leak between them. Prints one JSON document (progress goes to stderr).

    python benchmarks/structured.py                           # every variant
    python benchmarks/structured.py --only layers --max-eval-windows 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import machine, protocol_parser

LAYER_FRACTIONS = (0.125, 0.25)
HEAD_FRACTIONS = (0.2, 1 / 3)
WIDTH_FRACTIONS = (0.25, 0.5)


def load(args):
    from pruning_course.data import calibration_windows, load_token_splits
    from pruning_course.models import load_model

    loaded = load_model(args.model, progress=False)
    splits = load_token_splits(loaded.tokenizer, "wiki-sample")
    return loaded, splits, calibration_windows(splits["train"], args.calib_samples, args.seqlen, seed=args.seed)


# ---------------------------------------------------------------------------------------------
# Planning (one process): scores, and what each variant removes
# ---------------------------------------------------------------------------------------------


def plan_layers(model, adapter, windows, num_blocks: int) -> list[dict]:
    from pruning_course.structured import (
        angular_distances, block_influence, choose_consecutive_blocks, choose_lowest_blocks,
        first_blocks, last_blocks, middle_blocks,
    )

    variants = []
    influence = block_influence(model, adapter, windows, batch_size=4)
    for fraction in LAYER_FRACTIONS:
        n = max(1, round(fraction * num_blocks))
        distances = angular_distances(model, adapter, windows, n=n, batch_size=4)
        chosen = {
            "angular": choose_consecutive_blocks(distances, n),
            "block_influence": choose_lowest_blocks(influence, n),
            "middle": middle_blocks(num_blocks, n),
            "first": first_blocks(num_blocks, n),
            "last": last_blocks(num_blocks, n),
        }
        if fraction != 0.25:  # the middle/first/last comparison is the textbook's 25% claim
            chosen = {k: v for k, v in chosen.items() if k in ("angular", "block_influence")}
        for rule, blocks in chosen.items():
            variants.append({"kind": "layers", "rule": rule, "ratio": n / num_blocks, "blocks": blocks})
    return variants


def plan_heads(model, adapter, windows) -> list[dict]:
    from pruning_course.structured import choose_heads_to_remove, head_importance

    importance = head_importance(model, adapter, windows, batch_size=4)
    kv_heads = getattr(model.config, "num_key_value_heads", None)
    variants = []
    for fraction in HEAD_FRACTIONS:
        chosen = choose_heads_to_remove(importance, fraction, num_kv_heads=kv_heads)
        removed = sum(len(h) for h in chosen.values())
        variants.append({"kind": "heads", "rule": "michel", "ratio": removed / importance.isfinite().sum().item(),
                         "heads": {str(layer): heads for layer, heads in chosen.items()}})
    return variants


def plan_width(model, adapter, windows, workdir: Path) -> list[dict]:
    from pruning_course.structured import choose_neurons_to_keep, mlp_neuron_importance

    scores = mlp_neuron_importance(model, adapter, windows, "wanda_sp", batch_size=4, progress=False)
    variants = []
    for fraction in WIDTH_FRACTIONS:
        keep = choose_neurons_to_keep(scores, 1 - fraction)
        path = workdir / f"width-{fraction}.pt"
        torch.save(keep, path)
        kept = sum(k.numel() for k in keep.values())
        variants.append({"kind": "width", "rule": "wanda_sp", "ratio": 1 - kept / sum(s.numel() for s in scores),
                         "keep_file": path.name})
    return variants


def plan(args, workdir: Path) -> list[dict]:
    loaded, _, windows = load(args)
    model, adapter = loaded.model, loaded.adapter
    num_blocks = len(adapter.blocks(model))
    variants = [{"kind": "dense", "rule": "-", "ratio": 0.0}]
    if "layers" in args.only:
        variants += plan_layers(model, adapter, windows, num_blocks)
    if "heads" in args.only:
        variants += plan_heads(model, adapter, windows)
    if "width" in args.only:
        variants += plan_width(model, adapter, windows, workdir)
    return variants


# ---------------------------------------------------------------------------------------------
# Measuring (one process per variant)
# ---------------------------------------------------------------------------------------------


def matmul_params(model, adapter) -> int:
    """Weights that take part in a token's forward matmuls: block linears plus the LM head."""
    from pruning_course.architectures import weight_matrix

    head = adapter.head(model)
    return sum(weight_matrix(m).numel() for m in adapter.named_linears(model).values()) + head.weight.numel()


def apply_variant(model, adapter, variant: dict, workdir: Path) -> None:
    if variant["kind"] == "layers":
        from pruning_course.structured import remove_blocks

        remove_blocks(model, adapter, variant["blocks"])
    elif variant["kind"] == "heads":
        from pruning_course.structured import remove_heads

        remove_heads(model, adapter, {int(layer): heads for layer, heads in variant["heads"].items()})
    elif variant["kind"] == "width":
        from pruning_course.structured import prune_mlp_width

        prune_mlp_width(model, adapter, torch.load(workdir / variant["keep_file"]))
    elif variant["kind"] != "dense":
        raise ValueError(f"unknown variant kind {variant['kind']!r}")


def interleaved_speed(models: dict, rounds: int = 5) -> dict[str, dict]:
    """Time every model in turns (A, B, A, B, ...) and keep the medians.

    On a shared or throttling machine, load drifts over minutes; timing the dense and the pruned
    model alternately exposes both to the same conditions, so their ratio is far steadier than
    timing one after the other.
    """
    import statistics

    from pruning_course.evaluate import measure_speed

    runs = {name: [] for name in models}
    for round_ in range(rounds):
        for name, model in models.items():
            prefill = measure_speed(model, batch_size=4, prompt_tokens=128, new_tokens=1, repeats=1, warmup=int(round_ == 0))
            generation = measure_speed(model, batch_size=1, prompt_tokens=16, new_tokens=32, repeats=1,
                                       warmup=int(round_ == 0))
            runs[name].append((prefill.prefill_tokens_per_s, generation.decode_tokens_per_s))
    return {name: {"prefill_tokens_per_s": statistics.median(r[0] for r in results),
                   "decode_tokens_per_s": statistics.median(r[1] for r in results)}
            for name, results in runs.items()}


def measure(args, variant: dict, workdir: Path) -> dict:
    from pruning_course.evaluate import measure_speed, perplexity
    from pruning_course.inventory import parameter_counts

    loaded, splits, _ = load(args)
    model, adapter = loaded.model, loaded.adapter
    dense_matmul = matmul_params(model, adapter)
    start = time.perf_counter()
    apply_variant(model, adapter, variant, workdir)
    prune_seconds = time.perf_counter() - start
    ppl = perplexity(model, splits["test"], args.seqlen, max_windows=args.max_eval_windows, progress=False)
    # peak memory with only the pruned model resident; speed against a fresh dense copy, in turns
    peak_rss = measure_speed(model, batch_size=4, prompt_tokens=128, new_tokens=8, repeats=1).peak_rss_mb
    dense = load(args)[0].model
    speed = interleaved_speed({"dense": dense, "pruned": model}, rounds=args.speed_rounds)
    return {
        **variant,
        "ppl": ppl.ppl, "eval_tokens": ppl.eval_tokens,
        "params": parameter_counts(model, adapter)["total"],
        "compute_removed": 1 - matmul_params(model, adapter) / dense_matmul,
        "prefill_tokens_per_s": speed["pruned"]["prefill_tokens_per_s"],
        "decode_tokens_per_s": speed["pruned"]["decode_tokens_per_s"],
        "prefill_speedup": speed["pruned"]["prefill_tokens_per_s"] / speed["dense"]["prefill_tokens_per_s"],
        "decode_speedup": speed["pruned"]["decode_tokens_per_s"] / speed["dense"]["decode_tokens_per_s"],
        "peak_rss_mb": peak_rss,
        "prune_seconds": prune_seconds,
    }


def main() -> None:
    parser = protocol_parser(__doc__, max_eval_windows=40)
    parser.add_argument("--speed-rounds", type=int, default=5, help="dense/pruned timing rounds, taken in turns")
    parser.add_argument("--only", default="layers,heads,width", help="comma-separated subset of layers,heads,width")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: measure one variant
    args = parser.parse_args()
    args.only = set(args.only.split(","))

    if args.worker:
        spec = json.loads(args.worker.read_text())
        result = measure(args, spec["variant"], args.worker.parent)
        args.worker.with_suffix(".out.json").write_text(json.dumps(result))
        return

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        variants = plan(args, workdir)
        results = []
        for i, variant in enumerate(variants):
            spec = workdir / f"variant{i}.json"
            spec.write_text(json.dumps({"variant": variant}))
            command = [sys.executable, __file__, "--worker", str(spec), "--model", args.model, "--seqlen", str(args.seqlen),
                       "--calib-samples", str(args.calib_samples), "--seed", str(args.seed),
                       "--max-eval-windows", str(args.max_eval_windows), "--speed-rounds", str(args.speed_rounds)]
            subprocess.run(command, check=True)
            results.append(json.loads(spec.with_suffix(".out.json").read_text()))
            row = results[-1]
            print(f"{row['kind']:>7} {row['rule']:>15} {row['ratio']:6.3f}  ppl {row['ppl']:9.2f}  "
                  f"compute removed {row['compute_removed']:.3f}  prefill x{row['prefill_speedup']:.2f}  "
                  f"decode x{row['decode_speedup']:.2f}", file=sys.stderr)

    print(json.dumps({
        "benchmark": "structured", "model": args.model, "dataset": "wiki-sample", "seqlen": args.seqlen,
        "max_eval_windows": args.max_eval_windows, "calib_samples": args.calib_samples, "seed": args.seed,
        "speed": {"prefill": "batch 4 x 128 prompt tokens", "generation": "batch 1, 16 prompt + 32 new tokens",
                  "timing": f"dense and pruned in turns, median of {args.speed_rounds} rounds after 1 warm-up"},
        **machine(), "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
