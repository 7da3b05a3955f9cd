"""The child process of :func:`pruning_course.quantize.memory.measure_inference_memory`.

    python -m pruning_course.quantize._memory_probe FILE [--packed] [--seqlen 512] [--batch-size 1]

prints one JSON line. Kept apart from :mod:`.memory` so that the package never imports it.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json

from .memory import DTYPES


def _release_freed_memory() -> None:
    """Collect garbage and ask glibc to return freed heap pages (``malloc_trim``); no-op elsewhere."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _measure(args) -> dict:
    import accelerate  # noqa: F401  (everything loading needs is imported before the baseline is read)
    import psutil
    import safetensors  # noqa: F401
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM  # noqa: F401

    import pruning_course.models  # noqa: F401
    from pruning_course.evaluate import peak_rss_mb, reset_peak_rss
    from pruning_course.quantize.storage import load_compressed, read_metadata

    # the model's modeling code is imported before the baseline too: only weights and activations count
    config = AutoConfig.for_model(**read_metadata(args.path)["config"])
    AutoModelForCausalLM._model_mapping[type(config)]

    def resident_mb() -> float:
        return psutil.Process().memory_info().rss / 2**20

    baseline = resident_mb()
    reset_peak_rss()
    model, _, _ = load_compressed(args.path, dtype=getattr(torch, args.dtype), packed=args.packed)
    peak_load = peak_rss_mb()
    _release_freed_memory()  # what the loader freed goes back to the system before the forward pass
    after_load = resident_mb()
    ids = torch.randint(0, model.config.vocab_size, (args.batch_size, args.seqlen),
                        generator=torch.Generator().manual_seed(args.seed))
    reset_peak_rss()
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)
    peak_inference = peak_rss_mb()
    return {
        "packed": args.packed, "dtype": args.dtype, "seqlen": args.seqlen, "batch_size": args.batch_size,
        "baseline_mb": round(baseline, 1), "resident_after_load_mb": round(after_load, 1),
        "peak_load_mb": round(peak_load, 1), "peak_inference_mb": round(peak_inference, 1),
        "model_resident_mb": round(after_load - baseline, 1),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Peak memory of one forward pass of a compressed model file.")
    parser.add_argument("path")
    parser.add_argument("--packed", action="store_true", help="keep the weights compressed, decode per layer")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=DTYPES)
    parser.add_argument("--seed", type=int, default=0)
    print(json.dumps(_measure(parser.parse_args(argv))))


if __name__ == "__main__":
    main()
