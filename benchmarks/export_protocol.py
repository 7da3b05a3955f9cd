"""Write the exact tokens of our protocol, so other implementations can be run on the same data.

    python benchmarks/export_protocol.py --out protocol.pt [--calib-samples 32 --seqlen 512 --seed 0]

The file holds (torch.save) a dict with:
  calibration   (n, seqlen) LongTensor: the calibration windows `pruning-course prune` uses
  test          1-D LongTensor: the tokenized test split (perplexity: non-overlapping seqlen windows)
  seqlen, seed, model, dataset
To run the reference Wanda / SparseGPT code side by side, replace their `get_loaders` with these
tensors (calibration samples as `(inp, tar)` with `tar[:, :-1] = -100`, test as `testenc.input_ids`)
and load the converted model from `pruning_course.models.embedded_model_dir()`.
"""

from __future__ import annotations

import argparse

import torch

from pruning_course.data import calibration_windows, load_token_splits
from pruning_course.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dataset", default="wiki-sample")
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    _, tokenizer, _ = load_model(args.model)
    splits = load_token_splits(tokenizer, args.dataset)
    payload = {
        "calibration": calibration_windows(splits["train"], args.calib_samples, args.seqlen, args.seed),
        "test": splits["test"], "seqlen": args.seqlen, "seed": args.seed, "model": args.model, "dataset": args.dataset,
    }
    torch.save(payload, args.out)
    print(f"wrote {args.out}: calibration {tuple(payload['calibration'].shape)}, test {payload['test'].numel():,} tokens")


if __name__ == "__main__":
    main()
