"""The compression table on the embedded model: perplexity, bytes on disk and peak inference memory.

Rows: dense, INT8, INT4 (GPTQ), 50% Wanda, 2:4 Wanda, 50% Wanda + INT4, 2:4 Wanda + INT8, and with
``--distill-steps N`` the pruned rows again with a short knowledge-distillation fine-tune
(:func:`pruning_course.distill.distill`, prune -> distill -> quantize; each pruned model is distilled
once and its quantized row starts from the distilled weights).

Each row: load the model, prune (Wanda) and/or quantize (GPTQ, on the same calibration windows as
the pruning: ``--calib-samples`` windows of ``--seqlen`` tokens, seed ``--seed``, from the train
split), write it with :func:`pruning_course.quantize.save_compressed` (float16 for everything that is
not quantized, smallest of dense / bitmask / 2:4 per matrix), and measure *the file*:

* ``bytes``: ``os.path.getsize`` of the file;
* ``ppl``: perplexity of the model reloaded from the file (test split of wiki-sample, the papers'
  protocol as in ``one_shot.py``; ``--max-eval-windows`` for a subset);
* ``memory``: peak RSS of one ``(1, seqlen)`` forward in a fresh process, the weights decoded to
  float32 once (``dequantized``: what simulated quantization costs) and kept packed, decoded per
  layer at each forward (``packed``).

SmolLM2's linears have 576 inputs, which 128 does not divide: the default group size is 64.

    python benchmarks/compression.py > runs/compression.json                 # the full table
    python benchmarks/compression.py --max-eval-windows 4 --calib-samples 8  # a quick look
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from _common import machine, protocol_parser

ROWS = {  # name: (pruning (method, sparsity, pattern) or None, bits or None)
    "dense": (None, None),
    "int8": (None, 8),
    "int4": (None, 4),
    "wanda-50%": (("wanda", 0.5, None), None),
    "wanda-2:4": (("wanda", None, "2:4"), None),
    "wanda-50%+int4": (("wanda", 0.5, None), 4),
    "wanda-2:4+int8": (("wanda", None, "2:4"), 8),
}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_row(name: str, prune, bits, args, data, path: Path, distill_steps: int, distilled: dict) -> dict:
    from pruning_course.distill import distill
    from pruning_course.evaluate import perplexity
    from pruning_course.models import load_model
    from pruning_course.methods import prune_model
    from pruning_course.quantize import load_compressed, measure_inference_memory, quantize_model, save_compressed

    start = time.perf_counter()
    model, _, adapter = load_model(args.model, progress=False)
    record = {"row": name, "pruning": None, "bits": bits, "group_size": args.group_size if bits else None,
              "quant_method": args.quant_method if bits else None, "distill_steps": distill_steps}
    masks = None
    if prune is not None:
        method, sparsity, pattern = prune
        masks = prune_model(model, adapter, method, sparsity, pattern, windows=data["windows"],
                            batch_size=args.batch_size, progress=False)
        record["pruning"] = {"method": method, "sparsity": sparsity, "pattern": pattern or "unstructured"}
    if distill_steps:
        key = (prune, distill_steps)
        if key not in distilled:  # distil each pruned model once; its quantized rows start from the same weights
            teacher = load_model(args.model, progress=False).model
            history = distill(model, teacher, data["train"], distill_steps, seqlen=args.distill_seqlen,
                              adapter=adapter, keep_masks=masks, progress=False)
            del teacher
            distilled[key] = ({k: v.clone() for k, v in model.state_dict().items()},
                              {"steps": distill_steps, "seqlen": args.distill_seqlen,
                               "final_loss": history.loss[-1] if history.loss else None,
                               "seconds_per_step": round(history.seconds_per_step, 2)})
        else:
            model.load_state_dict(distilled[key][0])
        record["distill"] = distilled[key][1]
    quantized = None
    if bits:
        quantized = quantize_model(model, adapter, args.quant_method, bits, args.group_size, data["windows"],
                                   masks=masks, batch_size=args.batch_size, progress=False)
    record["compress_seconds"] = round(time.perf_counter() - start, 1)
    record["file"] = save_compressed(model, adapter, path, quantized, model_name=args.model)
    record["bytes"] = os.path.getsize(path)
    del model, quantized

    reloaded = load_compressed(path).model
    result = perplexity(reloaded, data["test"], args.seqlen, batch_size=args.batch_size,
                        max_windows=args.max_eval_windows, progress=False)
    record.update(ppl=result.ppl, eval_windows=result.windows, eval_tokens=result.eval_tokens)
    del reloaded
    record["memory"] = {
        mode: measure_inference_memory(path, packed=mode == "packed", seqlen=args.memory_seqlen)
        for mode in ("dequantized", "packed")
    }
    record["wall_seconds"] = round(time.perf_counter() - start, 1)
    return record


def main() -> None:
    parser = protocol_parser(__doc__)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--quant-method", default="gptq", choices=["gptq", "rtn"])
    parser.add_argument("--group-size", type=int, default=64, help="-1: one group per row")
    parser.add_argument("--memory-seqlen", type=int, default=512, help="tokens of the forward pass whose memory is measured")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of: " + ", ".join(ROWS).replace("%", "%%"))
    parser.add_argument("--distill-steps", type=int, default=0, help="also run the pruned rows with N distillation steps")
    parser.add_argument("--distill-seqlen", type=int, default=256)
    parser.add_argument("--keep-files", type=Path, default=None, help="write the compressed files here instead of a temporary directory")
    args = parser.parse_args()
    wanted = args.rows.split(",")
    unknown = [r for r in wanted if r not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {', '.join(unknown)}; choose from {', '.join(ROWS)}")

    from pruning_course.data import calibration_windows, load_token_splits
    from pruning_course.models import load_model

    tokenizer = load_model(args.model, progress=False).tokenizer
    splits = load_token_splits(tokenizer, "wiki-sample")
    data = {"train": splits["train"], "test": splits["test"],
            "windows": calibration_windows(splits["train"], args.calib_samples, args.seqlen, args.seed)}

    runs = [(name, *ROWS[name], 0) for name in wanted]
    if args.distill_steps:
        runs += [(f"{name}+kd", *ROWS[name], args.distill_steps) for name in wanted if ROWS[name][0] is not None]

    results, distilled = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep_files or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for name, prune, bits, steps in runs:
            record = run_row(name, prune, bits, args, data, folder / f"{name.replace(':', '-')}.safetensors", steps,
                             distilled)
            results.append(record)
            log(f"{name:>18}  ppl {record['ppl']:8.3f}  {record['bytes'] / 2**20:7.2f} MiB  "
                f"peak {record['memory']['dequantized']['peak_inference_mb']:.0f} / "
                f"{record['memory']['packed']['peak_inference_mb']:.0f} MiB (dequantized / packed)")

    print(json.dumps({
        "benchmark": "compression", "model": args.model, "dataset": "wiki-sample", "seqlen": args.seqlen,
        "calib_samples": args.calib_samples, "seed": args.seed, "max_eval_windows": args.max_eval_windows,
        "quant_method": args.quant_method, "group_size": args.group_size, "memory_seqlen": args.memory_seqlen,
        "stored_floats": "float16", "ppl_of": "the model reloaded from its compressed file",
        "distill": f"{args.distill_steps} steps, prune -> distill -> quantize" if args.distill_steps else "off",
        **machine(), "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
