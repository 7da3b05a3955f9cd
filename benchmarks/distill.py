"""Distillation recovery on the embedded model: prune 50% with Wanda, then distil from the dense model.

Steps: load SmolLM2 (the dense teacher), prune a copy with Wanda (calibration windows from the train
split, as in ``one_shot.py``), measure test perplexity and the mean per-token KL to the teacher on the
first ``--max-eval-windows`` test windows of ``--eval-seqlen`` tokens, distil for ``--steps`` steps
of ``--batch-size`` x ``--seqlen`` tokens from the train split (pruned weights held at zero), and
measure again. Prints one JSON document (progress on stderr), including the measured seconds per
step and what the default 100-step run would take at that pace.

    python benchmarks/distill.py                                   # the full run (see its JSON for the time)
    python benchmarks/distill.py --steps 5 --max-eval-windows 10 --calib-samples 8   # a quick proof that it runs
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time

from _common import machine

FULL_STEPS = 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", default="wanda", choices=["magnitude", "wanda", "sparsegpt"])
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--pattern", default=None, help="N:M pattern instead of a sparsity, e.g. 2:4")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--calib-seqlen", type=int, default=512)
    parser.add_argument("--eval-seqlen", type=int, default=512)
    parser.add_argument("--max-eval-windows", type=int, default=40, help="first N test windows (state it with the numbers)")
    parser.add_argument("--steps", type=int, default=FULL_STEPS)
    parser.add_argument("--seqlen", type=int, default=256, help="tokens per training window")
    parser.add_argument("--batch-size", type=int, default=4, help="training windows per step")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=1.0, help="weight of the KD term (1 - alpha on the LM cross-entropy)")
    parser.add_argument("--trainable", default="linears", choices=["linears", "all"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    progress = not args.quiet

    from pruning_course.data import calibration_windows, load_token_splits
    from pruning_course.distill import distill, mean_kl_to_teacher
    from pruning_course.evaluate import peak_rss_mb, perplexity, sparsity_report
    from pruning_course.masks import resolve_target
    from pruning_course.models import load_model
    from pruning_course.methods import prune_model

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    sparsity, nm = resolve_target(None if args.pattern else args.sparsity, args.pattern)
    start = time.perf_counter()
    teacher, tokenizer, adapter = load_model(args.model, progress=progress)
    splits = load_token_splits(tokenizer)
    test_ids = splits["test"]

    def measure(model) -> dict:
        ppl = perplexity(model, test_ids, args.eval_seqlen, max_windows=args.max_eval_windows, progress=progress)
        record = {"ppl": ppl.ppl, "eval_windows": ppl.windows, "eval_tokens": ppl.eval_tokens}
        if model is not teacher:
            record["kl_to_teacher"] = mean_kl_to_teacher(model, teacher, test_ids, args.eval_seqlen,
                                                         max_windows=args.max_eval_windows)
        return record

    dense = measure(teacher)
    log(f"dense: ppl {dense['ppl']:.2f}")
    student = copy.deepcopy(teacher)
    windows = None
    if args.method != "magnitude":
        windows = calibration_windows(splits["train"], args.calib_samples, args.calib_seqlen, args.seed)
    prune_start = time.perf_counter()
    prune_model(student, adapter, args.method, sparsity, nm, windows=windows, progress=progress)
    prune_seconds = time.perf_counter() - prune_start
    pruned = {**measure(student), "sparsity": sparsity_report(student, adapter)["sparsity"]}
    log(f"pruned: ppl {pruned['ppl']:.2f}, KL {pruned['kl_to_teacher']:.4f}")

    history = distill(
        student, teacher, splits["train"], steps=args.steps, seqlen=args.seqlen, batch_size=args.batch_size,
        lr=args.lr, temperature=args.temperature, alpha=args.alpha, adapter=adapter, trainable=args.trainable,
        seed=args.seed, progress=progress,
    )
    distilled = {**measure(student), "sparsity": sparsity_report(student, adapter)["sparsity"]}
    log(f"distilled: ppl {distilled['ppl']:.2f}, KL {distilled['kl_to_teacher']:.4f}")
    # the first step pays one-off costs (allocations, optimizer state): estimate from the others
    steady = history.seconds[1:] or history.seconds
    seconds_per_step = sum(steady) / len(steady)

    print(json.dumps({
        "benchmark": "distill", "model": args.model, "dataset": "wiki-sample",
        "pruning": {"method": args.method, "target_sparsity": sparsity, "pattern": args.pattern or "unstructured",
                    "calib_samples": 0 if windows is None else args.calib_samples, "calib_seqlen": args.calib_seqlen,
                    "seconds": round(prune_seconds, 1)},
        "eval": {"seqlen": args.eval_seqlen, "max_windows": args.max_eval_windows, "split": "test",
                 "note": "first windows of the test split only"},
        "distill": {"steps": args.steps, "seqlen": args.seqlen, "batch_size": args.batch_size,
                    "tokens_per_step": history.tokens_per_step, "lr": args.lr, "temperature": args.temperature,
                    "alpha": args.alpha, "trainable": args.trainable, "trainable_params": history.trainable_params,
                    "masked_layers": history.masked_layers, "loss": history.loss,
                    "seconds_per_step": round(seconds_per_step, 2),
                    "first_step_seconds": round(history.seconds[0], 2),
                    f"estimated_minutes_for_{FULL_STEPS}_steps": round(seconds_per_step * FULL_STEPS / 60, 1)},
        "dense": dense, "pruned": pruned, "distilled": distilled,
        **machine(),
        "peak_rss_mb": round(peak_rss_mb(), 1), "wall_seconds": round(time.perf_counter() - start, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
