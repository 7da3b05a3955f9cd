"""Dense vs 2:4 semi-structured matmul on a GPU: does 2:4 pruning make SmolLM2 faster?

Times ``nn.Linear`` with a dense weight against the same 2:4-pruned weight converted by
``torch.sparse.to_sparse_semi_structured`` (NVIDIA's sparse tensor cores, Mishra et al. 2021) for the
linear shapes of SmolLM2-135M and one large 4096x4096 layer, at batch sizes 1..256, in fp16. Then
times a whole SmolLM2-135M-shaped model (random weights: speed does not depend on their values),
prefill and greedy generation, dense vs semi-structured. Prints one JSON document; a few minutes.

Without a CUDA device (or with one older than compute capability 8.0) it prints
``{"skipped": "<reason>"}`` and exits with status 0.

    python benchmarks/gpu_semi_structured.py                 # everything
    python benchmarks/gpu_semi_structured.py --no-model      # the linear shapes only
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time

import torch

from pruning_course.semi_structured import benchmark_linear, semi_structured_support, sparsify_model_semi_structured

# (out_features, in_features) of SmolLM2-135M's linears: q/o, k/v (3 kv heads x 64), gate/up, down; plus a big one
SHAPES = {
    "q_proj/o_proj": (576, 576),
    "k_proj/v_proj": (192, 576),
    "gate_proj/up_proj": (1536, 576),
    "down_proj": (576, 1536),
    "large": (4096, 4096),
}
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def smollm2_shaped_model(dtype):
    """A randomly initialised Llama with SmolLM2-135M's dimensions, on the GPU."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
        num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).to("cuda", dtype).eval()


def wall_ms(fn, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) * 1000 / iters


@torch.no_grad()
def model_benchmark(dtype, new_tokens: int) -> dict:
    from pruning_course.architectures import adapter_for
    from pruning_course.methods import prune_model

    dense = smollm2_shaped_model(dtype)
    adapter = adapter_for(dense)
    prune_model(dense, adapter, "magnitude", pattern="2:4")
    sparse = copy.deepcopy(dense)
    skipped = sparsify_model_semi_structured(sparse, adapter)
    result = {"converted_linears": len(adapter.named_linears(sparse)) - len(skipped), "skipped": skipped,
              "prefill": [], "generate": []}
    for batch, seqlen in ((1, 512), (8, 512), (32, 512)):
        ids = torch.randint(0, 49152, (batch, seqlen), device="cuda")
        dense_ms = wall_ms(lambda: dense(ids, use_cache=False), 3, 10)
        sparse_ms = wall_ms(lambda: sparse(ids, use_cache=False), 3, 10)
        diff = float((dense(ids, use_cache=False).logits - sparse(ids, use_cache=False).logits).abs().max())
        result["prefill"].append({"batch": batch, "seqlen": seqlen, "dense_ms": dense_ms, "sparse_ms": sparse_ms,
                                  "speedup": dense_ms / sparse_ms, "max_abs_logit_diff": diff})
    for batch in (1, 16):
        ids = torch.randint(0, 49152, (batch, 32), device="cuda")
        options = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        times = {}
        for name, model in (("dense", dense), ("sparse", sparse)):
            times[name] = wall_ms(lambda m=model: m.generate(ids, **options), 1, 3)
        result["generate"].append({
            "batch": batch, "prompt": 32, "new_tokens": new_tokens,
            "dense_ms_per_token": times["dense"] / new_tokens, "sparse_ms_per_token": times["sparse"] / new_tokens,
            "speedup": times["dense"] / times["sparse"],
        })
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="float16", choices=["float16", "bfloat16"])
    parser.add_argument("--iters", type=int, default=100, help="timed matmuls per (shape, batch)")
    parser.add_argument("--no-model", action="store_true", help="skip the whole-model prefill/generation timing")
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)

    probe = torch.zeros(64, 64, dtype=dtype, device="cuda") if torch.cuda.is_available() else torch.zeros(64, 64, dtype=dtype)
    reason = semi_structured_support(probe)
    if reason is not None:
        print(json.dumps({"skipped": reason, "torch": torch.__version__}, indent=2))
        return 0

    report = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "cusparselt": torch.backends.cusparselt.is_available(),
        "python": platform.python_version(),
        "dtype": args.dtype,
        "linears": {},
    }
    for name, (out_features, in_features) in SHAPES.items():
        rows = benchmark_linear(out_features, in_features, BATCH_SIZES, dtype, "cuda", warmup=10, iters=args.iters)
        report["linears"][name] = [
            {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in rows
        ]
        print(f"{name} {out_features}x{in_features}: speedup by batch "
              + " ".join(f"{r['batch']}:{r['speedup']:.2f}" for r in rows), file=sys.stderr)
    if not args.no_model:
        try:
            report["model"] = model_benchmark(dtype, args.new_tokens)
        except Exception as error:  # report, do not lose the linear timings
            report["model"] = {"error": f"{type(error).__name__}: {error}"}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
