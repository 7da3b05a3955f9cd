"""Calibration domain: does calibrating on the deployment domain win, and does a mix cost either domain?

Wanda and SparseGPT at 50% unstructured and 2:4, each calibrated on Wikipedia (``wiki-sample``), on
code (``python-stdlib``, this interpreter's standard library) and on the 50/50 mix
(``wiki-sample+python-stdlib``: :func:`pruning_course.data.mixed_calibration_windows`, the first
corpus named takes the odd window), then test perplexity on both test splits: a 3x2 matrix
(calibration corpus x evaluation corpus) per method and pattern, beside the dense model's two
perplexities. ``comparisons`` reads each column: perplexity with in-domain calibration, out of
domain, and with the mix, and the ratios to in-domain.

Protocol of benchmarks/one_shot.py otherwise: ``--calib-samples`` windows of ``--seqlen`` tokens from
each calibration corpus's train split with ``--seed`` (the same windows for every method), perplexity
on non-overlapping ``--seqlen`` windows of each test split (the first ``--max-eval-windows``; by
default all: 177 windows of wiki-sample and 339 of python-stdlib at 512 tokens). All runs share one
process; the dense weights are restored before each. The Python version is recorded with the
numbers (``dataset_versions``): the stdlib differs between versions. Prints one JSON document
(progress and the matrices on stderr); ``--out FILE`` writes it too.

    python benchmarks/calibration_domain.py > benchmarks/results/calibration_domain-DATE-MACHINE.json
    python benchmarks/calibration_domain.py --model tiny-llama --seqlen 64 --calib-samples 4 --max-eval-windows 4
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _common import machine, protocol_parser

WIKI, CODE = "wiki-sample", "python-stdlib"


def comparisons(matrix: dict[str, dict[str, float]]) -> list[dict]:
    """Per evaluation corpus: in-domain, out-of-domain and mixed calibration, with ratios to in-domain."""
    rows = []
    for evaluated in next(iter(matrix.values())):
        if evaluated not in matrix:
            continue
        in_domain = matrix[evaluated][evaluated]
        row = {"eval_dataset": evaluated, "in_domain_ppl": in_domain}
        for calib, column in matrix.items():
            if calib != evaluated:
                kind = "mix" if "+" in calib else "out_of_domain"
                row[f"{kind}_calib"] = calib
                row[f"{kind}_ppl"] = column[evaluated]
                row[f"{kind}_over_in_domain"] = round(column[evaluated] / in_domain, 4)
        rows.append(row)
    return rows


def format_matrix(label: str, matrix: dict[str, dict[str, float]]) -> str:
    """The 3x2 matrix as text: one row per calibration corpus, one column per evaluation corpus."""
    evals = list(next(iter(matrix.values())))
    width = max(len(calib) for calib in matrix) + 8
    lines = [f"{label:<{width}}" + "".join(f"{'ppl ' + e:>22}" for e in evals)]
    for calib, column in matrix.items():
        lines.append(f"{'  calib ' + calib:<{width}}" + "".join(f"{column[e]:>22.2f}" for e in evals))
    return "\n".join(lines)


def main() -> None:
    parser = protocol_parser(__doc__)
    parser.add_argument("--sparsity", type=float, default=0.5, help="unstructured sparsity (2:4 is 50%% by itself)")
    parser.add_argument("--methods", default="wanda,sparsegpt")
    parser.add_argument("--patterns", default="unstructured,2:4")
    parser.add_argument("--calib", default=f"{WIKI},{CODE},{WIKI}+{CODE}", help="calibration corpora and mixes, comma-separated")
    parser.add_argument("--eval", default=f"{WIKI},{CODE}", help="evaluation corpora, comma-separated")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", type=Path, help="also write the JSON document here")
    args = parser.parse_args()
    methods, patterns = args.methods.split(","), args.patterns.split(",")
    calibs, evals = args.calib.split(","), args.eval.split(",")

    from pruning_course.data import (check_corpus_name, dataset_version, load_token_splits,
                                     mixed_calibration_windows, parse_corpus_mix)
    from pruning_course.evaluate import perplexity, prune_and_measure
    from pruning_course.models import load_model

    for name in evals:
        check_corpus_name(name)
    corpora = list(dict.fromkeys([*evals, *(part for calib in calibs for part in parse_corpus_mix(calib))]))

    model, tokenizer, adapter = load_model(args.model, progress=False)
    splits = {name: load_token_splits(tokenizer, name) for name in corpora}
    windows = {calib: mixed_calibration_windows({part: splits[part]["train"] for part in parse_corpus_mix(calib)},
                                                args.calib_samples, args.seqlen, args.seed) for calib in calibs}
    dense_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def measure(record: dict) -> dict:
        for name in evals:
            result = perplexity(model, splits[name]["test"], args.seqlen, batch_size=args.batch_size,
                                max_windows=args.max_eval_windows, progress=False)
            record[f"ppl_{name}"] = result.ppl
            record[f"eval_tokens_{name}"] = result.eval_tokens
        return record

    dense = measure(prune_and_measure(model, adapter, "dense"))
    print("dense  " + "  ".join(f"ppl {name} {dense[f'ppl_{name}']:.2f}" for name in evals), file=sys.stderr)
    results, matrices = [dense], {}
    for pattern in patterns:
        for method in methods:
            matrix = {}
            for calib in calibs:
                model.load_state_dict(dense_state)
                record = prune_and_measure(model, adapter, method, None if pattern != "unstructured" else args.sparsity,
                                           None if pattern == "unstructured" else pattern, windows[calib],
                                           batch_size=args.batch_size)
                record.update(calib_dataset=calib, calib_dataset_version=dataset_version(calib))
                results.append(measure(record))
                matrix[calib] = {name: record[f"ppl_{name}"] for name in evals}
            label = f"{method} {pattern}"
            matrices[label] = {"ppl": matrix, "comparisons": comparisons(matrix)}
            print(format_matrix(label, matrix), file=sys.stderr)
    model.load_state_dict(dense_state)

    document = json.dumps({
        "benchmark": "calibration_domain", "model": args.model, "seqlen": args.seqlen,
        "calib_samples": args.calib_samples, "max_eval_windows": args.max_eval_windows, "seed": args.seed,
        "sparsity": args.sparsity, "eval_datasets": evals, "calib_datasets": calibs,
        "dataset_versions": {name: dataset_version(name) for name in corpora},
        "tokens": {name: {split: len(ids) for split, ids in parts.items()} for name, parts in splits.items()},
        **machine(), "matrices": matrices, "results": results,
    }, indent=2)
    print(document)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(document + "\n")


if __name__ == "__main__":
    main()
