"""Where one-shot pruning's time goes, against a reference-style loop and the physical floor.

Configurations, each in its own process (so ``peak_rss_mb`` is its own), timed in turns,
``--rounds`` times, on the same calibration windows (``--calib-samples`` x ``--seqlen`` of the
train split, seed 0):

* ``floor``: the calibration tokens through the decoder blocks, block by block, twice (the two
  passes every blockwise method needs: statistics, then the pruned block's outputs); nothing else;
  ``floor_bf16`` the same in bfloat16, the bar of the ``*_bf16`` rows;
* ``reference_wanda`` / ``reference_sparsegpt``: the loop of the papers' reference code, written
  here (not copied): one window per forward, the statistic accumulated in a forward hook with the
  reference's running-mean update (Wanda's ``scaler_row``, SparseGPT's ``H *= n / (n + 1)``), then
  the per-layer step -- for Wanda the reference's per-row ``torch.sort``, for SparseGPT the
  column sweep in the reference code's layout (``_reference_layout_sweep``: ``W`` kept
  ``(out, in)``, a threshold on the block's sorted OBS errors);
* ``wanda`` / ``sparsegpt``: the course's ``prune_model`` (batched forwards, float32);
* ``wanda_bf16`` / ``sparsegpt_bf16``: the same with ``calib_dtype=torch.bfloat16``.

The pruned configurations also report keep-mask agreement with the reference loop (and the
bf16 ones with float32) and, with ``--eval-windows``, perplexity on the first test windows.

    OMP_NUM_THREADS=2 python benchmarks/engine_speed.py --rounds 3
    python benchmarks/engine_speed.py --model tiny-llama --seqlen 64 --calib-samples 4 --rounds 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import machine

CONFIGS = ("floor", "floor_bf16", "reference_wanda", "wanda", "wanda_bf16", "reference_sparsegpt", "sparsegpt", "sparsegpt_bf16")


def _setup(args):
    import torch

    from pruning_course.data import calibration_windows, load_token_splits
    from pruning_course.models import load_model

    model, tokenizer, adapter = load_model(args.model, progress=False)
    splits = load_token_splits(tokenizer)
    windows = calibration_windows(splits["train"], args.calib_samples, args.seqlen, seed=0)
    torch.manual_seed(0)
    return model, adapter, windows, splits


def _floor(model, adapter, windows, dtype=None) -> None:
    """Two passes through every block; with ``dtype``, on a copy of each block and inputs cast as
    ``run_blockwise(dtype=...)`` casts them (so ``floor_bf16`` is the bar of the bf16 rows)."""
    import copy

    import torch

    from pruning_course.calibration import _cast_floats, _hidden_states, capture_block_inputs

    with torch.no_grad():
        inputs = capture_block_inputs(model, adapter, windows, batch_size=8)
        if dtype is not None:
            inputs = [(_cast_floats(h, dtype), _cast_floats(kw, dtype)) for h, kw in inputs]
        for block in adapter.blocks(model):
            runner = block if dtype is None else copy.deepcopy(block).to(dtype)
            for _ in range(2):
                outputs = [(_hidden_states(runner(h, **kw)), kw) for h, kw in inputs]
            inputs = outputs


def _reference_layout_sweep(weight, hessian, sparsity: float, blocksize: int = 128, percdamp: float = 0.01):
    """SparseGPT's Algorithm 1 laid out as the reference code lays it out (written from the paper,
    not copied): ``W`` stays ``(out, in)``, each column ``W[:, i]`` a strided slice, the adaptive
    mask of a block by one threshold on the sorted OBS errors. The course's sweep
    (``obs_column_sweep``) does the same math on ``W^T``; this is what it is timed against."""
    import torch

    W = weight.detach().clone().float()
    H = hessian.detach().clone().float()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    H_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    prune = torch.zeros_like(W, dtype=torch.bool)
    columns = W.shape[1]
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        W1, Q1, Err1 = W[:, i1:i2].clone(), torch.zeros(W.shape[0], i2 - i1), torch.zeros(W.shape[0], i2 - i1)
        H_inv1 = H_inv[i1:i2, i1:i2]
        errors = W1 ** 2 / torch.diag(H_inv1).reshape(1, -1) ** 2
        threshold = torch.sort(errors.flatten())[0][int(errors.numel() * sparsity)]
        mask1 = errors <= threshold
        for i in range(i2 - i1):
            w, d = W1[:, i], H_inv1[i, i]
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ H_inv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        prune[:, i1:i2] = mask1
        W[:, i2:] -= Err1 @ H_inv[i1:i2, i2:]
    return W, ~prune


def _reference_loop(model, adapter, windows, method: str, sparsity: float) -> dict:
    """One window per forward, hook statistics with the reference's running means, per-layer step."""
    import torch

    from pruning_course.architectures import set_weight_matrix, weight_matrix
    from pruning_course.calibration import _hidden_states, capture_block_inputs

    masks = {}
    with torch.no_grad():
        inputs = capture_block_inputs(model, adapter, windows, batch_size=1)
        for index, block in enumerate(adapter.blocks(model)):
            linears = adapter.linears(block)
            stats, counts, handles = {}, {}, []

            def hook(name):
                def record(_module, args, _out):
                    x = args[0].reshape(-1, args[0].shape[-1]).float()
                    n_new, n = 1, counts.get(name, 0)  # the reference counts windows, one per forward
                    if method == "wanda":
                        row = stats.get(name, torch.zeros(x.shape[1]))
                        stats[name] = row * n / (n + n_new) + torch.norm(x, p=2, dim=0) ** 2 / (n + n_new)
                    else:
                        h = stats.get(name, torch.zeros(x.shape[1], x.shape[1]))
                        x = (2 / (n + n_new)) ** 0.5 * x.t()
                        stats[name] = h * n / (n + n_new) + x @ x.t()
                    counts[name] = n + n_new
                return record

            for name, linear in linears.items():
                handles.append(linear.register_forward_hook(hook(name)))
            for h, kw in inputs:
                block(h, **kw)
            for handle in handles:
                handle.remove()
            for name, linear in linears.items():
                weight = weight_matrix(linear)
                if method == "wanda":
                    metric = weight.abs() * stats[name].sqrt().reshape(1, -1)
                    order = torch.sort(metric, dim=-1, stable=True)[1]
                    prune = torch.zeros_like(metric, dtype=torch.bool)
                    prune.scatter_(1, order[:, : int(weight.shape[1] * sparsity)], True)
                    pruned, keep = weight.masked_fill(prune, 0), ~prune
                else:
                    pruned, keep = _reference_layout_sweep(weight, stats[name], sparsity)
                set_weight_matrix(linear, pruned)
                masks[f"{adapter.blocks_path}.{index}.{name}"] = keep
            inputs = [(_hidden_states(block(h, **kw)), kw) for h, kw in inputs]
    return masks


def run_one(config: str, args, masks_path: Path) -> dict:
    import torch

    from pruning_course.evaluate import peak_rss_mb, perplexity, reset_peak_rss
    from pruning_course.methods import prune_model

    model, adapter, windows, splits = _setup(args)
    reset_peak_rss()
    start = time.perf_counter()
    masks = None
    if config.startswith("floor"):
        _floor(model, adapter, windows, torch.bfloat16 if config == "floor_bf16" else None)
    elif config.startswith("reference_"):
        masks = _reference_loop(model, adapter, windows, config.removeprefix("reference_"), args.sparsity)
    else:
        method, _, dtype = config.partition("_")
        masks = prune_model(model, adapter, method, args.sparsity, windows=windows, progress=False,
                            calib_dtype=torch.bfloat16 if dtype == "bf16" else None)
    record = {"config": config, "seconds": round(time.perf_counter() - start, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}
    if masks is not None:
        torch.save({k: v.cpu() for k, v in masks.items()}, masks_path)
        if args.eval_windows:
            record["ppl"] = round(perplexity(model, splits["test"], args.seqlen, max_windows=args.eval_windows,
                                             progress=False).ppl, 4)
    return record


def _agreement(a: Path, b: Path) -> float:
    import torch

    x, y = torch.load(a), torch.load(b)
    same = sum(int((x[k] == y[k]).sum()) for k in x)
    return round(same / sum(v.numel() for v in x.values()), 5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--calib-samples", type=int, default=32)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eval-windows", type=int, default=40, help="test windows for perplexity (0: none)")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--masks", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args, args.masks)))
        return
    configs = args.configs.split(",")
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for config in configs:  # in turns
                masks = Path(tmp) / f"{config}.pt"
                command = [sys.executable, __file__, "--one", config, "--masks", str(masks), "--model", args.model,
                           "--seqlen", str(args.seqlen), "--calib-samples", str(args.calib_samples),
                           "--sparsity", str(args.sparsity),
                           "--eval-windows", str(args.eval_windows if round_ == 0 else 0)]
                done = subprocess.run(command, check=True, capture_output=True, text=True)
                runs[config].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"round {round_ + 1}: {config} {runs[config][-1]['seconds']} s", file=sys.stderr, flush=True)
        agreement = {}
        for method in ("wanda", "sparsegpt"):
            files = {c: Path(tmp) / f"{c}.pt" for c in configs if c.startswith((method, f"reference_{method}"))}
            ref = files.get(f"reference_{method}")
            for c, path in files.items():
                if ref is not None and c != f"reference_{method}" and path.exists():
                    agreement[f"{c}_vs_reference"] = _agreement(ref, path)
            if f"{method}_bf16" in files and method in files:
                agreement[f"{method}_bf16_vs_float32"] = _agreement(files[method], files[f"{method}_bf16"])
    medians = {c: statistics.median(r["seconds"] for r in rs) for c, rs in runs.items()}
    ratios = {}
    for method in ("wanda", "sparsegpt"):
        for c in (method, f"{method}_bf16"):
            if c in medians and f"reference_{method}" in medians:
                ratios[f"{c}_over_reference"] = round(medians[c] / medians[f"reference_{method}"], 3)
            floor = "floor_bf16" if c.endswith("_bf16") else "floor"
            if c in medians and floor in medians:
                ratios[f"{c}_over_{floor}"] = round(medians[c] / medians[floor], 3)
        if method in medians and f"{method}_bf16" in medians:
            ratios[f"{method}_float32_over_bf16"] = round(medians[method] / medians[f"{method}_bf16"], 3)
    if "floor" in medians and "floor_bf16" in medians:
        ratios["floor_over_floor_bf16"] = round(medians["floor"] / medians["floor_bf16"], 3)
    print(json.dumps({"benchmark": "engine_speed", "model": args.model, "seqlen": args.seqlen,
                      "calib_samples": args.calib_samples, "sparsity": args.sparsity, "rounds": args.rounds,
                      "median_seconds": medians, "ratios": ratios, "mask_agreement": agreement,
                      "ppl_first_windows": {c: rs[0].get("ppl") for c, rs in runs.items() if "ppl" in rs[0]},
                      "eval_windows": args.eval_windows,
                      "peak_rss_mb": {c: max(r["peak_rss_mb"] for r in rs) for c, rs in runs.items()},
                      "runs": runs, **machine()}, indent=2))


if __name__ == "__main__":
    main()
