"""Benchmark OWL (Yin et al., 2024) against uniform sparsity on the embedded model. Prints one JSON document.

Protocol of benchmarks/one_shot.py: wiki-sample, test perplexity at seqlen 512 on the full test
split, 32 calibration windows of 512 tokens from the train split, seed 0. At 70% sparsity, Wanda and
SparseGPT each run with the uniform schedule and with OWL's per-block schedule (M = 5, lambda = 0.08,
the paper's LLaMA setting). The outlier ratios are measured once on the dense model (they do not
depend on the method) and reused. All runs share one process: the dense weights are restored
before each run. Each row is :func:`pruning_course.evaluate.prune_and_measure`'s record (the one
``pruning-course prune`` writes); its peak RSS covers that row's pruning and evaluation with the
model resident.

    python benchmarks/owl.py > runs/owl.json                  # the full protocol (slow on a CPU)
    python benchmarks/owl.py --quick                          # 8 calibration windows, 20 test windows
    python benchmarks/owl.py --lam 0.04,0.08,0.12 --methods wanda
"""

from __future__ import annotations

import json
import sys
import time

from _common import machine, protocol_parser


def main() -> None:
    parser = protocol_parser(__doc__)
    parser.add_argument("--sparsity", type=float, default=0.7)
    parser.add_argument("--M", type=float, default=5.0, help="outlier threshold: score > M * block mean")
    parser.add_argument("--lam", default="0.08", help="OWL's lambda; a comma-separated list runs each")
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="reduced run: 8 calibration windows, 20 test windows")
    args = parser.parse_args()
    if args.quick:
        args.calib_samples, args.max_eval_windows = 8, args.max_eval_windows or 20
    lams = [float(v) for v in args.lam.split(",")]
    methods = args.methods.split(",")

    from pruning_course.data import calibration_windows, load_token_splits
    from pruning_course.evaluate import prune_and_measure
    from pruning_course.models import load_model
    from pruning_course.unstructured.owl import owl_outlier_ratios, owl_sparsities

    model, tokenizer, adapter = load_model(args.model, progress=False)
    splits = load_token_splits(tokenizer, "wiki-sample")
    windows = calibration_windows(splits["train"], args.calib_samples, args.seqlen, args.seed)
    dense_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    measure = {"windows": windows, "test_ids": splits["test"], "seqlen": args.seqlen,
               "max_eval_windows": args.max_eval_windows, "batch_size": args.batch_size}

    results = [{**prune_and_measure(model, adapter, "dense", **measure), "layerwise": "dense"}]
    print(f"{'dense':>10} {'':>14}  ppl {results[-1]['ppl']:.2f}", file=sys.stderr)

    start = time.perf_counter()
    ratios = owl_outlier_ratios(model, adapter, windows, args.M, batch_size=args.batch_size, progress=False)
    outlier_seconds = time.perf_counter() - start
    schedules = {lam: owl_sparsities(ratios, args.sparsity, lam) for lam in lams}

    runs = [(m, "uniform", None) for m in methods] + [(m, "owl", lam) for m in methods for lam in lams]
    for method, layerwise, lam in runs:
        model.load_state_dict(dense_state)
        sparsity = args.sparsity if lam is None else schedules[lam].tolist()
        record = prune_and_measure(model, adapter, method, sparsity, **measure)
        record.update(layerwise=layerwise, target_sparsity=args.sparsity)
        if lam is not None:
            record.update(lam=lam, M=args.M, block_sparsities=[round(s, 4) for s in schedules[lam].tolist()])
        results.append(record)
        label = layerwise if lam is None else f"owl lam={lam:g}"
        print(f"{method:>10} {label:>14}  ppl {record['ppl']:.2f}  sparsity {record['sparsity']:.4f}", file=sys.stderr)
    model.load_state_dict(dense_state)

    print(json.dumps({
        "benchmark": "owl", "model": args.model, "dataset": "wiki-sample", "seqlen": args.seqlen,
        "calib_samples": args.calib_samples, "max_eval_windows": args.max_eval_windows, "seed": args.seed,
        "target_sparsity": args.sparsity, "M": args.M, "outlier_ratios": [round(r, 6) for r in ratios.tolist()],
        "outlier_seconds": round(outlier_seconds, 1), **machine(),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
