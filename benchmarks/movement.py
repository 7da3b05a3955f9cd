"""Hard movement vs soft movement vs gradual magnitude pruning under one fine-tuning budget.

Sanh et al. (2020) fine-prune BERT for thousands of steps on a GPU; here every run gets the same
small budget on a 2-core CPU: the top ``--train-blocks`` decoder blocks of the embedded SmolLM2 are
fine-tuned on short windows of the wiki-sample training split while their MLP linears are pruned
to 50/80/90% on the cubic schedule (soft movement: of all pruned matrices together, with its
threshold following the same schedule); the lower blocks are frozen and their outputs cached once
and shared by every run. Reported: validation perplexity (``--eval-windows`` windows of ``--seqlen``
tokens of the validation split) of the dense model, of dense fine-tuning with the same budget, and
of each (method, sparsity), plus the sparsity each run really reached. Prints one JSON document
(progress on stderr).

    python benchmarks/movement.py > runs/movement.json             # the comparison, ~10-15 min on 2 cores
    python benchmarks/movement.py --steps 4 --sparsities 0.5 --eval-windows 4   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from _common import machine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--methods", default="hard,soft,magnitude")
    parser.add_argument("--sparsities", default="0.5,0.8,0.9")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--warmup-steps", type=int, default=None, help="default: steps // 10")
    parser.add_argument("--cooldown-steps", type=int, default=None, help="default: steps // 5")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=64)
    parser.add_argument("--train-blocks", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--scores-lr", type=float, default=1e-2, help="learning rate of the movement scores")
    parser.add_argument("--soft-lambda", type=float, default=400.0, help="final L1 weight of soft movement")
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--no-dense-finetune", action="store_true", help="skip the dense fine-tuning reference run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import transformers

    from pruning_course.data import load_token_splits
    from pruning_course.finetune import FineTuneConfig, cached_perplexity, finetune_prune, prepare_data
    from pruning_course.models import load_model

    transformers.logging.set_verbosity_error()
    started = time.perf_counter()
    warmup = args.warmup_steps if args.warmup_steps is not None else args.steps // 10
    cooldown = args.cooldown_steps if args.cooldown_steps is not None else args.steps // 5
    base = dict(train_blocks=args.train_blocks, steps=args.steps, batch_size=args.batch_size, seqlen=args.seqlen,
                lr=args.lr, scores_lr=args.scores_lr, warmup_steps=warmup, cooldown_steps=cooldown,
                soft_lambda=args.soft_lambda, eval_windows=args.eval_windows, seed=args.seed)

    model, tokenizer, adapter = load_model(args.model, progress=False)
    splits = load_token_splits(tokenizer, "wiki-sample")
    cpu = time.process_time()
    data = prepare_data(model, adapter, splits, FineTuneConfig(method=None, **base), progress=True)
    cache_cpu = time.process_time() - cpu
    dense = cached_perplexity(model, adapter, data, progress=False)
    print(f"{'dense':>10}        ppl {dense.ppl:8.2f}  (cache {data.cache_seconds:.0f}s)", file=sys.stderr)

    runs = [(None, None)] if not args.no_dense_finetune else []
    runs += [(m, float(s)) for s in args.sparsities.split(",") for m in args.methods.split(",")]
    results = []
    for method, sparsity in runs:
        model, _, _ = load_model(args.model, progress=False)  # every run starts from the pretrained weights
        config = FineTuneConfig(method=method, sparsity=sparsity, **base)
        cpu = time.process_time()
        result = finetune_prune(model, adapter, data, config, progress=True)
        record = result.summary()
        record["cpu_seconds"] = round(time.process_time() - cpu, 1)  # summed over threads; = wall time on idle cores
        record["method"] = method or "dense-finetuned"
        record["loss_curve"] = [round(h["loss"], 4) for h in result.history]
        record["sparsity_curve"] = [round(h["mask_sparsity"], 4) for h in result.history]
        results.append(record)
        print(f"{record['method']:>16} {sparsity or 0:4.2f} ppl {record['val_ppl']:8.2f}  "
              f"{record['seconds_per_step']:.2f}s/step", file=sys.stderr)

    total = time.perf_counter() - started
    print(json.dumps({
        "benchmark": "movement", "model": args.model, "dataset": "wiki-sample",
        "pruned": f"MLP linears of the top {args.train_blocks} decoder blocks", "config": base,
        "train_tokens_per_run": args.steps * args.batch_size * args.seqlen,
        "val_tokens": dense.eval_tokens, "dense_ppl": dense.ppl, "cache_seconds": round(data.cache_seconds, 1),
        "cache_cpu_seconds": round(cache_cpu, 1),
        "total_seconds": round(total, 1), **machine(),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
